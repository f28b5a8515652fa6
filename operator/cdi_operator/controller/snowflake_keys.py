"""Snowflake key pairs the operator generates for a WarehouseCredential, and their rotation, as plain data.

A snowflake credential without `spec.snowflake.privateKeySecretRef` gets a key pair: the private key stays in a
Secret the operator owns (`<credential>-snowflake-key`, key `private-key`; api/snowflake_key.py resolves it for
whoever connects), the public key and the exact `ALTER USER … SET RSA_PUBLIC_KEY='…'` statement go to the
credential's status. Nothing here ever puts a private key into a message, a status field or a log line.

Rotation uses Snowflake's two key slots (RSA_PUBLIC_KEY and RSA_PUBLIC_KEY_2) so that syncs never stop:

1. the active key sits in one slot (`slot`, 1 at first);
2. a new value of `cdi.ingest.dev/rotate-key` generates a new key into the Secret's `private-key-next`, for the
   other slot; status shows its `ALTER USER … SET RSA_PUBLIC_KEY_2='…'` statement, syncs keep using the old key;
3. once a login with the new key passes (the user ran the statement), the new key becomes `private-key` and status
   shows the statement that unsets the old slot (phase Completed). The next rotation uses the freed slot.

The Secret is the source of truth (status can be lost, e.g. by a backup restore): its data holds the keys, its
annotations the active slot, the slot to retire and the last handled rotate-key value.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi_operator.api.models import GROUP, SnowflakeSpec, WarehouseCredentialSpec
from cdi_operator.api.snowflake_key import ACTIVE_KEY

KEY_SIZE = 2048
NEXT_KEY = "private-key-next"
SLOT_ANNOTATION = f"{GROUP}/key-slot"
RETIRED_SLOT_ANNOTATION = f"{GROUP}/retired-key-slot"
HANDLED_ROTATE_ANNOTATION = f"{GROUP}/rotate-key-handled"
CREDENTIAL_LABEL = f"{GROUP}/credential"

PHASE_PENDING = "AwaitingNewKey"  # the new key is generated; its statement must run before it is used
PHASE_COMPLETED = "Completed"  # the new key is active; the old slot may be unset

# An identifier Snowflake takes unquoted (and then stores in upper case).
_UNQUOTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


# --- keys ----------------------------------------------------------------------------------------------------------


def generate_private_key() -> str:
    """A new RSA 2048 private key as unencrypted PKCS#8 PEM (what the Snowflake connector takes)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _public_der(private_pem: str) -> bytes:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key(private_pem: str) -> str:
    """The public half as Snowflake wants it in RSA_PUBLIC_KEY: the base64 body of the DER SubjectPublicKeyInfo,
    on one line, without the PEM header and footer."""
    return base64.b64encode(_public_der(private_pem)).decode("ascii")


def fingerprint(public_key_b64: str) -> str:
    """`SHA256:` and the base64 of the SHA-256 of the DER public key, as DESC USER shows RSA_PUBLIC_KEY_FP."""
    digest = hashlib.sha256(base64.b64decode(public_key_b64)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii")


# --- statements ----------------------------------------------------------------------------------------------------


def quote_user(user: str) -> str:
    """The user name quoted by Snowflake's rules, naming the same user as `user` unquoted would.

    A name Snowflake takes unquoted is case-insensitive and stored in upper case, so it is quoted in upper case;
    any other name (with '-', or starting with a digit) can only have been created quoted and keeps its case.
    Inner double quotes are doubled.
    """
    name = user.upper() if _UNQUOTED.match(user) else user
    return '"' + name.replace('"', '""') + '"'


def slot_property(slot: int) -> str:
    if slot not in (1, 2):
        raise ValueError(f"Snowflake has key slots 1 and 2, not {slot}")
    return "RSA_PUBLIC_KEY" if slot == 1 else "RSA_PUBLIC_KEY_2"


def set_statement(user: str, public_key_b64: str, slot: int = 1) -> str:
    """`ALTER USER "<user>" SET RSA_PUBLIC_KEY='…'` (or RSA_PUBLIC_KEY_2 for slot 2)."""
    if not re.fullmatch(r"[A-Za-z0-9+/=]+", public_key_b64):
        raise ValueError("the public key must be base64")  # so that it cannot end the string literal
    return f"ALTER USER {quote_user(user)} SET {slot_property(slot)}='{public_key_b64}'"


def unset_statement(user: str, slot: int) -> str:
    """`ALTER USER "<user>" UNSET RSA_PUBLIC_KEY` (or RSA_PUBLIC_KEY_2): retires the key in that slot."""
    return f"ALTER USER {quote_user(user)} UNSET {slot_property(slot)}"


def other_slot(slot: int) -> int:
    return 2 if slot == 1 else 1


# --- state and rotation --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyState:
    """What the owned Secret holds. `next_pem` is set while a rotation waits for its statement to be run;
    `retired_slot` once a rotation switched keys (the slot whose old key may now be unset)."""

    active_pem: str
    slot: int = 1
    next_pem: str | None = None
    handled_rotate: str | None = None
    retired_slot: int | None = None

    @property
    def rotating(self) -> bool:
        return self.next_pem is not None

    def __repr__(self) -> str:  # never the keys
        return f"KeyState(slot={self.slot}, rotating={self.rotating}, retired_slot={self.retired_slot})"


def initial_state(rotate_value: str | None, generate: Callable[[], str] = generate_private_key) -> KeyState:
    """A fresh key in slot 1. A rotate-key value present at creation counts as handled: there is nothing to
    rotate yet."""
    return KeyState(active_pem=generate(), slot=1, handled_rotate=rotate_value)


def rotation_wanted(state: KeyState, rotate_value: str | None) -> bool:
    return bool(rotate_value) and rotate_value != state.handled_rotate


def start_rotation(state: KeyState, rotate_value: str, generate: Callable[[], str] = generate_private_key) -> KeyState:
    """A new rotate-key value: a new key for the other slot. While one is already pending, the pending key is kept
    (the user may have run its statement already) and only the value is recorded as handled."""
    if state.rotating:
        return replace(state, handled_rotate=rotate_value)
    return replace(state, next_pem=generate(), handled_rotate=rotate_value, retired_slot=None)


def complete_rotation(state: KeyState) -> KeyState:
    """The new key logged in: it becomes the active key; its old slot is to be unset."""
    if state.next_pem is None:
        return state
    return KeyState(
        active_pem=state.next_pem,
        slot=other_slot(state.slot),
        next_pem=None,
        handled_rotate=state.handled_rotate,
        retired_slot=state.slot,
    )


def status_fields(state: KeyState, user: str) -> dict[str, Any]:
    """The credential's status fields for `state`: public keys, fingerprints and statements, no private key."""
    public = public_key(state.active_pem)
    fields: dict[str, Any] = {
        "publicKey": public,
        "keyFingerprint": fingerprint(public),
        "keySlot": state.slot,
        "alterUserStatement": set_statement(user, public, state.slot),
    }
    rotation: dict[str, Any] | None = None
    if state.next_pem is not None:
        next_public = public_key(state.next_pem)
        next_slot = other_slot(state.slot)
        rotation = {
            "phase": PHASE_PENDING,
            "nextPublicKey": next_public,
            "nextKeyFingerprint": fingerprint(next_public),
            "nextKeySlot": next_slot,
            "statement": set_statement(user, next_public, next_slot),
            "message": f"run the statement so that {slot_property(next_slot)} holds the new key; syncs keep using "
            f"the current key until a login with the new one passes",
        }
    elif state.retired_slot is not None:
        rotation = {
            "phase": PHASE_COMPLETED,
            "statement": unset_statement(user, state.retired_slot),
            "message": f"the new key is in use; run the statement to retire the old key in "
            f"{slot_property(state.retired_slot)}",
        }
    if rotation is not None:
        rotation["requestedBy"] = state.handled_rotate
    fields["rotation"] = rotation
    fields["lastHandledRotateKey"] = state.handled_rotate
    return fields


# --- the Secret ----------------------------------------------------------------------------------------------------


def to_secret(state: KeyState) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """(stringData, annotations) for the Secret; None values delete the key in a merge patch."""
    data: dict[str, str | None] = {ACTIVE_KEY: state.active_pem, NEXT_KEY: state.next_pem}
    annotations: dict[str, str | None] = {
        SLOT_ANNOTATION: str(state.slot),
        RETIRED_SLOT_ANNOTATION: None if state.retired_slot is None else str(state.retired_slot),
        HANDLED_ROTATE_ANNOTATION: state.handled_rotate,
    }
    return data, annotations


def _slot(value: str | None, default: int | None) -> int | None:
    return int(value) if value in ("1", "2") else default


def from_secret(data: dict[str, str], annotations: dict[str, str]) -> KeyState | None:
    """The state in a Secret's decoded data and annotations; None when it holds no active key."""
    active = data.get(ACTIVE_KEY)
    if not active:
        return None
    return KeyState(
        active_pem=active,
        slot=_slot(annotations.get(SLOT_ANNOTATION), 1) or 1,
        next_pem=data.get(NEXT_KEY) or None,
        handled_rotate=annotations.get(HANDLED_ROTATE_ANNOTATION) or None,
        retired_slot=_slot(annotations.get(RETIRED_SLOT_ANNOTATION), None),
    )


# --- two credentials for one user ----------------------------------------------------------------------------------


def user_key(settings: SnowflakeSpec) -> tuple[str, str]:
    """(account, user) as Snowflake resolves them: the account case-insensitively, the user as quote_user does."""
    return settings.account.lower(), quote_user(settings.user)


def conflicting(name: str, spec: WarehouseCredentialSpec, others: list[dict[str, Any]]) -> list[str]:
    """Names of the other snowflake credentials in `others` (raw objects) for the same account and user: their
    ALTER USER statements would overwrite this credential's key slots (and the reverse). Sorted."""
    if not isinstance(spec.snowflake, SnowflakeSpec):
        return []
    mine = user_key(spec.snowflake)
    names = []
    for obj in others:
        meta = obj.get("metadata") or {}
        if meta.get("name") == name or meta.get("deletionTimestamp"):
            continue
        block = (obj.get("spec") or {}).get("snowflake") or {}
        if (obj.get("spec") or {}).get("type") != "snowflake" or not isinstance(block, dict):
            continue
        account, user = block.get("account"), block.get("user")
        if isinstance(account, str) and isinstance(user, str) and (account.lower(), quote_user(user)) == mine:
            names.append(str(meta.get("name")))
    return sorted(names)


def braze_workspaces(
    name: str, spec: WarehouseCredentialSpec, credentials: list[Any], integrations: list[Any]
) -> dict[str, list[str]]:
    """The Braze workspaces the namespace's integrations send to as `spec`'s Snowflake user (through credential
    `name` or another one for the same account and user), each with its integrations' names, sorted. A workspace is
    told by the REST endpoint and the API-key Secret an integration names (the operator never reads Secrets);
    an integration without spec.braze uses the runner's default settings."""
    if not isinstance(spec.snowflake, SnowflakeSpec):
        return {}
    same_user = {name, *conflicting(name, spec, credentials)}
    found: dict[str, list[str]] = {}
    for obj in integrations:
        meta, ispec = obj.get("metadata") or {}, obj.get("spec") or {}
        if meta.get("deletionTimestamp") or (ispec.get("credentialRef") or {}).get("name") not in same_user:
            continue
        braze = ispec.get("braze") or {}
        ref = braze.get("apiKeySecretRef") or {}
        endpoint = braze.get("restEndpoint") or "the runner's default endpoint"
        key = f"Secret {ref.get('name')}/{ref.get('key')}" if ref else "the runner's default API key"
        found.setdefault(f"{endpoint} with {key}", []).append(str(meta.get("name")))
    return {workspace: sorted(names) for workspace, names in sorted(found.items())}
