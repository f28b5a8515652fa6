"""The Helm chart installed for real (`helm install`) on the e2e control plane.

The local kubelet runs the chart's operator Deployment as a local process with the pod's env, its ServiceAccount's
token and its volumes (the webhook's TLS Secret); with CDI_E2E_NODE=containerd a real kubelet runs it in a container
of the built image, with its probes, limits and read-only root, and Prometheus and the apiserver reach it through
its Services (kube-proxy). What is proven here is the chart's own wiring: its RBAC is
enough for the operator (and no more for the runners), the webhook Service and certificate reach the operator, the
leader Lease is held, and the pods pass Pod Security "restricted" (both namespaces enforce it). An example from
examples/ then goes Draft → Active → synced by a runner Job, while a real Prometheus scrapes the operator: every
query of the Grafana dashboard returns data afterwards.
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import socket
import ssl
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml
from harness import LocalKubelet
from harness.controlplane import REPO_ROOT, free_port
from harness.dashboard import dashboard_queries
from harness.helm import CHART, RELEASE, helm
from harness.helpers import pod_logs, wait_until
from harness.node import IMAGE_REPOSITORY, IMAGE_TAG, node_mode, service_host
from harness.postgres import sql
from harness.prometheus import Prometheus
from kubernetes import client, config
from kubernetes.client import ApiException
from test_crds_apiserver import install_crds
from test_operator import annotate, condition, get

from cdi_operator.braze.emulator import BrazeEmulator

pytestmark = pytest.mark.e2e

GROUP, VERSION, CDI, WHC = "cdi.ingest.dev", "v1alpha1", "cdiintegrations", "warehousecredentials"
BRAZE_KEY = "e2e-chart-braze-key"
EXAMPLE = REPO_ROOT / "examples" / "redshift-attributes.yaml"
INTEGRATION = "user-attributes"  # the example's
WAIT = 120
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@dataclass
class Release:
    namespace: str
    metrics_port: int
    webhook_port: int
    kubelet: LocalKubelet | None
    api: client.ApiClient
    management_api_port: int

    def operator_pod(self) -> client.V1Pod | None:
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector="app.kubernetes.io/component=operator"
        )
        running = [p for p in pods.items if p.status and p.status.phase == "Running"]
        return running[0] if running else None

    def operator_log(self) -> str:
        pod = self.operator_pod()
        return (
            "(no operator pod)"
            if pod is None
            else pod_logs(self.api, self.kubelet, self.namespace, pod.metadata.name)[-6000:]
        )


def _namespace(api: client.ApiClient, stem: str) -> str:
    name = f"{stem}-{secrets.token_hex(3)}"
    client.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    return name


@pytest.fixture(scope="module")
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY, host=service_host()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def release(kube_api: client.ApiClient, kubeconfig: str, local_kubelet: LocalKubelet | None) -> Iterator[Release]:
    install_crds(kube_api)  # helm leaves CRDs that exist alone; other modules installed them from crds/ already
    namespace = _namespace(kube_api, "cdi-system")
    metrics_port, webhook_port, management_api_port = free_port(), free_port(), free_port()
    values = {
        "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "metrics": {"port": metrics_port},
        "webhook": {"port": webhook_port},
        "managementApi": {"enabled": True, "port": management_api_port},
        "operator": {"resyncSeconds": 2, "retestFailedSeconds": 3600, "connectionTestTimeoutSeconds": 60},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json") as values_file:
        json.dump(values, values_file)
        values_file.flush()
        helm(
            "install",
            RELEASE,
            str(CHART),
            "-n",
            namespace,
            "--kubeconfig",
            kubeconfig,
            "-f",
            values_file.name,
            "--wait",
            "--timeout",
            "180s",
        )
    installed = Release(namespace, metrics_port, webhook_port, local_kubelet, kube_api, management_api_port)
    try:
        yield installed
    finally:
        helm("uninstall", RELEASE, "-n", namespace, "--kubeconfig", kubeconfig, "--wait", "--timeout", "120s")
        client.CoreV1Api(kube_api).delete_namespace(namespace)


@pytest.fixture(scope="module")
def prometheus(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    target = f"127.0.0.1:{release.metrics_port}"  # the local kubelet's process
    if node_mode():  # the pod, through the chart's metrics Service
        service = client.CoreV1Api(release.api).read_namespaced_service(f"{RELEASE}-metrics", release.namespace)
        target = f"{service.spec.cluster_ip}:{service.spec.ports[0].port}"
    with Prometheus(tmp_path_factory.mktemp("prometheus"), [target]) as server:
        yield server


@pytest.fixture(scope="module")
def app_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    namespace = _namespace(kube_api, "e2e-chart-app")
    yield namespace
    client.CoreV1Api(kube_api).delete_namespace(namespace)


@pytest.fixture(scope="module")
def source_table(pg_settings: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(schema, table): 4 good rows and one whose PAYLOAD is not JSON (a row error the dashboard shows)."""
    schema = f"chart_{uuid.uuid4().hex[:10]}"
    sql(pg_settings, f'CREATE SCHEMA "{schema}"')
    sql(
        pg_settings,
        f'CREATE TABLE "{schema}".user_attributes (updated_at TIMESTAMP, external_id VARCHAR(64), '
        "payload VARCHAR(1000))",
    )
    base = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    rows = [(base + timedelta(seconds=i), f"chart-user-{i}", json.dumps({"tier": i})) for i in range(4)]
    rows.append((base + timedelta(seconds=10), "chart-user-bad", "{not json"))
    sql(pg_settings, f'INSERT INTO "{schema}".user_attributes VALUES (%s, %s, %s)', rows)
    yield schema, "user_attributes"
    sql(pg_settings, f'DROP SCHEMA "{schema}" CASCADE')


def example_documents(pg: dict[str, str], schema: str, table: str, braze_url: str) -> list[dict[str, Any]]:
    """examples/redshift-attributes.yaml as a user would fill it in for this PostgreSQL and Braze emulator."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec") or {}
        if kind == "Secret" and "password" in doc["stringData"]:
            doc["stringData"]["password"] = pg["CDI_PG_PASSWORD"]
        elif kind == "Secret":
            doc["stringData"]["api-key"] = BRAZE_KEY
        elif kind == "WarehouseCredential":
            spec["redshift"].update(
                host=pg["CDI_PG_HOST"],
                port=int(pg["CDI_PG_PORT"]),
                database=pg["CDI_PG_DATABASE"],
                user=pg["CDI_PG_USER"],
                ssl=False,
            )
        elif kind == "CdiIntegration":
            spec["source"] = {"database": pg["CDI_PG_DATABASE"], "schema": schema, "table": table}
            spec["braze"]["restEndpoint"] = braze_url
            spec["sync"] = {"settleSeconds": 0}
    return docs


def apply(api: client.ApiClient, namespace: str, doc: dict[str, Any]) -> None:
    if doc["kind"] == "Secret":
        client.CoreV1Api(api).create_namespaced_secret(namespace, doc)
        return
    plural = {"WarehouseCredential": WHC, "CdiIntegration": CDI}[doc["kind"]]
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, namespace, plural, doc)


def wait_cdi(release: Release, namespace: str, check: Any, what: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = get(release.api, CDI, namespace, INTEGRATION)
        return obj if obj is not None and check(obj) else None

    def details() -> str:
        return (
            f"status: {(get(release.api, CDI, namespace, INTEGRATION) or {}).get('status')}\n{release.operator_log()}"
        )

    return wait_until(probe, WAIT, f"{namespace}/{INTEGRATION}: {what}", interval=0.5, details=details)


# --- tests, in the order a user meets them ----------------------------------------------------------------------


def test_operator_runs_from_the_chart_as_the_lease_holder(release: Release) -> None:
    pod = wait_until(release.operator_pod, WAIT, "the operator pod running")
    assert pod.spec.service_account_name == RELEASE
    assert pod.spec.security_context.run_as_non_root is True  # admitted under Pod Security "restricted"

    def holder() -> str | None:
        try:
            lease = client.CoordinationV1Api(release.api).read_namespaced_lease(RELEASE, release.namespace)
        except ApiException:
            return None
        return lease.spec.holder_identity if lease.spec else None

    wait_until(holder, WAIT, "the leader Lease held", details=release.operator_log)
    if node_mode():  # a real kubelet ran the probes in a container with the chart's read-only root
        ready = {c.type: c.status for c in pod.status.conditions}
        assert ready["Ready"] == "True" and ready["ContainersReady"] == "True", ready
        (container,) = pod.spec.containers
        assert container.security_context.read_only_root_filesystem is True
        assert container.readiness_probe is not None and container.liveness_probe is not None
        assert pod.status.container_statuses[0].restart_count == 0, release.operator_log()


def test_webhook_from_the_chart_rejects_bad_input_at_apply_time(release: Release, app_namespace: str) -> None:
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CdiIntegration",
        "metadata": {"name": "too-often"},
        "spec": {
            "credentialRef": {"name": "nobody"},
            "source": {"database": "d", "schema": "s", "table": "t"},
            "dataType": "customAttributes",
            "schedule": "*/5 * * * *",
        },
    }

    def rejection() -> str | None:
        try:
            client.CustomObjectsApi(release.api).create_namespaced_custom_object(
                GROUP, VERSION, app_namespace, CDI, bad, dry_run="All"
            )
        except ApiException as exc:
            return str(exc.body)
        return None  # accepted: the webhook is not serving yet (failurePolicy Ignore)

    message = wait_until(
        rejection, WAIT, "the chart's webhook rejecting a 5-minute schedule", details=release.operator_log
    )
    assert "spec.schedule" in message and "15 minutes" in message


def test_example_goes_active_and_syncs_through_a_runner_job(
    release: Release,
    app_namespace: str,
    braze: BrazeEmulator,
    pg_settings: dict[str, str],
    source_table: tuple[str, str],
) -> None:
    for doc in example_documents(pg_settings, *source_table, braze.url):
        apply(release.api, app_namespace, doc)
    obj = wait_cdi(release, app_namespace, lambda o: (o.get("status") or {}).get("phase") == "Active", "Active")
    assert condition(obj, "Ready")["status"] == "True"
    cronjob = client.BatchV1Api(release.api).read_namespaced_cron_job(INTEGRATION, app_namespace)
    runner_pod = cronjob.spec.job_template.spec.template.spec
    assert runner_pod.service_account_name == f"cdi-runner-{INTEGRATION}"
    assert runner_pod.containers[0].security_context.read_only_root_filesystem is True  # on the node: enforced

    annotate(release.api, app_namespace, INTEGRATION, "cdi.ingest.dev/sync-now", "chart-e2e")

    def finished(o: dict[str, Any]) -> bool:
        last = (o.get("status") or {}).get("lastSync") or {}
        return last.get("result") in ("Success", "Partial", "Error") and bool(last.get("finishedAt"))

    obj = wait_cdi(release, app_namespace, finished, "the sync-now run finished")
    last = obj["status"]["lastSync"]
    assert last["result"] == "Partial", last
    assert (last["rowsSynced"], last["rowsFailed"]) == (4, 1)
    assert obj["status"]["watermark"]["updatedAt"]
    assert sorted(a["external_id"] for a in braze.tracked("attributes")) == [f"chart-user-{i}" for i in range(4)]


class _ServiceConnection(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the certificate for the Service's DNS name (there is no cluster DNS)."""

    def __init__(self, address: tuple[str, int], service_name: str, context: ssl.SSLContext) -> None:
        super().__init__(address[0], address[1], context=context, timeout=30)
        self.service_name = service_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.service_name)  # type: ignore[attr-defined]


def test_management_api_from_the_chart_over_tls_for_a_bound_account(
    release: Release, app_namespace: str, kube_api: client.ApiClient
) -> None:
    """The chart's operator RBAC suffices for TokenReviews and SubjectAccessReviews, its certificate serves the API's
    Service, and its caller ClusterRole, bound in a namespace, lets automation see that namespace's integrations."""
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(app_namespace, {"metadata": {"name": "airflow"}})
    rbac.create_namespaced_role_binding(
        app_namespace,
        {
            "metadata": {"name": "airflow-cdi"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{RELEASE}-management-api-caller",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "airflow", "namespace": app_namespace}],
        },
    )
    token = core.create_namespaced_service_account_token("airflow", app_namespace, {"spec": {}}).status.token
    secret = core.read_namespaced_secret(f"{RELEASE}-webhook-tls", release.namespace)
    context = ssl.create_default_context(cadata=base64.b64decode(secret.data["ca.crt"]).decode())
    service = f"{RELEASE}-management-api.{release.namespace}.svc"
    address = ("127.0.0.1", release.management_api_port)  # the local kubelet's process
    if node_mode():  # the pod, through the Service
        spec = core.read_namespaced_service(f"{RELEASE}-management-api", release.namespace).spec
        address = (spec.cluster_ip, spec.ports[0].port)

    def call(token: str | None) -> tuple[int, dict[str, Any]] | None:
        connection = _ServiceConnection(address, service, context)
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        try:
            connection.request("GET", "/cdi/integrations", headers=headers)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        except (ConnectionRefusedError, ConnectionResetError, TimeoutError):
            return None  # not listening yet
        finally:
            connection.close()

    code, body = wait_until(lambda: call(None), WAIT, "the management API over TLS", details=release.operator_log)
    assert code == 401 and body["message"]
    code, body = call(token) or (0, {})
    assert code == 200, body
    [entry] = [r for r in body["results"] if r["integration_name"] == INTEGRATION]
    assert (entry["app_group_id"], entry["integration_status"], entry["warehouse_type"]) == (
        app_namespace,
        "active",
        "redshift",
    )
    assert entry["last_job_status"] == "partial" and entry["next_scheduled_run"]
    assert token not in release.operator_log()


def test_every_dashboard_query_returns_data_from_a_real_prometheus(release: Release, prometheus: Prometheus) -> None:
    wait_until(lambda: prometheus.query("cdi_sync_runs_total"), WAIT, "the run scraped by Prometheus")
    dashboard = json.loads((CHART / "dashboards" / "cdi-operator.json").read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 8

    def empty() -> list[str] | None:
        missing = [q for q in queries if not prometheus.query(q)]
        return None if missing else []

    # rate() needs two samples after the run was first scraped: a few seconds at one scrape a second.
    try:
        wait_until(lambda: empty() is not None or None, 30, "every dashboard query to return data", interval=2)
    except TimeoutError:
        missing = [q for q in queries if not prometheus.query(q)]
        raise AssertionError(f"dashboard queries without data: {missing}") from None
    assert prometheus.target_health() == ["up"]


def test_runner_service_account_is_least_privilege(
    release: Release, kubeconfig: str, app_namespace: str, kube_api: client.ApiClient
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_secret(app_namespace, {"metadata": {"name": "unrelated"}, "stringData": {"k": "v"}})
    other_namespace = _namespace(kube_api, "e2e-chart-other")
    try:
        core.create_namespaced_secret(other_namespace, {"metadata": {"name": "redshift-cdi"}, "stringData": {"k": "v"}})
        runner = impersonating(kubeconfig, f"system:serviceaccount:{app_namespace}:cdi-runner-{INTEGRATION}")
        allowed, denied = access_checks(runner, app_namespace, other_namespace)
        assert allowed == [] and denied == [], f"should work but was denied: {allowed}; should be denied: {denied}"
    finally:
        core.delete_namespace(other_namespace)


def impersonating(kubeconfig: str, user: str) -> client.ApiClient:
    """The admin's client acting as `user` (Impersonate-User): the apiserver authorizes every call as that user."""
    api = config.new_client_from_config(config_file=kubeconfig)
    api.set_default_header("Impersonate-User", user)
    return api


def access_checks(api: client.ApiClient, namespace: str, other: str) -> tuple[list[str], list[str]]:
    """(calls that failed but must work, calls that worked but must be denied), each named."""
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    must_work = {
        "get its CdiIntegration": lambda: custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, CDI, INTEGRATION
        ),
        "patch its status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, CDI, INTEGRATION, {"status": {}}
        ),
        "get its WarehouseCredential": lambda: custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, WHC, "analytics-redshift"
        ),
        "get its credential's Secret": lambda: core.read_namespaced_secret("redshift-cdi", namespace),
        "get its Braze key Secret": lambda: core.read_namespaced_secret("braze-rest-api", namespace),
    }
    must_fail = {
        "get another Secret in its namespace": lambda: core.read_namespaced_secret("unrelated", namespace),
        "list Secrets": lambda: core.list_namespaced_secret(namespace),
        "get a same-named Secret in another namespace": lambda: core.read_namespaced_secret("redshift-cdi", other),
        "update its CdiIntegration's spec": lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, CDI, INTEGRATION, {"spec": {"suspend": True}}
        ),
        "list CdiIntegrations": lambda: custom.list_namespaced_custom_object(GROUP, VERSION, namespace, CDI),
        "list CdiIntegrations cluster-wide": lambda: custom.list_cluster_custom_object(GROUP, VERSION, CDI),
        "list namespaces": lambda: core.list_namespace(),
        "list nodes": lambda: core.list_node(),
        "create a pod": lambda: core.create_namespaced_pod(
            namespace, {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}}
        ),
        "create a Job": lambda: client.BatchV1Api(api).create_namespaced_job(
            namespace, {"metadata": {"name": "x"}, "spec": {"template": {"spec": {"containers": []}}}}
        ),
    }
    failed = [name for name, call in must_work.items() if not _allowed(call)]
    worked = [name for name, call in must_fail.items() if _allowed(call)]
    return failed, worked


def _allowed(call: Any) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 403:
            return False
        if exc.status in (404, 422):  # authorized, then refused for another reason
            return True
        raise
    return True
