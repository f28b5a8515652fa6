"""A catalog sync end to end: `cdi operator` against the real control plane, PostgreSQL as the warehouse, the runner
in a pod of the local kubelet, the Braze emulator's catalogs, and a real SMTP server on loopback.

The catalog is missing at first: the connection test keeps the integration in Draft with BrazeCatalogNotFound.
Once the catalog exists a re-test activates it, and a sync-now delivers 50 items and one delete: the item with a
field the catalog lacks is refused by Braze with a 400, isolated, and reported as a row error with Braze's error id,
and the other 49 are delivered. Then the catalog is deleted in Braze: the next sync fails as a whole (Synced=False,
BrazeCatalogNotFound, a Warning Event), a re-test keeps the integration from Active with that reason, and exactly
one e-mail tells the contacts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from harness import LocalKubelet
from harness.cdi import (
    CDI,
    GROUP,
    VERSION,
    braze_spec,
    condition,
    create_braze_secret,
    create_integration,
    create_pg_credential,
    custom,
    wait_status,
)
from harness.helpers import wait_until
from harness.postgres import sql
from kubernetes import client
from test_operator_observability import BRAZE_KEY, Mailbox, MetricsOperator, jobs_finished
from test_operator_observability import braze as braze  # the emulator, the operator and the SMTP server
from test_operator_observability import operator as operator
from test_operator_observability import smtp as smtp

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

CONTACT = "catalog-team@example.com"
CATALOG = "products"
FIELDS = {"name": "string", "price": "number"}
NAME = "products"


@pytest.fixture
def pg_schema(pg_settings: dict[str, str]) -> Iterator[str]:
    name = f"cat_{uuid.uuid4().hex[:12]}"
    sql(pg_settings, f'CREATE SCHEMA "{name}"')
    sql(
        pg_settings,
        f'CREATE TABLE "{name}".products (UPDATED_AT TIMESTAMP, ID VARCHAR(250), PAYLOAD VARCHAR(65535), '
        "DELETED BOOLEAN)",
    )
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    # sku-0, the item with a field the catalog lacks, is oldest: not in the connection test's preview (the newest rows).
    rows = [(base, "sku-0", json.dumps({"name": "bad", "colour": "red"}), False)]
    rows += [
        (base + timedelta(seconds=i), f"sku-{i}", json.dumps({"name": f"item {i}", "price": i}), False)
        for i in range(1, 50)
    ]
    rows.append((base + timedelta(seconds=50), "old-1", None, True))
    sql(pg_settings, f'INSERT INTO "{name}".products VALUES (%s, %s, %s, %s)', rows)
    yield name
    sql(pg_settings, f'DROP SCHEMA "{name}" CASCADE')


def create_objects(api: client.ApiClient, namespace: str, pg: dict[str, str], schema: str, braze_url: str) -> None:
    create_braze_secret(api, namespace, BRAZE_KEY)
    create_pg_credential(api, namespace, pg)
    spec = {
        "credentialRef": {"name": "wh"},
        "source": {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": "products"},
        "dataType": "catalogItems",
        "catalog": {"name": CATALOG},
        "schedule": "0 3 * * *",
        "contactEmails": [CONTACT],
        "sync": {"settleSeconds": 0, "checkpointSeconds": 0},
        "braze": braze_spec(braze_url),
    }
    create_integration(api, namespace, NAME, spec)


def annotate(api: client.ApiClient, namespace: str, key: str, value: str) -> None:
    custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, NAME, {"metadata": {"annotations": {f"cdi.ingest.dev/{key}": value}}}
    )


def stalled_reason(obj: dict[str, Any]) -> str | None:
    stalled = condition(obj, "Stalled")
    return stalled.get("reason") if stalled.get("status") == "True" else None


def test_catalog_sync_end_to_end(
    kube_api: client.ApiClient,
    operator: MetricsOperator,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    smtp: tuple[Mailbox, int],
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    mailbox, ns = smtp[0], namespace
    create_objects(kube_api, ns, pg_settings, pg_schema, braze.url)

    # 1. No such catalog in Braze: Draft, with the reason, never Active.
    obj = wait_status(
        kube_api, operator, ns, NAME, lambda o: stalled_reason(o) == "BrazeCatalogNotFound", "Draft on the catalog"
    )
    assert obj["status"]["phase"] == "Draft"
    assert "products" in condition(obj, "Stalled")["message"]

    # 2. The catalog exists now (with an item the source deletes): a re-test activates, a sync-now delivers.
    braze.create_catalog(CATALOG, FIELDS, items=[{"id": "old-1", "name": "old"}])  # old-1: the row DELETED
    annotate(kube_api, ns, "test-connection", "1")
    wait_status(kube_api, operator, ns, NAME, lambda o: (o.get("status") or {}).get("phase") == "Active", "Active")
    annotate(kube_api, ns, "sync-now", "first")
    obj = wait_status(
        kube_api,
        operator,
        ns,
        NAME,
        lambda o: ((o.get("status") or {}).get("lastSync") or {}).get("result") in ("Success", "Partial", "Error"),
        "the first sync",
        timeout=180,
    )
    last = obj["status"]["lastSync"]
    assert last["result"] == "Partial", last
    assert (last["rowsRead"], last["rowsSynced"], last["rowsFailed"]) == (51, 50, 1)
    [error] = last["rowErrors"]
    assert (error["reason"], error["identifier"]) == ("BRAZE_REJECTED", "id=sku-0")
    assert "invalid-fields" in error["message"]
    items = braze.catalog_items(CATALOG)
    assert sorted(items) == sorted(f"sku-{i}" for i in range(1, 50)), "the other 49 were delivered, old-1 deleted"
    assert items["sku-3"] == {"id": "sku-3", "name": "item 3", "price": 3}
    assert mailbox.received() == [], "row errors are never e-mailed"

    # 3. The catalog is gone: the run fails as a whole, told once; a re-test keeps the integration from Active.
    wait_until(
        lambda: jobs_finished(kube_api, ns), 180, "the first Job to finish", interval=1, details=operator.log_tail
    )
    braze.delete_catalog(CATALOG)
    later = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    sql(
        pg_settings,
        f'INSERT INTO "{pg_schema}".products VALUES (%s, %s, %s, %s)',
        [(later, "sku-new", json.dumps({"name": "new"}), False)],
    )
    annotate(kube_api, ns, "sync-now", "second")
    obj = wait_status(
        kube_api,
        operator,
        ns,
        NAME,
        lambda o: condition(o, "Synced").get("reason") == "BrazeCatalogNotFound",
        "Synced=False on the catalog",
        timeout=180,
    )
    assert condition(obj, "Synced")["status"] == "False"
    assert obj["status"]["lastSync"]["result"] == "Error"
    wait_until(lambda: len(mailbox.received()) >= 1 or None, 60, "the e-mail", details=operator.log_tail)
    events = client.CoreV1Api(kube_api).list_namespaced_event(ns).items
    assert [e for e in events if e.type == "Warning" and e.reason == "BrazeCatalogNotFound"]

    annotate(kube_api, ns, "test-connection", "2")
    obj = wait_status(
        kube_api,
        operator,
        ns,
        NAME,
        lambda o: stalled_reason(o) == "BrazeCatalogNotFound" and o["status"].get("phase") == "Draft",
        "Draft again on the catalog",
    )
    wait_until(lambda: jobs_finished(kube_api, ns), 180, "the Job to finish", interval=1, details=operator.log_tail)
    time.sleep(5)  # two resyncs: the Job's retries and the stalled test meet the same failure
    received = mailbox.received()
    assert len(received) == 1, [m["Subject"] for m in received]
    mail = received[0]
    body = mail.get_content() if not mail.is_multipart() else str(mail)
    assert "BrazeCatalogNotFound" in mail["Subject"] and f"{ns}/{NAME}" in mail["Subject"], mail["Subject"]
    assert mailbox.recipients[0] == [CONTACT]
    assert BRAZE_KEY not in f"{mail['Subject']}\n{body}", "a secret reached the e-mail"
