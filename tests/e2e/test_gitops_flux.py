"""examples/gitops/ applied by Flux's own controllers, as a user's fleet repository would have them.

Flux's source-, kustomize- and helm-controller (hack/flux/build.sh) run as local processes against the e2e
control plane; two Git repositories are served over smart HTTP on loopback (harness/gitserver.py): the
cdi-operator repository (this checkout's chart, tagged v0.1.0) and a fleet repository laid out as the example
comments say: clusters/e2e/flux-integrations.yaml, infrastructure/cdi-operator/flux-operator.yaml and
cdi/integrations/ (a filled-in copy of examples/gitops/integrations/). The test then does what `flux bootstrap`
does: a GitRepository `flux-system` and a root Kustomization `flux-system` for clusters/e2e. The integrations are
pushed once the operator's webhook serves (the local kubelet runs no readiness probe, so the HelmRelease is Ready
a moment before), so that their apply meets the webhook as on a real cluster.

What differs from a real cluster, and why:
- flux-operator.yaml's repository URL points at the loopback Git server, and its HelmRelease gets two more values,
  the metrics and webhook ports: the local kubelet runs pods as processes on this machine, so pod ports are host
  ports, and the defaults may be taken by another test.
- No External Secrets Operator runs (its controller pulls in every cloud SDK); its CRD is installed
  (hack/third-party-crds.sh) and `ExternalSecretsStandIn` below does its job for the one ClusterSecretStore: it
  creates each ExternalSecret's target Secret from a dictionary and reports Ready, as the operator would.
- The warehouse is PostgreSQL (hack/postgres.sh), the Redshift stand-in of the other e2e tests.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import LocalKubelet
from harness.controlplane import REPO_ROOT, free_port
from harness.flux import Flux
from harness.gitserver import GitServer, Worktree
from harness.helpers import apply_crds, wait_until
from harness.postgres import sql
from kubernetes import client
from kubernetes.client import ApiException

pytestmark = pytest.mark.e2e

GITOPS = REPO_ROOT / "examples" / "gitops"
CDI_GROUP, CDI_VERSION, CDI = "cdi.ingest.dev", "v1alpha1", "cdiintegrations"
CDI_GVP = (CDI_GROUP, CDI_VERSION, CDI)
KS = ("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HR = ("helm.toolkit.fluxcd.io", "v2", "helmreleases")
GIT = ("source.toolkit.fluxcd.io", "v1", "gitrepositories")
ESO = ("external-secrets.io", "v1", "externalsecrets")
FLUX_NS, APP_NS, OPERATOR_NS = "flux-system", "braze-sync", "cdi-system"
UPSTREAM_URL = "https://github.com/cdi-operator/cdi-operator"
INTEGRATIONS = ("loyalty-attributes", "loyalty-events")  # examples/gitops/integrations/analytics-redshift.yaml
BROKEN = "no-select"
WAIT = 240


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get(api: client.ApiClient, gvp: tuple[str, str, str], namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return dict(custom(api).get_namespaced_custom_object(*gvp[:2], namespace, gvp[2], name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), {})


def is_ready(obj: dict[str, Any] | None) -> bool:
    return bool(obj) and condition(obj, "Ready").get("status") == "True"


class ExternalSecretsStandIn:
    """Does External Secrets Operator's job for a ClusterSecretStore backed by `values` ({remote key: value})."""

    def __init__(self, api: client.ApiClient, values: dict[str, str]) -> None:
        self.api, self.values = api, values
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="external-secrets", daemon=True)

    def __enter__(self) -> ExternalSecretsStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            try:
                items = custom(self.api).list_cluster_custom_object(*ESO)["items"]
            except ApiException:
                continue
            for item in items:
                self._sync(item)

    def _sync(self, item: dict[str, Any]) -> None:
        meta, spec = item["metadata"], item["spec"]
        if condition(item, "Ready").get("status") == "True":
            return
        data = {}
        for entry in spec.get("data") or []:
            ref = entry["remoteRef"]
            key = ref["key"] + (f"#{ref['property']}" if ref.get("property") else "")
            data[entry["secretKey"]] = self.values[key]
        secret = {
            "metadata": {"name": spec["target"]["name"], "namespace": meta["namespace"]},
            "stringData": data,
        }
        try:
            client.CoreV1Api(self.api).create_namespaced_secret(meta["namespace"], secret)
        except ApiException as exc:
            if exc.status != 409:
                return
        status = {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SecretSynced",
                    "message": "secret synced",
                    "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ]
        }
        with contextlib.suppress(ApiException):
            custom(self.api).patch_namespaced_custom_object_status(
                *ESO[:2], meta["namespace"], ESO[2], meta["name"], {"status": status}
            )


@dataclass
class Warehouse:
    """A PostgreSQL schema with the example's two tables and one the credential's user may not SELECT."""

    pg: dict[str, str]
    schema: str
    user: str
    password: str


@pytest.fixture(scope="module")
def warehouse(pg_settings: dict[str, str]) -> Iterator[Warehouse]:
    schema, user = f"gitops_{uuid.uuid4().hex[:8]}", f"braze_cdi_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    sql(pg_settings, f'CREATE SCHEMA "{schema}"')
    for table in ("loyalty_attributes", "loyalty_events", "secret_table"):
        sql(
            pg_settings,
            f'CREATE TABLE "{schema}".{table} (updated_at TIMESTAMP, external_id VARCHAR(64), payload VARCHAR(1000))',
        )
    sql(pg_settings, f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
    sql(pg_settings, f'GRANT USAGE ON SCHEMA "{schema}" TO {user}')
    sql(pg_settings, f'GRANT SELECT ON "{schema}".loyalty_attributes, "{schema}".loyalty_events TO {user}')
    yield Warehouse(pg_settings, schema, user, password)
    sql(pg_settings, f'DROP SCHEMA "{schema}" CASCADE')
    sql(pg_settings, f"DROP ROLE {user}")


@dataclass
class Fleet:
    api: client.ApiClient
    flux: Flux
    repo: Worktree

    def reconcile(self, *kustomizations: str) -> None:
        """What `flux reconcile kustomization NAME --with-source` does: request a reconcile of each now."""
        now = datetime.now(UTC).isoformat()
        patch = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": now}}}
        custom(self.api).patch_namespaced_custom_object(*GIT[:2], FLUX_NS, GIT[2], "flux-system", patch)
        for name in kustomizations:
            custom(self.api).patch_namespaced_custom_object(*KS[:2], FLUX_NS, KS[2], name, patch)

    def details(self) -> str:
        lines = []
        for gvp, namespace in ((KS, FLUX_NS), (HR, FLUX_NS), (GIT, FLUX_NS)):
            for obj in custom(self.api).list_namespaced_custom_object(*gvp[:2], namespace, gvp[2])["items"]:
                ready = condition(obj, "Ready")
                lines.append(f"{obj['kind']} {obj['metadata']['name']}: {ready.get('reason')}: {ready.get('message')}")
        for plural in ("warehousecredentials", "cdiintegrations"):
            try:
                items = custom(self.api).list_namespaced_custom_object(CDI_GROUP, CDI_VERSION, APP_NS, plural)
            except ApiException:
                continue
            for obj in items["items"]:
                status = obj.get("status") or {}
                lines.append(
                    f"{obj['kind']} {obj['metadata']['name']}: {status.get('phase')} {status.get('conditions')}"
                )
        return "\n".join(lines) + "\n" + self.flux.logs(lines=15)


def integrations_file(warehouse: Warehouse) -> str:
    """examples/gitops/integrations/analytics-redshift.yaml filled in as its user would, for this warehouse."""
    docs = [d for d in yaml.safe_load_all((GITOPS / "integrations" / "analytics-redshift.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "WarehouseCredential":
            doc["spec"]["redshift"].update(
                host=warehouse.pg["CDI_PG_HOST"],
                port=int(warehouse.pg["CDI_PG_PORT"]),
                database=warehouse.pg["CDI_PG_DATABASE"],
                user=warehouse.user,
                ssl=False,
            )
        elif doc["kind"] == "CdiIntegration":
            doc["spec"]["source"].update(database=warehouse.pg["CDI_PG_DATABASE"], schema=warehouse.schema)
    return yaml.safe_dump_all(docs, sort_keys=False)


def operator_file(operator_repo: str) -> str:
    """examples/gitops/flux-operator.yaml with the repository URL replaced (and the pods' host ports, see above)."""
    text = (GITOPS / "flux-operator.yaml").read_text()
    assert UPSTREAM_URL in text
    docs = [d for d in yaml.safe_load_all(text.replace(UPSTREAM_URL, operator_repo)) if d]
    release = next(d for d in docs if d["kind"] == "HelmRelease")
    release["spec"]["values"].setdefault("metrics", {})["port"] = free_port()
    release["spec"]["values"].setdefault("webhook", {})["port"] = free_port()
    return yaml.safe_dump_all(docs, sort_keys=False)


def broken_integration(warehouse: Warehouse) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": f"{CDI_GROUP}/{CDI_VERSION}",
            "kind": "CdiIntegration",
            "metadata": {"name": BROKEN},
            "spec": {
                "credentialRef": {"name": "warehouse-redshift"},
                "source": {
                    "database": warehouse.pg["CDI_PG_DATABASE"],
                    "schema": warehouse.schema,
                    "table": "secret_table",
                },
                "dataType": "customAttributes",
                "schedule": "0 */2 * * *",
            },
        },
        sort_keys=False,
    )


@pytest.fixture(scope="module")
def fleet(
    kube_api: client.ApiClient,
    kubeconfig: str,
    local_kubelet: LocalKubelet | None,  # runs the operator's pod
    warehouse: Warehouse,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("gitops")
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "hack" / "third-party-crds.sh")], check=True, capture_output=True, text=True
    ).stdout
    third_party = Path(out.strip().splitlines()[-1])
    apply_crds(kube_api, [third_party / "external-secrets.io_externalsecrets.yaml"], "cdi-e2e-gitops")
    secrets = {
        "data-platform/redshift/braze_cdi#password": warehouse.password,
        "data-platform/braze/rest-api-key": "e2e-gitops-braze-key",
    }
    with (
        GitServer(work / "git") as git,
        Flux(kube_api, Path(kubeconfig), work / "flux") as flux,
        ExternalSecretsStandIn(kube_api, secrets),
    ):
        upstream = Worktree(work / "cdi-operator", git.create("cdi-operator"))
        chart = REPO_ROOT / "charts" / "cdi-operator"
        for path in sorted(p for p in chart.rglob("*") if p.is_file()):
            upstream.write(str(path.relative_to(REPO_ROOT)), path.read_text(encoding="utf-8"))
        upstream.commit_and_push("the chart", tag="v0.1.0")

        repo = Worktree(work / "fleet", git.create("fleet"))
        repo.write("clusters/e2e/flux-integrations.yaml", (GITOPS / "flux-integrations.yaml").read_text())
        repo.write("infrastructure/cdi-operator/flux-operator.yaml", operator_file(git.url("cdi-operator")))
        repo.commit_and_push("cdi-operator")  # the integrations come once it runs (the second test)
        bootstrap(kube_api, git.url("fleet"))
        yield Fleet(kube_api, flux, repo)
        root = get(kube_api, KS, FLUX_NS, "flux-system")
        if root is not None:  # a failed test left it: prune what it applied
            custom(kube_api).delete_namespaced_custom_object(*KS[:2], FLUX_NS, KS[2], "flux-system")
            wait_until(lambda: get(kube_api, KS, FLUX_NS, "flux-system") is None or None, WAIT, "root pruned")


def bootstrap(api: client.ApiClient, url: str) -> None:
    """The two objects `flux bootstrap` creates: the fleet repository and the Kustomization of clusters/e2e."""
    repository = {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": "flux-system", "namespace": FLUX_NS},
        "spec": {"interval": "1m", "url": url, "ref": {"branch": "main"}},
    }
    root = {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": "flux-system", "namespace": FLUX_NS},
        "spec": {
            "interval": "10m",
            "path": "./clusters/e2e",
            "prune": True,
            "sourceRef": {"kind": "GitRepository", "name": "flux-system"},
        },
    }
    custom(api).create_namespaced_custom_object(*GIT[:2], FLUX_NS, GIT[2], repository)
    custom(api).create_namespaced_custom_object(*KS[:2], FLUX_NS, KS[2], root)


# --- tests, in the order a user meets them ----------------------------------------------------------------------


def test_helmrelease_installs_the_chart_and_the_operator_runs(fleet: Fleet) -> None:
    wait_until(
        lambda: is_ready(get(fleet.api, HR, FLUX_NS, "cdi-operator")),
        WAIT,
        "HelmRelease cdi-operator Ready",
        details=fleet.details,
    )
    wait_until(
        lambda: is_ready(get(fleet.api, KS, FLUX_NS, "cdi-operator")),
        WAIT,
        "Kustomization cdi-operator Ready",
        details=fleet.details,
    )
    deployment = client.AppsV1Api(fleet.api).read_namespaced_deployment("cdi-operator", OPERATOR_NS)
    assert deployment.status.available_replicas == 1
    # The local kubelet runs no readiness probe: the Deployment is Available as soon as the process runs.
    wait_until(
        lambda: webhook_refuses_a_five_minute_schedule(fleet.api),
        WAIT,
        "the chart's webhook serving",
        details=fleet.details,
    )


def webhook_refuses_a_five_minute_schedule(api: client.ApiClient) -> bool:
    doc = yaml.safe_load(
        f"""
        apiVersion: {CDI_GROUP}/{CDI_VERSION}
        kind: CdiIntegration
        metadata: {{name: too-often}}
        spec:
          credentialRef: {{name: warehouse-redshift}}
          source: {{database: d, schema: s, table: t}}
          dataType: customAttributes
          schedule: "*/5 * * * *"
        """
    )
    try:
        custom(api).create_namespaced_custom_object(CDI_GROUP, CDI_VERSION, APP_NS, CDI, doc, dry_run="All")
    except ApiException as exc:
        return "15 minutes" in str(exc.body)
    return False


def test_integrations_are_ready_only_after_the_operator_reports_them_active(fleet: Fleet, warehouse: Warehouse) -> None:
    """One Kustomization applies the ExternalSecrets, the credential and the integrations together, while the
    webhook serves: the integrations may arrive before their credential, and the credential before its Secret."""
    fleet.repo.write("cdi/integrations/analytics-redshift.yaml", integrations_file(warehouse))
    fleet.repo.commit_and_push("the integrations")
    fleet.reconcile("flux-system", "cdi-integrations")
    early: list[str] = []

    def converged() -> bool:
        kustomization = get(fleet.api, KS, FLUX_NS, "cdi-integrations")
        if not is_ready(kustomization):
            return False
        phases = {}
        for name in INTEGRATIONS:
            obj = get(fleet.api, CDI_GVP, APP_NS, name) or {}
            status = obj.get("status") or {}
            fresh = status.get("observedGeneration") == (obj.get("metadata") or {}).get("generation")
            phases[name] = status.get("phase") if fresh else "not observed"
        if any(phase != "Active" for phase in phases.values()):
            early.append(f"Kustomization Ready while {phases}")
        return True

    # A Secret the operator found missing is looked for again after a resync (60 s): up to two of them.
    wait_until(converged, 400, "Kustomization cdi-integrations Ready", interval=0.5, details=fleet.details)
    assert early == []


def test_a_broken_integration_fails_the_kustomization_with_the_operators_reason(
    fleet: Fleet, warehouse: Warehouse
) -> None:
    fleet.repo.write(f"cdi/integrations/{BROKEN}.yaml", broken_integration(warehouse))
    fleet.repo.commit_and_push("an integration of a table braze_cdi may not read")
    fleet.reconcile("flux-system", "cdi-integrations")

    def failed() -> dict[str, Any] | None:
        kustomization = get(fleet.api, KS, FLUX_NS, "cdi-integrations")
        ready = condition(kustomization, "Ready")
        return ready if ready.get("reason") == "HealthCheckFailed" else None

    ready = wait_until(failed, WAIT, "Kustomization cdi-integrations HealthCheckFailed", details=fleet.details)
    assert f"CdiIntegration/{APP_NS}/{BROKEN} status: 'Failed'" in ready["message"]
    # Flux names the object only; the operator's reason is among the Events `kubectl describe` selects like this.
    uid = (get(fleet.api, KS, FLUX_NS, "cdi-integrations") or {})["metadata"]["uid"]
    selector = f"involvedObject.kind=Kustomization,involvedObject.name=cdi-integrations,involvedObject.uid={uid}"
    events = client.CoreV1Api(fleet.api).list_namespaced_event(FLUX_NS, field_selector=selector).items
    described = "\n".join(f"{e.type} {e.reason} {e.source.component if e.source else ''}: {e.message}" for e in events)
    assert f"CdiIntegration {APP_NS}/{BROKEN}: PermissionDenied" in described, described

    fleet.repo.remove(f"cdi/integrations/{BROKEN}.yaml")
    fleet.repo.commit_and_push("drop the broken integration")
    fleet.reconcile("flux-system", "cdi-integrations")
    wait_until(
        lambda: is_ready(get(fleet.api, KS, FLUX_NS, "cdi-integrations")),
        WAIT,
        "Kustomization cdi-integrations Ready again",
        details=fleet.details,
    )
    assert get(fleet.api, CDI_GVP, APP_NS, BROKEN) is None  # pruned


PLACEHOLDER = f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: no-integrations
  namespace: {APP_NS}
"""


def test_deleting_the_root_kustomization_prunes_everything_it_applied(fleet: Fleet) -> None:
    # Torn down as examples/gitops/README.md says: the integrations and their credential first, while the operator
    # still runs to release the credential's finalizer; deleting the root at once would uninstall the operator (and
    # its ServiceAccount) in the same second, and a credential whose finalizer it had no time to remove stays.
    fleet.repo.write("cdi/integrations/analytics-redshift.yaml", PLACEHOLDER)
    fleet.repo.commit_and_push("remove the integrations and their credential")
    fleet.reconcile("flux-system", "cdi-integrations")
    wait_until(
        lambda: (
            not any(
                custom(fleet.api).list_namespaced_custom_object(CDI_GROUP, CDI_VERSION, APP_NS, plural)["items"]
                for plural in ("cdiintegrations", "warehousecredentials")
            )
            or None
        ),
        WAIT,
        "the integrations and the credential pruned",
        details=fleet.details,
    )

    custom(fleet.api).delete_namespaced_custom_object(*KS[:2], FLUX_NS, KS[2], "flux-system")
    core, apps = client.CoreV1Api(fleet.api), client.AppsV1Api(fleet.api)

    def left() -> list[str]:
        out = [
            f"Kustomization {n}"
            for n in ("flux-system", "cdi-operator", "cdi-integrations")
            if get(fleet.api, KS, FLUX_NS, n)
        ]
        if get(fleet.api, HR, FLUX_NS, "cdi-operator"):
            out.append("HelmRelease cdi-operator")
        if any(n.metadata.name == APP_NS for n in core.list_namespace().items):
            out.append(f"namespace {APP_NS}")
        if apps.list_namespaced_deployment(OPERATOR_NS).items:
            out.append("the operator Deployment")
        return out

    wait_until(
        lambda: left() == [] or None, WAIT, "everything pruned", details=lambda: f"left: {left()}\n{fleet.details()}"
    )
