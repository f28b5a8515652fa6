"""The runner's own ServiceAccount, Role and RoleBinding: exactly its integration, credential and Secrets."""

from __future__ import annotations

from typing import Any

from cdi_operator.api.models import CdiIntegrationSpec, WarehouseCredentialSpec, WorkspaceRef
from cdi_operator.controller.runner_access import build_run_lease, build_runner_access, runner_account_name

OBJ: dict[str, Any] = {
    "apiVersion": "cdi.ingest.dev/v1alpha1",
    "metadata": {"name": "users", "namespace": "data", "uid": "u-1"},
}
SPEC = CdiIntegrationSpec.model_validate(
    {
        "credentialRef": {"name": "wh"},
        "source": {"database": "d", "schema": "s", "table": "t"},
        "dataType": "customAttributes",
        "schedule": "0 * * * *",
        "braze": {"restEndpoint": "https://rest.iad-01.braze.com", "apiKeySecretRef": {"name": "braze", "key": "k"}},
    }
)
TUNNELLED = WarehouseCredentialSpec.model_validate(
    {
        "type": "redshift",
        "redshift": {
            "host": "h",
            "database": "d",
            "user": "u",
            "passwordSecretRef": {"name": "pw", "key": "password"},
            "sshTunnel": {"host": "b", "user": "u", "privateKeySecretRef": {"name": "bastion", "key": "id"}},
        },
    }
)


def test_role_names_exactly_the_objects_the_runner_reads() -> None:
    account, role, binding = build_runner_access(OBJ, SPEC, TUNNELLED, {"l": "v"})
    assert account["kind"] == "ServiceAccount" and account["metadata"]["name"] == "cdi-runner-users"
    rules = {(r["apiGroups"][0], r["resources"][0]): r for r in role["rules"]}
    assert rules[("cdi.ingest.dev", "cdiintegrations")]["resourceNames"] == ["users"]
    assert rules[("cdi.ingest.dev", "cdiintegrations/status")]["verbs"] == ["get", "patch"]
    assert rules[("cdi.ingest.dev", "warehousecredentials")]["resourceNames"] == ["wh"]
    assert rules[("", "secrets")]["resourceNames"] == ["bastion", "braze", "pw"]
    # the run claim (runner/claim.py): its one Lease, never `create` (the operator makes it)
    assert rules[("coordination.k8s.io", "leases")]["resourceNames"] == ["cdi-run-users"]
    assert rules[("coordination.k8s.io", "leases")]["verbs"] == ["get", "update"]
    assert all(r["verbs"] != ["*"] and "list" not in r["verbs"] for r in role["rules"])
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cdi-runner-users", "namespace": "data"}]
    for obj in (account, role, binding):  # garbage-collected with the integration
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_no_secret_rule_rather_than_an_empty_one_that_would_allow_every_secret() -> None:
    snowflake_default_braze = SPEC.model_copy(update={"braze": None})
    credential = WarehouseCredentialSpec.model_validate(
        {"type": "snowflake", "snowflake": {"account": "a", "user": "u", "role": "r", "warehouse": "w"}}
    )
    _, role, _ = build_runner_access(OBJ, snowflake_default_braze, credential, {})
    assert not [r for r in role["rules"] if r["resources"] == ["secrets"]]


def test_long_integration_names_give_valid_distinct_account_names() -> None:
    first, second = runner_account_name("a" * 250), runner_account_name("a" * 249 + "b")
    assert len(first) <= 253 and len(second) <= 253 and first != second


def test_the_brazeworkspace_it_names_and_only_that_one() -> None:
    assert SPEC.braze is not None
    braze = SPEC.braze.model_copy(update={"workspace_ref": WorkspaceRef(name="prod")})
    _, role, _ = build_runner_access(OBJ, SPEC.model_copy(update={"braze": braze}), TUNNELLED, {})
    rules = [r for r in role["rules"] if r["resources"] == ["brazeworkspaces"]]
    assert rules == [
        {"apiGroups": ["cdi.ingest.dev"], "resources": ["brazeworkspaces"], "resourceNames": ["prod"], "verbs": ["get"]}
    ]
    _, role, _ = build_runner_access(OBJ, SPEC, TUNNELLED, {})
    assert not [r for r in role["rules"] if r["resources"] == ["brazeworkspaces"]]


def test_the_run_lease_is_empty_and_owned_by_the_integration() -> None:
    lease = build_run_lease(OBJ, {"l": "v"})
    assert (lease["kind"], lease["metadata"]["name"], lease["metadata"]["namespace"]) == (
        "Lease",
        "cdi-run-users",
        "data",
    )
    assert "spec" not in lease  # the runners own it; a server-side apply of this one never touches it
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "u-1"
