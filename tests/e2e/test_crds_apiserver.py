"""The generated CRDs on a real apiserver: schema, defaults, CEL rules, status subresource, columns, short names.

The CRDs are cluster-scoped and the operator's e2e tests need the same ones, so `install_crds` applies the
committed files from crds/ with server-side apply (create when absent, update when present, whoever applied them
before) and leaves them installed. Every object a test creates lives in the test's own namespace.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.controlplane import REPO_ROOT
from harness.helpers import wait_until
from kubernetes import client
from kubernetes.client import ApiException

from cdi_operator.api.models import (
    CdiIntegration,
    CdiIntegrationStatus,
    Condition,
    ConnectionTest,
    Phase,
    RowErrorSample,
    RunResult,
    RunSummary,
    WarehouseCredential,
    Watermark,
)

pytestmark = pytest.mark.e2e

GROUP, VERSION = "cdi.ingest.dev", "v1alpha1"
CDI, WHC, BZW = "cdiintegrations", "warehousecredentials", "brazeworkspaces"
CRD_DIR = REPO_ROOT / "crds"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
FIELD_MANAGER = "cdi-e2e-crds"


def install_crds(api: client.ApiClient, crd_dir: Path = CRD_DIR) -> list[str]:
    """Apply every CRD in `crd_dir` (idempotent), wait until each is Established and served; their names."""
    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        name = crd["metadata"]["name"]
        ext.patch_custom_resource_definition(
            name, crd, field_manager=FIELD_MANAGER, force=True, _content_type=APPLY_PATCH
        )
        names.append(name)

    def established(name: str) -> bool:
        status = ext.read_custom_resource_definition(name).status
        return any(c.type == "Established" and c.status == "True" for c in (status and status.conditions) or [])

    custom = client.CustomObjectsApi(api)

    def serves(plural: str) -> bool:
        try:
            custom.list_cluster_custom_object(GROUP, VERSION, plural, limit=1)
            return True
        except ApiException:
            return False

    for name in names:
        wait_until(partial(established, name), 60, f"CRD {name} to be Established", interval=0.2)
        plural = name.split(".", 1)[0]
        wait_until(partial(serves, plural), 30, f"the {plural} endpoint to serve", interval=0.2)
    return names


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    return install_crds(kube_api)


@pytest.fixture
def custom(kube_api: client.ApiClient, crds: list[str]) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api)


def whc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "WarehouseCredential", "metadata": {"name": name}, "spec": spec}


def redshift(name: str = "warehouse", **extra: Any) -> dict[str, Any]:
    return whc(
        name,
        type="redshift",
        redshift={
            "host": "example.abc123.us-east-1.redshift.amazonaws.com",
            "database": "analytics",
            "user": "braze",
            "passwordSecretRef": {"name": "redshift", "key": "password"},
        },
        **extra,
    )


def integration(name: str = "attributes", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CdiIntegration",
        "metadata": {"name": name},
        "spec": {
            "credentialRef": {"name": "warehouse"},
            "source": {"database": "analytics", "schema": "braze", "table": "user_attributes"},
            "dataType": "customAttributes",
            "schedule": "0 * * * *",
            **spec,
        },
    }


def rejected(call: Callable[[], object]) -> tuple[str, list[dict[str, Any]]]:
    """Run a call that the apiserver must refuse as Invalid; its message and causes."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 422, refused.value.body
    body = json.loads(refused.value.body)
    assert body["reason"] == "Invalid"
    return body["message"], body["details"].get("causes", [])


def raw_get(api: client.ApiClient, path: str, accept: str) -> Any:
    """GET `path` with an Accept header of our choice (for discovery and server-side tables); the decoded JSON."""
    method, url, headers, body, post = api.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = api.call_api(method, url, header_params=headers, body=body, post_params=post)
    response.read()
    assert response.status == 200, response.data
    return json.loads(response.data)


# --- install -----------------------------------------------------------------------------------------------------


def test_install_is_idempotent(kube_api: client.ApiClient, crds: list[str]) -> None:
    assert sorted(crds) == [f"{BZW}.{GROUP}", f"{CDI}.{GROUP}", f"{WHC}.{GROUP}"]
    again = install_crds(kube_api)
    assert again == crds
    ext = client.ApiextensionsV1Api(kube_api)
    for name in (f"{CDI}.{GROUP}", f"{WHC}.{GROUP}"):  # a BrazeWorkspace is settings only: no status
        crd = ext.read_custom_resource_definition(name)
        assert crd.spec.versions[0].subresources.status == {}


def test_short_names_and_categories_resolve_via_discovery(kube_api: client.ApiClient, crds: list[str]) -> None:
    listing = raw_get(kube_api, f"/apis/{GROUP}/{VERSION}", "application/json")
    resources = {r["name"]: r for r in listing["resources"]}
    by_short_name = {short: name for name, r in resources.items() for short in r.get("shortNames", [])}
    assert by_short_name == {"cdi": CDI, "whc": WHC, "bzw": BZW}
    for plural, kind in ((CDI, "CdiIntegration"), (WHC, "WarehouseCredential"), (BZW, "BrazeWorkspace")):
        assert resources[plural]["kind"] == kind
        assert resources[plural]["namespaced"] is True
        assert "cdi-ingest" in resources[plural]["categories"]
        assert (f"{plural}/status" in resources) == (plural != BZW)
    # A category named like a short name would make kubectl expand `kubectl get cdi` to every kind in it.
    assert not any("cdi" in r.get("categories", []) for r in resources.values())


# --- validation and defaults -------------------------------------------------------------------------------------


def test_valid_objects_are_accepted_and_defaulted(custom: client.CustomObjectsApi, namespace: str) -> None:
    credential = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, redshift())
    assert credential["spec"]["redshift"]["port"] == 5439
    assert credential["spec"]["redshift"]["ssl"] is True

    # An explicit null of an optional field is what a model dump without exclude_none sends: it means absent.
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, integration(braze=None, contactEmails=["data-team@example.com"])
    )
    spec = created["spec"]
    assert spec["timeZone"] == "UTC"
    assert spec["suspend"] is False
    assert "braze" not in spec
    assert "status" not in created

    # What the apiserver stored reads back through the models.
    WarehouseCredential.model_validate(credential)
    model = CdiIntegration.model_validate(created)
    assert model.spec.time_zone == "UTC" and model.spec.braze is None

    # Nested defaults apply inside blocks the user gives.
    with_braze = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, integration("tuned", braze={"maxInFlight": 4}, sync={"chunkRows": 5000})
    )
    assert with_braze["spec"]["braze"] == {"maxInFlight": 4, "maxObjectsPerRequest": 75, "requestsPerSecond": 1000}
    assert with_braze["spec"]["sync"]["settleSeconds"] == 60


@pytest.mark.parametrize(
    ("kind", "block"),
    [
        ("snowflake", {"account": "myorg-myaccount", "user": "BRAZE", "role": "BRAZE_ROLE", "warehouse": "WH"}),
        ("bigquery", {"project": "my-project-123", "serviceAccountKeySecretRef": {"name": "bq", "key": "key.json"}}),
        (
            "databricks",
            {
                "serverHostname": "dbc-123.cloud.databricks.com",
                "httpPath": "/sql/1.0/warehouses/abc",
                "accessTokenSecretRef": {"name": "dbx", "key": "token"},
            },
        ),
        ("duckdb", {"path": "/data/demo.duckdb"}),
    ],
)
def test_each_warehouse_type_with_its_block_is_accepted(
    custom: client.CustomObjectsApi, namespace: str, kind: str, block: dict[str, Any]
) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, WHC, whc(kind, type=kind, **{kind: block})
    )
    assert created["spec"]["type"] == kind


def test_unknown_data_type_is_rejected_naming_the_field(custom: client.CustomObjectsApi, namespace: str) -> None:
    message, causes = rejected(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, CDI, integration(dataType="customAttribute")
        )
    )
    assert "spec.dataType" in message
    assert 'Unsupported value: "customAttribute"' in message
    assert '"customAttributes"' in message  # the apiserver lists the values it takes
    assert "spec.dataType" in [c["field"] for c in causes]


def test_schema_bounds_are_enforced(custom: client.CustomObjectsApi, namespace: str) -> None:
    message, _ = rejected(
        lambda: custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            CDI,
            integration(contactEmails=["not-an-address"], braze={"maxObjectsPerRequest": 100}),
        )
    )
    assert "spec.contactEmails[0]" in message
    assert "spec.braze.maxObjectsPerRequest" in message
    message, _ = rejected(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, integration(schedule=""))
    )
    assert "spec.schedule" in message
    # spec is required
    message, _ = rejected(
        lambda: custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            CDI,
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CdiIntegration", "metadata": {"name": "empty"}},
        )
    )
    assert "spec: Required value" in message


def test_notifications_are_defaulted_and_need_contacts(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        CDI,
        integration(notifications={"rowErrorRatePercent": 2.5}, contactEmails=["a@b.io"]),
    )
    assert created["spec"]["notifications"] == {
        "onSyncError": True,
        "rowErrorRatePercent": 2.5,
        "onSuccess": False,
        "onSuccessWithoutChanges": False,
    }
    quiet = integration("quiet", notifications={"onSyncError": False})  # no rule that e-mails: no contact needed
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, quiet)
    for rule in ({"onSuccess": True}, {"onSuccessWithoutChanges": True}, {"rowErrorRatePercent": 0}):
        message, _ = rejected(
            lambda rule=rule: custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, CDI, integration("alone", notifications=rule)
            )
        )
        assert "spec.notifications e-mails spec.contactEmails, which is empty" in message
    message, _ = rejected(
        lambda: custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, CDI, integration("over", notifications={"rowErrorRatePercent": 101})
        )
    )
    assert "spec.notifications.rowErrorRatePercent" in message


def test_data_type_is_immutable(custom: client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, integration())

    message, causes = rejected(
        lambda: custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            CDI,
            "attributes",
            {"spec": {"dataType": "customEvents"}},
            _content_type=MERGE_PATCH,
        )
    )
    assert "dataType is immutable; create a new CdiIntegration for another data type" in message
    assert "spec.dataType" in [c["field"] for c in causes]

    # Everything else stays editable, and the unchanged dataType passes the transition rule.
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        CDI,
        "attributes",
        {"spec": {"schedule": "30 * * * *", "suspend": True, "dataType": "customAttributes"}},
        _content_type=MERGE_PATCH,
    )
    assert patched["spec"]["schedule"] == "30 * * * *"
    assert patched["metadata"]["generation"] == 2


def test_warehouse_block_must_match_type(custom: client.CustomObjectsApi, namespace: str) -> None:
    wrong = redshift("wrong")
    wrong["spec"]["snowflake"] = {"account": "myorg-myaccount", "user": "U", "role": "R", "warehouse": "W"}
    message, causes = rejected(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, wrong))
    assert "spec.snowflake is set but spec.type is not 'snowflake': keep only the block named by spec.type" in message
    assert {c["field"] for c in causes} == {"spec"}

    # A redshift type with only a snowflake block is told both halves of the fix.
    swapped = whc("swapped", type="redshift", snowflake=wrong["spec"]["snowflake"])
    message, _ = rejected(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, swapped))
    assert "spec.snowflake is set but spec.type is not 'snowflake'" in message
    assert "spec.type is 'redshift': add the spec.redshift block with its connection settings" in message

    message, _ = rejected(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, whc("bare", type="bigquery"))
    )
    assert "spec.type is 'bigquery': add the spec.bigquery block" in message

    # The rules also hold on update.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, redshift())
    message, _ = rejected(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, WHC, "warehouse", {"spec": {"type": "snowflake"}}, _content_type=MERGE_PATCH
        )
    )
    assert "spec.redshift is set but spec.type is not 'redshift'" in message


# --- status ------------------------------------------------------------------------------------------------------


def model_status(now: datetime) -> dict[str, Any]:
    """A full status as the operator and the runner write it: a model dump, nulls included."""
    run = RunSummary(
        trigger="schedule",
        job="attributes-29000000",
        startedAt=now - timedelta(minutes=2),
        finishedAt=now - timedelta(minutes=1),
        result=RunResult.PARTIAL,
        rowsRead=1200,
        rowsSynced=1198,
        rowsFailed=2,
        watermark=now - timedelta(minutes=5),
        rowErrors=[RowErrorSample(reason="InvalidPayload", identifier="external_id=u1", message="not JSON")],
    )
    status = CdiIntegrationStatus(
        observedGeneration=1,
        phase=Phase.ACTIVE,
        conditions=[
            Condition(type="Ready", status="True", reason="Synced", lastTransitionTime=now, observedGeneration=1),
            Condition(type="ConnectionVerified", status="True", reason="Passed", lastTransitionTime=now),
        ],
        connectionTest=ConnectionTest(
            time=now,
            result="Passed",
            columns=["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"],
            preview=[{"EXTERNAL_ID": "u1", "PAYLOAD": {"plan": "gold", "seats": 3, "trial": None}, "UPDATED_AT": None}],
        ),
        watermark=Watermark(updatedAt=now - timedelta(minutes=5), boundaryFingerprints=["ab12"]),
        lastSync=run,
        runs=[run],
    )
    dumped: dict[str, Any] = status.model_dump(by_alias=True, mode="json")
    return dumped


def test_status_is_a_subresource(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, integration())
    now = datetime.now(UTC).replace(microsecond=0)
    status = model_status(now)

    # Through the main resource, status is ignored (and so is a spec change through /status).
    ignored = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, CDI, "attributes", {"status": status}, _content_type=MERGE_PATCH
    )
    assert "status" not in ignored

    written = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        CDI,
        "attributes",
        {"status": status, "spec": {"schedule": "15 * * * *"}},
        _content_type=MERGE_PATCH,
    )
    assert written["spec"]["schedule"] == "0 * * * *"
    assert written["metadata"]["generation"] == created["metadata"]["generation"]
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "attributes")["status"]
    assert stored["phase"] == "Active"
    assert stored["lastSync"]["rowsSynced"] == 1198
    # A JSON merge patch deletes the keys it sets to null, free-form ones included.
    assert stored["connectionTest"]["preview"] == [{"EXTERNAL_ID": "u1", "PAYLOAD": {"plan": "gold", "seats": 3}}]
    assert "lastHandledSyncNow" not in stored
    # The stored status reads back into the same model, up to those nulls.
    assert (
        CdiIntegrationStatus.model_validate(stored).model_dump()
        == CdiIntegrationStatus.model_validate(
            status | {"connectionTest": status["connectionTest"] | {"preview": stored["connectionTest"]["preview"]}}
        ).model_dump()
    )

    # A full write (PUT) keeps the null cells of a preview row; a null of a typed optional field means absent.
    current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, CDI, "attributes")
    current["status"] = status
    replaced = custom.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, CDI, "attributes", current)
    assert replaced["status"]["connectionTest"]["preview"] == status["connectionTest"]["preview"]
    assert "lastHandledSyncNow" not in replaced["status"]
    assert CdiIntegrationStatus.model_validate(replaced["status"]) == CdiIntegrationStatus.model_validate(status)

    # /status is validated by the schema too.
    message, _ = rejected(
        lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, CDI, "attributes", {"status": {"phase": "Running"}}, _content_type=MERGE_PATCH
        )
    )
    assert "status.phase" in message


def test_warehouse_credential_status_is_a_subresource(custom: client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, redshift())
    status = {"observedGeneration": 1, "publicKey": "MIIB..."}
    ignored = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, WHC, "warehouse", {"status": status}, _content_type=MERGE_PATCH
    )
    assert "status" not in ignored
    written = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, WHC, "warehouse", {"status": status}, _content_type=MERGE_PATCH
    )
    assert written["status"] == status


# --- printer columns ---------------------------------------------------------------------------------------------


def table(api: client.ApiClient, namespace: str, plural: str) -> list[dict[str, Any]]:
    """`kubectl get` as the API serves it: one dict per row, keyed by column name."""
    got = raw_get(api, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}", TABLE)
    assert got["kind"] == "Table"
    names = [c["name"] for c in got["columnDefinitions"]]
    return [dict(zip(names, row["cells"], strict=True)) for row in got["rows"]]


def test_printer_columns(kube_api: client.ApiClient, custom: client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, integration())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, WHC, redshift())

    [row] = table(kube_api, namespace, CDI)
    assert list(row) == ["Name", "Phase", "Data Type", "Schedule", "Last Sync", "Rows", "Watermark", "Age"]
    assert row["Name"] == "attributes" and row["Data Type"] == "customAttributes" and row["Schedule"] == "0 * * * *"

    now = datetime.now(UTC).replace(microsecond=0)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CDI, "attributes", {"status": model_status(now)}, _content_type=MERGE_PATCH
    )
    [row] = table(kube_api, namespace, CDI)
    assert row["Phase"] == "Active"
    assert row["Rows"] == 1198
    # Dates print as ages: finishedAt was a minute ago, the watermark five.
    assert re.fullmatch(r"6[0-9]s|[7-9][0-9]s", row["Last Sync"]), row
    assert re.fullmatch(r"5m([0-9]+s)?", row["Watermark"]), row

    [row] = table(kube_api, namespace, WHC)
    assert list(row) == ["Name", "Type", "Ready", "Reason", "Age"]
    assert row["Type"] == "redshift"
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        WHC,
        "warehouse",
        {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "ConnectionFailed",
                        "message": "password authentication failed",
                        "lastTransitionTime": now.isoformat(),
                    }
                ]
            }
        },
        _content_type=MERGE_PATCH,
    )
    [row] = table(kube_api, namespace, WHC)
    assert (row["Ready"], row["Reason"]) == ("False", "ConnectionFailed")
