"""Braze's CDI management API served by the operator, against the real control plane with a plain HTTP client
(urllib): every endpoint and documented error, paging over more than 10 integrations and runs, RBAC decided by
Kubernetes (TokenReview, SubjectAccessReview) with ServiceAccount tokens, and a sync through the API that is
exactly one run of the runner, from PostgreSQL to the Braze emulator.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from harness import LocalKubelet
from harness.helpers import wait_until
from harness.operator import OperatorProcess
from kubernetes import client
from test_operator import (
    CDI,
    GROUP,
    OPERATOR_ENV,
    VERSION,
    braze,
    create_integration,
    create_syncable,
    custom,
    get,
    jobs_of,
    pg_schema,
    phase_is,
    service_account,
    wait_status,
)

from cdi_operator.api.models import run_lease_name
from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e
__all__ = ["braze", "pg_schema"]  # fixtures shared with test_operator.py

Response = tuple[int, dict[str, str], dict[str, Any]]


@pytest.fixture(scope="module")
def api_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def operator(
    crds: list[str], kubeconfig: str, braze: BrazeEmulator, api_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {
        **OPERATOR_ENV,
        "CDI_MANAGEMENT_API_PORT": str(api_port),
        "CDI_MANAGEMENT_API_ADDR": "127.0.0.1",
    }
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    wait_until(lambda: _listening(api_port), 60, "the management API to listen", interval=0.2, details=proc.log_tail)
    yield proc
    proc.stop()


@pytest.fixture
def other_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    name = f"e2e-mgmt-other-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api(kube_api).create_namespace({"metadata": {"name": name}})
    yield name
    client.CoreV1Api(kube_api).delete_namespace(name)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def call(port: int, method: str, path: str, token: str | None = None) -> Response:
    """One request as Braze's callers send it (a POST with an empty JSON body)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def links(headers: dict[str, str]) -> dict[str, str]:
    """rel → path of a Link header."""
    found = {}
    for part in (headers.get("Link") or "").split(","):
        if part.strip():
            url, rel = part.split(";")
            found[rel.strip().removeprefix('rel="').removesuffix('"')] = url.strip().strip("<>")
    return found


def account(api: client.ApiClient, namespace: str, name: str, verbs: list[str], allowed_in: str) -> str:
    """A ServiceAccount allowed `verbs` on the CdiIntegrations of namespace `allowed_in`; a token of it."""
    service_account(api, namespace, name, [{"apiGroups": [GROUP], "resources": [CDI], "verbs": verbs}], allowed_in)
    request = client.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    return str(request.status.token)


def run_record(start: datetime, result: str = "Success") -> dict[str, Any]:
    """A run's record as a runner writes it into status.runs."""
    return {
        "runId": f"{start:%Y%m%dT%H%M%SZ}-{result[:3].lower()}",
        "trigger": "schedule",
        "job": f"users-{start:%H%M%S}",
        "startedAt": start.isoformat(),
        "finishedAt": None if result == "Running" else (start + timedelta(seconds=20)).isoformat(),
        "result": result,
        "rowsRead": 3,
        "rowsSynced": 2,
        "rowsFailed": 1,
        "watermark": (start - timedelta(minutes=5)).isoformat(),
    }


def test_paging_errors_and_rbac(
    kube_api: client.ApiClient, operator: OperatorProcess, api_port: int, namespace: str, other_namespace: str
) -> None:
    names = [f"i{n:02d}" for n in range(12)]
    for name in names:  # Draft (no such credential): listed all the same
        create_integration(kube_api, namespace, name, "nosuchcredential", "db", "public")
    uids = {name: get(kube_api, CDI, namespace, name)["metadata"]["uid"] for name in names}  # type: ignore[index]
    reader = account(kube_api, namespace, "reader", ["get", "list"], namespace)
    syncer = account(kube_api, namespace, "syncer", ["get", "list", "patch"], namespace)
    outsider = account(kube_api, other_namespace, "outsider", ["get", "list"], other_namespace)

    # no token, or one Kubernetes does not know: 401, in Braze's shape
    for token in (None, "not-a-kubernetes-token"):
        code, _, body = call(api_port, "GET", "/cdi/integrations", token)
        assert code == 401 and body["message"], body

    # more than 10 integrations: two pages, with Link prev/next
    code, headers, first = call(api_port, "GET", "/cdi/integrations", reader)
    assert code == 200 and first["message"] == "success"
    assert len(first["results"]) == 10 and set(links(headers)) == {"next"}
    code, headers, second = call(api_port, "GET", links(headers)["next"], reader)
    assert code == 200 and len(second["results"]) == 2 and set(links(headers)) == {"prev"}
    listed = [r["integration_name"] for r in first["results"] + second["results"]]
    assert listed == names
    entry = first["results"][0]
    assert entry["integration_id"] == uids["i00"] and entry["app_group_id"] == namespace
    assert entry["integration_status"] == "draft" and entry["integration_type"] == "customAttributes"
    assert entry["next_scheduled_run"] is None and entry["warehouse_type"] is None
    code, _, again = call(api_port, "GET", links(headers)["prev"], reader)
    assert code == 200 and again["results"] == first["results"]
    code, _, body = call(api_port, "GET", "/cdi/integrations?cursor=bm9wZQ", reader)
    assert (code, body["message"].split(":")[0]) == (400, "Invalid cursor")

    # a third account, of another namespace, sees nothing of this one
    code, headers, body = call(api_port, "GET", "/cdi/integrations", outsider)
    assert (code, body["results"], headers.get("Link")) == (200, [], None)
    for method, path in (("GET", "job_sync_status"), ("POST", "sync")):
        code, _, body = call(api_port, method, f"/cdi/integrations/{uids['i00']}/{path}", outsider)
        assert (code, body["message"]) == (404, "Integration not found")

    # unknown and malformed ids
    code, _, body = call(api_port, "GET", f"/cdi/integrations/{uuid.uuid4()}/job_sync_status", reader)
    assert (code, body["message"]) == (404, "Integration not found")
    code, _, body = call(api_port, "POST", "/cdi/integrations/i00/sync", syncer)
    assert code == 400 and body["message"].startswith("Invalid integration ID")

    # reading is not syncing: 403; syncing a Draft integration is refused with the reason
    code, _, body = call(api_port, "POST", f"/cdi/integrations/{uids['i00']}/sync", reader)
    assert code == 403 and "may not patch" in body["message"]
    code, _, body = call(api_port, "POST", f"/cdi/integrations/{uids['i00']}/sync", syncer)
    assert code == 400 and "not active" in body["message"]

    # more than 10 runs (the records the runners wrote, the one in progress first), newest first, 10 a page; a
    # Skipped record (another run held the integration) is no sync in Braze's sense and is not listed
    start = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=15)
    history = [run_record(start + timedelta(hours=h)) for h in range(13, -1, -1)]
    skipped = run_record(start + timedelta(hours=14), "Skipped")
    running = run_record(start + timedelta(hours=14, minutes=30), "Running")
    custom(kube_api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, CDI, "i00", {"status": {"runs": [running, skipped, *history], "lastSync": running}}
    )
    path = f"/cdi/integrations/{uids['i00']}/job_sync_status"
    code, headers, first = call(api_port, "GET", path, reader)
    assert code == 200 and len(first["results"]) == 10 and set(links(headers)) == {"next"}
    newest = first["results"][0]
    assert newest["job_status"] == "running" and newest["sync_finish_time"] is None
    assert newest["sync_start_time"] == (start + timedelta(hours=14, minutes=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert first["results"][1]["job_status"] == "success" and first["results"][1]["rows_failed_with_errors"] == 1
    starts = [r["sync_start_time"] for r in first["results"]]
    assert starts == sorted(starts, reverse=True)
    code, headers, second = call(api_port, "GET", links(headers)["next"], reader)
    assert code == 200 and len(second["results"]) == 5 and set(links(headers)) == {"prev"}
    assert second["results"][-1]["sync_start_time"] == start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert "skipped" not in {r["job_status"] for r in first["results"] + second["results"]}
    # a cursor of one list is no cursor of another
    cursor = links(headers)["prev"].split("cursor=")[1]
    code, _, body = call(api_port, "GET", f"/cdi/integrations?cursor={cursor}", reader)
    assert code == 400
    code, _, body = call(api_port, "GET", f"/cdi/integrations/{uids['i01']}/job_sync_status?cursor={cursor}", reader)
    assert code == 400

    log = operator.log_text()
    for token in (reader, syncer, outsider):
        assert token not in log, "a token reached the operator's log"


def test_sync_through_the_api_is_exactly_one_run(
    kube_api: client.ApiClient,
    operator: OperatorProcess,
    api_port: int,
    local_kubelet: LocalKubelet | None,
    braze: BrazeEmulator,
    namespace: str,
    pg_settings: dict[str, str],
    pg_schema: str,
) -> None:
    create_syncable(kube_api, namespace, pg_settings, pg_schema, braze.url)
    active = wait_status(kube_api, operator, namespace, "users", phase_is("Active"), "phase Active")
    uid = active["metadata"]["uid"]
    syncer = account(kube_api, namespace, "automation", ["get", "list", "patch"], namespace)

    code, _, listed = call(api_port, "GET", "/cdi/integrations", syncer)
    assert code == 200 and len(listed["results"]) == 1
    entry = listed["results"][0]
    assert (entry["integration_id"], entry["integration_status"], entry["warehouse_type"]) == (
        uid,
        "active",
        "redshift",
    )
    next_run = datetime.fromisoformat(entry["next_scheduled_run"])  # 03:00 in Europe/Paris, the fixture's schedule
    assert next_run > datetime.now(UTC) and next_run.astimezone(ZoneInfo("Europe/Paris")).hour == 3
    assert entry["last_job_status"] is None

    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the caller's clock, as a published client takes it
    # five callers at once (an orchestrator retrying, say): one sync starts, the others hear that it runs
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: call(api_port, "POST", f"/cdi/integrations/{uid}/sync", syncer), range(5)))
    assert sorted(code for code, _, _ in answers) == [202, 429, 429, 429, 429], answers
    assert {body["message"].split(" (")[0] for _, _, body in answers} == {"success", "Another job is in progress"}
    code, _, body = call(api_port, "POST", f"/cdi/integrations/{uid}/sync", syncer)
    assert (code, body["message"].split(" (")[0]) == (429, "Another job is in progress")

    path = f"/cdi/integrations/{uid}/job_sync_status"

    def finished_run() -> dict[str, Any] | None:
        code, _, body = call(api_port, "GET", path, syncer)
        assert code == 200, body
        results = body["results"]
        if results and results[0]["sync_start_time"] >= before and results[0]["job_status"] != "running":
            return results[0]  # type: ignore[no-any-return]
        return None

    run = wait_until(finished_run, 180, "the run the API started to finish", interval=1, details=operator.log_tail)
    last_sync = (get(kube_api, CDI, namespace, "users") or {}).get("status", {}).get("lastSync")
    assert run["job_status"] == "success", last_sync
    assert run["rows_synced"] == 5 and run["rows_failed_with_errors"] == 0
    assert run["sync_finish_time"] >= run["sync_start_time"] and run["last_timestamp_synced"]

    obj = wait_status(
        kube_api, operator, namespace, "users", lambda o: bool(o["status"].get("runs")), "the run in status.runs"
    )
    assert len(jobs_of(kube_api, namespace, "users")) == 1, "one POST, one Job"
    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace).items
    [started] = [e for e in events if e.reason == "SyncNow"]
    assert f"by system:serviceaccount:{namespace}:automation" in started.message  # who asked, for the audit
    assert [r["trigger"] for r in obj["status"]["runs"]] == ["syncNow"]
    assert obj["spec"]["schedule"] == "0 3 * * *" and obj["metadata"]["generation"] == active["metadata"]["generation"]
    code, _, body = call(api_port, "GET", path, syncer)
    assert len(body["results"]) == 1
    code, _, listed = call(api_port, "GET", "/cdi/integrations", syncer)
    assert listed["results"][0]["last_job_status"] == "success"
    assert listed["results"][0]["last_job_start_time"] == run["sync_start_time"]

    # until its Job is complete, the run counts as going on (the operator would refuse a sync-now as well)
    wait_until(
        lambda: all(j.status.completion_time for j in jobs_of(kube_api, namespace, "users")),
        60,
        "the first run's Job to complete",
    )
    # a run started some other way (kubectl create job --from=cronjob/…) holds the integration's claim: 429
    leases = client.CoordinationV1Api(kube_api)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    held = {"holderIdentity": "manual-run", "leaseDurationSeconds": 300, "acquireTime": now, "renewTime": now}
    leases.patch_namespaced_lease(run_lease_name("users"), namespace, {"spec": held})
    code, _, body = call(api_port, "POST", f"/cdi/integrations/{uid}/sync", syncer)
    assert code == 429 and "manual-run" in body["message"], body
    # released: the next request starts the second run
    leases.patch_namespaced_lease(run_lease_name("users"), namespace, {"spec": {"holderIdentity": None}})
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    code, _, body = call(api_port, "POST", f"/cdi/integrations/{uid}/sync", syncer)
    assert code == 202, body
    second = wait_until(finished_run, 180, "the second run to finish", interval=1, details=operator.log_tail)
    assert second["job_status"] == "success" and second["sync_start_time"] > run["sync_start_time"]
    assert len(jobs_of(kube_api, namespace, "users")) == 2, "two syncs through the API, two Jobs"
