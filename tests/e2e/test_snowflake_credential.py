"""A snowflake WarehouseCredential against the real control plane, with the operator as a subprocess and fakesnow
behind the key gate (tests/integration/snowflake_standin.py) as Snowflake: the key pair the operator generates into a
Secret it owns, the public key and ALTER USER statement in status (never a private key in status, Events or the
log), a rotation through the second key slot, two credentials for one Snowflake user flagged, and the Secret
garbage-collected with its credential.

The gate refuses a key Snowflake does not know (390144), so the rotation is shown for real: the generated key is
refused until its ALTER USER runs, the new key is refused (and the old one keeps logging in) until the new key's
statement runs, and only then does the rotation complete.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.helpers import wait_until
from harness.operator import OperatorProcess
from kubernetes import client
from kubernetes.client import ApiException
from test_crds_apiserver import install_crds

from cdi_operator.api import snowflake_key
from cdi_operator.controller import snowflake_keys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from snowflake_standin import ACCOUNT, ROLE, USER, WAREHOUSE, SnowflakeStandIn, running_standin

pytestmark = pytest.mark.e2e

GROUP, VERSION, WHC = "cdi.ingest.dev", "v1alpha1", "warehousecredentials"
WAIT = 90


@pytest.fixture(scope="module")
def crds(kube_api: client.ApiClient) -> list[str]:
    return install_crds(kube_api)


@pytest.fixture(scope="module")
def standin() -> Iterator[SnowflakeStandIn]:
    with running_standin(register_default_key=False) as server:
        yield server


@pytest.fixture(scope="module")
def operator(
    crds: list[str], kubeconfig: str, standin: SnowflakeStandIn, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    env = {
        "CDI_RESYNC_SECONDS": "2",
        "CDI_RETEST_FAILED_SECONDS": "3600",
        "CDI_CONNECTION_TEST_TIMEOUT_SECONDS": "60",
        "CDI_SNOWFLAKE_ENDPOINT": standin.endpoint,  # the stand-in instead of snowflakecomputing.com
    }
    proc = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", env)
    proc.start()
    yield proc
    proc.stop()
    assert "PRIVATE KEY" not in proc.log_text(), "a private key reached the operator's log"


# --- helpers -------------------------------------------------------------------------------------------------------


def get(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return client.CustomObjectsApi(api).get_namespaced_custom_object(  # type: ignore[no-any-return]
            GROUP, VERSION, namespace, WHC, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return ((get(api, namespace, name) or {}).get("status")) or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c.get("type") == type_), {})


def create_credential(api: client.ApiClient, namespace: str, name: str, user: str = USER) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "WarehouseCredential",
        "metadata": {"name": name},
        "spec": {
            "type": "snowflake",
            "snowflake": {"account": ACCOUNT, "user": user, "role": ROLE, "warehouse": WAREHOUSE},
        },
    }
    return client.CustomObjectsApi(api).create_namespaced_custom_object(  # type: ignore[no-any-return]
        GROUP, VERSION, namespace, WHC, body
    )


def annotate(api: client.ApiClient, namespace: str, name: str, key: str, value: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, WHC, name, {"metadata": {"annotations": {key: value}}}
    )


def secret_data(api: client.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def pem_body(pem: str) -> str:
    return "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


def assert_no_private_key(api: client.ApiClient, namespace: str, name: str, pems: list[str]) -> None:
    events = client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
    texts = [json.dumps(status(api, namespace, name))] + [e.message or "" for e in events.items]
    for text in texts:
        assert "PRIVATE KEY" not in text
        for pem in pems:
            assert pem_body(pem)[:64] not in text.replace("\\n", "")


# --- the test ------------------------------------------------------------------------------------------------------


def test_snowflake_key_pair_rotation_conflict_and_gc(
    operator: OperatorProcess, kube_api: client.ApiClient, namespace: str, standin: SnowflakeStandIn
) -> None:
    core = client.CoreV1Api(kube_api)
    secret_name = snowflake_key.secret_name("sf")
    created = create_credential(kube_api, namespace, "sf")

    # 1. The owned Secret, the public key and the statement in status; Snowflake refuses the key until the
    # statement runs, then the login passes.
    st = wait_until(
        lambda: (
            (s := status(kube_api, namespace, "sf")).get("publicKey")
            and condition(s, "ConnectionVerified").get("reason") == "AuthFailed"
            and s
        ),
        WAIT,
        "the credential's public key and a connection test refused by Snowflake",
        details=operator.log_tail,
    )
    assert condition(st, "Ready").get("status") != "True"
    standin.execute(st["alterUserStatement"])
    annotate(kube_api, namespace, "sf", "cdi.ingest.dev/test-connection", "t0")
    st = wait_until(
        lambda: (s := status(kube_api, namespace, "sf")) and condition(s, "Ready").get("status") == "True" and s,
        WAIT,
        "a passing connection test once the key is registered",
        details=operator.log_tail,
    )
    secret = core.read_namespaced_secret(secret_name, namespace)
    assert secret.type == "Opaque"
    assert (secret.metadata.labels or {}).get("cdi.ingest.dev/credential") == "sf"
    owners = secret.metadata.owner_references or []
    assert [(o.kind, o.name, o.uid, o.controller) for o in owners] == [
        ("WarehouseCredential", "sf", created["metadata"]["uid"], True)
    ]
    data = secret_data(kube_api, namespace, secret_name) or {}
    first = data["private-key"]
    assert set(data) == {"private-key"}
    public = snowflake_keys.public_key(first)
    assert st["publicKey"] == public
    assert st["alterUserStatement"] == f"ALTER USER \"{USER}\" SET RSA_PUBLIC_KEY='{public}'"
    assert st["keyFingerprint"] == snowflake_keys.fingerprint(public)
    assert st["keySlot"] == 1
    assert "rotation" not in st
    assert condition(st, "ConnectionVerified").get("status") == "True"
    assert (
        "spec" in created and "privateKeySecretRef" not in (get(kube_api, namespace, "sf") or {})["spec"]["snowflake"]
    ), "the operator must not write spec"

    # 2. rotate-key: a new key for slot 2, its statement in status, the old key stays the active one.
    annotate(kube_api, namespace, "sf", "cdi.ingest.dev/rotate-key", "r1")
    st = wait_until(
        lambda: (s := status(kube_api, namespace, "sf")).get("rotation", {}).get("phase") == "AwaitingNewKey" and s,
        WAIT,
        "the rotation to wait for the new key's statement",
        details=operator.log_tail,
    )
    data = secret_data(kube_api, namespace, secret_name) or {}
    assert data["private-key"] == first, "syncs must keep the old key until the new one logs in"
    second = data["private-key-next"]
    new_public = snowflake_keys.public_key(second)
    rotation = st["rotation"]
    assert rotation["statement"] == f"ALTER USER \"{USER}\" SET RSA_PUBLIC_KEY_2='{new_public}'"
    assert rotation["nextPublicKey"] == new_public
    assert rotation["requestedBy"] == "r1"
    assert st["publicKey"] == public and st["lastHandledRotateKey"] == "r1"
    assert_no_private_key(kube_api, namespace, "sf", [first, second])

    # 3. A test before the statement ran: Snowflake refuses the new key, the old key keeps the credential verified.
    annotate(kube_api, namespace, "sf", "cdi.ingest.dev/test-connection", "t1")
    st = wait_until(
        lambda: (
            "login with the new key failed (AuthFailed)"
            in (s := status(kube_api, namespace, "sf")).get("rotation", {}).get("message", "")
            and s
        ),
        WAIT,
        "the new key to be refused",
        details=operator.log_tail,
    )
    assert st["rotation"]["phase"] == "AwaitingNewKey"
    assert (secret_data(kube_api, namespace, secret_name) or {})["private-key"] == first
    assert condition(st, "ConnectionVerified").get("status") == "True", "the old key still logs in"

    # 4. The user runs the statement and asks for a test: the new key logs in and becomes the active one; status
    # shows the statement that retires the old slot.
    standin.execute(rotation["statement"])
    annotate(kube_api, namespace, "sf", "cdi.ingest.dev/test-connection", "t2")
    st = wait_until(
        lambda: (s := status(kube_api, namespace, "sf")).get("rotation", {}).get("phase") == "Completed" and s,
        WAIT,
        "the rotation to switch to the new key",
        details=operator.log_tail,
    )
    data = secret_data(kube_api, namespace, secret_name) or {}
    assert data == {"private-key": second}
    assert st["publicKey"] == new_public and st["keySlot"] == 2
    assert st["alterUserStatement"] == f"ALTER USER \"{USER}\" SET RSA_PUBLIC_KEY_2='{new_public}'"
    assert st["rotation"]["statement"] == f'ALTER USER "{USER}" UNSET RSA_PUBLIC_KEY'
    assert set(st["rotation"]) == {"phase", "statement", "message", "requestedBy"}, "fields of the pending phase"
    assert condition(st, "Ready").get("status") == "True"
    assert_no_private_key(kube_api, namespace, "sf", [first, second])

    # Settled: the resyncs (every 2 s) leave the object alone.
    version = (get(kube_api, namespace, "sf") or {})["metadata"]["resourceVersion"]
    time.sleep(6)
    assert (get(kube_api, namespace, "sf") or {})["metadata"]["resourceVersion"] == version, "status churns"

    # 5. A second credential for the same Snowflake user (lower case: the same user to Snowflake) is flagged,
    # and so is the first.
    create_credential(kube_api, namespace, "sf-twin", user=USER.lower())
    twin = wait_until(
        lambda: (
            condition(status(kube_api, namespace, "sf-twin"), "KeyConflict").get("status") == "True"
            and condition(status(kube_api, namespace, "sf-twin"), "KeyConflict")
        ),
        WAIT,
        "the KeyConflict condition on the second credential",
        details=operator.log_tail,
    )
    assert "WarehouseCredential sf " in twin["message"]
    first_flag = wait_until(
        lambda: (
            condition(status(kube_api, namespace, "sf"), "KeyConflict").get("status") == "True"
            and condition(status(kube_api, namespace, "sf"), "KeyConflict")
        ),
        WAIT,
        "the KeyConflict condition on the first credential",
        details=operator.log_tail,
    )
    assert "sf-twin" in first_flag["message"]
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=sf-twin").items
    assert any(e.reason == "KeyConflict" and "sf " in (e.message or "") for e in events)

    # 6. Deleting a credential garbage-collects its Secret; the other one's flag clears.
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, WHC, "sf-twin")
    wait_until(
        lambda: secret_data(kube_api, namespace, snowflake_key.secret_name("sf-twin")) is None,
        WAIT,
        "the garbage collector to delete the twin's Secret",
    )
    wait_until(
        lambda: condition(status(kube_api, namespace, "sf"), "KeyConflict").get("status") == "False",
        WAIT,
        "the KeyConflict condition to clear",
        details=operator.log_tail,
    )
    client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, WHC, "sf")
    wait_until(
        lambda: secret_data(kube_api, namespace, secret_name) is None,
        WAIT,
        "the garbage collector to delete the key Secret",
    )
