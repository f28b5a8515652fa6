"""Where the operator keeps a Snowflake key pair it generated, for whoever connects (the operator and the runner).

The operator owns the Secret `<credential>-snowflake-key` with the active private key under `private-key`; it never
writes a credential's spec (GitOps tools would fight it), so whoever connects resolves the reference here.
"""

from __future__ import annotations

from cdi_operator.api.models import SecretKeyRef, SnowflakeSpec, WarehouseCredentialSpec

ACTIVE_KEY = "private-key"


def secret_name(credential: str) -> str:
    """The name of the Secret the operator owns for `credential`'s key pair."""
    return f"{credential}-snowflake-key"


def managed(spec: WarehouseCredentialSpec) -> bool:
    """Whether the operator generates the key: a snowflake credential that does not bring its own."""
    return isinstance(spec.snowflake, SnowflakeSpec) and spec.snowflake.private_key_secret_ref is None


def resolved_spec(spec: WarehouseCredentialSpec, credential: str) -> WarehouseCredentialSpec:
    """`spec` with privateKeySecretRef pointing at the owned Secret's active key when the operator manages the key."""
    if not managed(spec):
        return spec
    assert spec.snowflake is not None
    ref = SecretKeyRef(name=secret_name(credential), key=ACTIVE_KEY)
    snowflake = spec.snowflake.model_copy(update={"private_key_secret_ref": ref})
    return spec.model_copy(update={"snowflake": snowflake})
