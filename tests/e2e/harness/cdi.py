"""The project's own objects as the operator e2e tests make and read them: the API group, a custom object read (None
when gone) and its conditions, a wait on its status, and what an integration starts from (the Braze key's Secret,
a WarehouseCredential of the PostgreSQL server with its password's Secret, the CdiIntegration itself)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException

from .helpers import wait_until
from .operator import OperatorProcess
from .postgres import redshift_credential

GROUP, VERSION, CDI, WHC = "cdi.ingest.dev", "v1alpha1", "cdiintegrations", "warehousecredentials"
WAIT = 90


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)  # type: ignore[no-any-return]
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition `type_` of the object's status, {} when it has none."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c  # type: ignore[no-any-return]
    return {}


def wait_status(
    api: client.ApiClient,
    operator: OperatorProcess,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    plural: str = CDI,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """Waits until check(object) is true; the object. A timeout shows its status and the operator's log."""

    def probe() -> dict[str, Any] | None:
        obj = get(api, plural, namespace, name)
        return obj if obj is not None and check(obj) else None

    def details() -> str:
        obj = get(api, plural, namespace, name)
        return f"status: {(obj or {}).get('status')}\n{operator.log_tail()}"

    return wait_until(probe, timeout, f"{plural} {namespace}/{name}: {what}", interval=0.5, details=details)


def create_braze_secret(api: client.ApiClient, namespace: str, key: str) -> None:
    """The Secret `braze` (key `api-key`) that `braze_spec` refers to."""
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": "braze"}, "stringData": {"api-key": key}}
    )


def braze_spec(url: str) -> dict[str, Any]:
    """spec.braze: the endpoint `url`, the key in the Secret of `create_braze_secret`."""
    return {"restEndpoint": url, "apiKeySecretRef": {"name": "braze", "key": "api-key"}}


def create_pg_credential(
    api: client.ApiClient,
    namespace: str,
    pg: dict[str, str],
    name: str = "wh",
    user: str | None = None,
    password: str | None = None,
) -> None:
    """The WarehouseCredential `name` of the PostgreSQL server (the Redshift stand-in), its password in the Secret
    `<name>-password`."""
    secret = f"{name}-password"
    client.CoreV1Api(api).create_namespaced_secret(
        namespace, {"metadata": {"name": secret}, "stringData": {"password": password or pg["CDI_PG_PASSWORD"]}}
    )
    custom(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, WHC, redshift_credential(pg, secret, name=name, user=user)
    )


def create_integration(
    api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CdiIntegration",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": spec,
    }
    return custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, CDI, body)  # type: ignore[no-any-return]
