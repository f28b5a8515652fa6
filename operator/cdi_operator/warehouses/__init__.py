"""Warehouse adapters behind one small protocol (see base.py).

`connect()` picks the adapter by `spec.type` and imports it only then, so that a client library missing
for one warehouse never breaks another.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import cast

from cdi_operator.api.models import SecretKeyRef, WarehouseCredentialSpec, WarehouseType
from cdi_operator.warehouses.base import (
    Column,
    Connector,
    FailureReason,
    ReadWindow,
    TableDescription,
    Warehouse,
    WarehouseError,
)

__all__ = [
    "Column",
    "FailureReason",
    "MissingSecretError",
    "ReadWindow",
    "TableDescription",
    "Warehouse",
    "WarehouseError",
    "connect",
    "secret_value",
]

# Adapter module and the pip package its client library comes from.
_ADAPTERS: dict[WarehouseType, tuple[str, str]] = {
    WarehouseType.SNOWFLAKE: ("cdi_operator.warehouses.snowflake", "snowflake-connector-python"),
    WarehouseType.REDSHIFT: ("cdi_operator.warehouses.redshift", "redshift_connector"),
    WarehouseType.DUCKDB: ("cdi_operator.warehouses.duckdb", "duckdb"),
    WarehouseType.DATABRICKS: ("cdi_operator.warehouses.databricks", "databricks-sql-connector"),
    WarehouseType.BIGQUERY: ("cdi_operator.warehouses.bigquery", "google-cloud-bigquery"),
}


class MissingSecretError(ValueError):
    """A Secret key the credential refers to has no value among those resolved: a configuration mistake.

    Not a WarehouseError: nothing was tried against the warehouse. The message names the Secret and key
    and how to create them, and never holds a value.
    """

    def __init__(self, ref: SecretKeyRef) -> None:
        self.secret = ref.name
        self.key = ref.key
        super().__init__(
            f"Secret {ref.name!r} has no key {ref.key!r} (or the Secret does not exist in the credential's "
            f"namespace); create it with: kubectl create secret generic {ref.name} --from-literal={ref.key}=…"
        )


def secret_value(secrets: Mapping[tuple[str, str], str], ref: SecretKeyRef) -> str:
    """The value of `ref` among the resolved `secrets`; raises MissingSecretError when absent."""
    try:
        return secrets[(ref.name, ref.key)]
    except KeyError:
        raise MissingSecretError(ref) from None


def connect(spec: WarehouseCredentialSpec, secrets: Mapping[tuple[str, str], str]) -> Warehouse:
    """Open the warehouse `spec` describes. `secrets` maps (Secret name, key) to the value.

    Raises MissingSecretError when a referenced secret value is absent, WarehouseError when the warehouse
    cannot be used (an unsupported type included).
    """
    for ref in spec.secret_refs():
        secret_value(secrets, ref)
    adapter = _ADAPTERS.get(spec.type)
    if adapter is None:
        raise WarehouseError(
            FailureReason.QUERY_FAILED,
            f"spec.type {spec.type.value!r} is not supported by this version of cdi-operator yet; "
            f"supported: {', '.join(sorted(t.value for t in _ADAPTERS))}",
        )
    module_name, package = adapter
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WarehouseError(
            FailureReason.QUERY_FAILED,
            f"the {spec.type.value} client library is not installed ({exc.name or package}); "
            f"install it with: pip install {package}",
        ) from None
    connector = cast(Connector, module.connect)
    return connector(spec.settings, secrets)
