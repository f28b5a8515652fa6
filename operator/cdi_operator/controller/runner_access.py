"""The least-privilege identity of an integration's runner pods: a ServiceAccount, Role and RoleBinding of its own.

A runner may read its own CdiIntegration and patch its status, get and update its integration's run Lease (the
claim of runner/claim.py), read the WarehouseCredential it uses, the BrazeWorkspace its spec.braze.workspaceRef
names and the Secrets that credential (and the integration's spec.braze) names; nothing else, nothing
cluster-wide. RBAC cannot limit `create` to one name, so the operator creates that Lease itself
(`build_run_lease`, in both account modes) and runners only update it. One identity per integration, so a runner
can never read another integration's Secrets in the same namespace. The objects are owned by the CdiIntegration
(garbage-collected with it) and re-applied on every reconcile, so a credential that starts naming another Secret is
followed. The operator can grant only what it holds itself (RBAC's escalation check): its ClusterRole has these
verbs.

With `$CDI_RUNNER_SERVICE_ACCOUNT` set, runners use that account instead and none of this but the Lease is created
(that account's Role needs `get` and `update` on leases).
"""

from __future__ import annotations

import hashlib

from cdi_operator.api.json import JSON
from cdi_operator.api.models import (
    API_VERSION,
    CDI_PLURAL,
    GROUP,
    WHC_PLURAL,
    WORKSPACE_PLURAL,
    CdiIntegrationSpec,
    WarehouseCredentialSpec,
    run_lease_name,
)
from cdi_operator.kube.objects import controller_reference

PREFIX = "cdi-runner-"
NAME_MAX = 253


def runner_account_name(integration: str) -> str:
    name = PREFIX + integration
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(integration.encode()).hexdigest()[:10]
    return f"{name[: NAME_MAX - 11].rstrip('-.')}-{digest}"


def secret_names(spec: CdiIntegrationSpec, credential: WarehouseCredentialSpec) -> list[str]:
    """The Secrets a runner reads through the API (the operator's default Braze key reaches it as an env var)."""
    names = {ref.name for ref in credential.secret_refs()}
    if spec.braze is not None and spec.braze.api_key_secret_ref is not None:
        names.add(spec.braze.api_key_secret_ref.name)
    return sorted(names)


def role_rules(integration: str, credential: str, secrets: list[str], workspace: str | None = None) -> list[JSON]:
    rules: list[JSON] = [
        {"apiGroups": [GROUP], "resources": [CDI_PLURAL], "resourceNames": [integration], "verbs": ["get"]},
        {
            "apiGroups": [GROUP],
            "resources": [f"{CDI_PLURAL}/status"],
            "resourceNames": [integration],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [GROUP], "resources": [WHC_PLURAL], "resourceNames": [credential], "verbs": ["get"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [run_lease_name(integration)],
            "verbs": ["get", "update"],
        },
    ]
    if workspace is not None:
        rules.append(
            {"apiGroups": [GROUP], "resources": [WORKSPACE_PLURAL], "resourceNames": [workspace], "verbs": ["get"]}
        )
    if secrets:  # an empty resourceNames would mean every Secret
        rules.append({"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get"]})
    return rules


def _owner(obj: JSON) -> JSON:
    return controller_reference(obj.get("apiVersion", API_VERSION), "CdiIntegration", obj["metadata"])


def build_run_lease(obj: JSON, labels: dict[str, str]) -> JSON:
    """The (empty) run Lease of the CdiIntegration `obj`, applied server-side: the operator owns its metadata
    only, the runners its spec."""
    meta = obj["metadata"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": run_lease_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [_owner(obj)],
        },
    }


def build_runner_access(
    obj: JSON, spec: CdiIntegrationSpec, credential: WarehouseCredentialSpec, labels: dict[str, str]
) -> list[JSON]:
    """ServiceAccount, Role and RoleBinding (in that order) for the runners of the CdiIntegration `obj`."""
    meta = obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    account = runner_account_name(name)
    owner = _owner(obj)

    def metadata() -> JSON:
        return {"name": account, "namespace": namespace, "labels": labels, "ownerReferences": [owner]}

    workspace = spec.braze.workspace_ref if spec.braze is not None else None
    secrets = secret_names(spec, credential)
    rules = role_rules(name, spec.credential_ref.name, secrets, workspace.name if workspace is not None else None)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(), "automountServiceAccountToken": True},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": metadata(), "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": metadata(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]
