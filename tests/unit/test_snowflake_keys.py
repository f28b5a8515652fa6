"""The operator's Snowflake key pairs: formats, statements, fingerprints, the rotation as plain data."""

from __future__ import annotations

import base64
import hashlib
from functools import cache

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cdi_operator.api import snowflake_key
from cdi_operator.api.models import WarehouseCredentialSpec, WarehouseCredentialStatus
from cdi_operator.controller import snowflake_keys as sk


@cache
def keys() -> tuple[str, str]:
    return sk.generate_private_key(), sk.generate_private_key()


def spec(**snowflake: object) -> WarehouseCredentialSpec:
    block = {"account": "myorg-acct", "user": "CDI_RUNNER", "role": "R", "warehouse": "W", **snowflake}
    return WarehouseCredentialSpec.model_validate({"type": "snowflake", "snowflake": block})


def test_private_key_is_unencrypted_pkcs8_rsa_2048() -> None:
    pem = keys()[0]
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "BEGIN RSA PRIVATE KEY"
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048


def test_public_key_is_the_der_body_and_matches_the_private_key() -> None:
    pem = keys()[0]
    public = sk.public_key(pem)
    assert "\n" not in public and "BEGIN" not in public
    loaded = serialization.load_der_public_key(base64.b64decode(public))
    private = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(loaded, rsa.RSAPublicKey) and isinstance(private, rsa.RSAPrivateKey)
    assert loaded.public_numbers() == private.public_key().public_numbers()
    # The same as `openssl rsa -pubout` without the PEM armour.
    pem_public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert "".join(pem_public.decode().splitlines()[1:-1]) == public


def test_fingerprint_as_desc_user_shows_it() -> None:
    public = sk.public_key(keys()[0])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(base64.b64decode(public)).digest()).decode()
    assert sk.fingerprint(public) == expected
    assert len(sk.fingerprint(public)) == len("SHA256:") + 44


@pytest.mark.parametrize(
    ("user", "quoted"),
    [
        ("CDI_RUNNER", '"CDI_RUNNER"'),
        ("cdi_runner", '"CDI_RUNNER"'),  # unquoted names are stored in upper case
        ("svc$1", '"SVC$1"'),
        ("cdi-runner", '"cdi-runner"'),  # only creatable quoted: keeps its case
        ("1user", '"1user"'),
        ('we"ird', '"we""ird"'),
    ],
)
def test_user_quoted_by_snowflake_rules(user: str, quoted: str) -> None:
    assert sk.quote_user(user) == quoted


def test_statements() -> None:
    public = sk.public_key(keys()[0])
    assert sk.set_statement("cdi_runner", public) == f"ALTER USER \"CDI_RUNNER\" SET RSA_PUBLIC_KEY='{public}'"
    assert sk.set_statement("U", public, 2) == f"ALTER USER \"U\" SET RSA_PUBLIC_KEY_2='{public}'"
    assert sk.unset_statement("U", 1) == 'ALTER USER "U" UNSET RSA_PUBLIC_KEY'
    assert sk.unset_statement("U", 2) == 'ALTER USER "U" UNSET RSA_PUBLIC_KEY_2'
    with pytest.raises(ValueError, match="base64"):
        sk.set_statement("U", "abc'; DROP USER x; --")
    with pytest.raises(ValueError, match="slots"):
        sk.unset_statement("U", 3)


def generator(*pems: str):  # type: ignore[no-untyped-def]
    it = iter(pems)
    return lambda: next(it)


def test_rotation_moves_through_both_slots_and_status_has_no_private_key() -> None:
    old, new = keys()
    state = sk.initial_state("created-with-this", generator(old))
    assert state == sk.KeyState(active_pem=old, slot=1, handled_rotate="created-with-this")
    assert not sk.rotation_wanted(state, "created-with-this")
    assert not sk.rotation_wanted(state, None)
    fields = sk.status_fields(state, "cdi_runner")
    assert fields["rotation"] is None
    assert fields["alterUserStatement"] == sk.set_statement("cdi_runner", sk.public_key(old), 1)

    assert sk.rotation_wanted(state, "r1")
    pending = sk.start_rotation(state, "r1", generator(new))
    assert pending.active_pem == old and pending.next_pem == new and pending.rotating  # syncs keep the old key
    fields = sk.status_fields(pending, "cdi_runner")
    assert fields["publicKey"] == sk.public_key(old)
    assert fields["rotation"]["phase"] == sk.PHASE_PENDING
    assert fields["rotation"]["requestedBy"] == "r1"
    assert fields["rotation"]["statement"] == f"ALTER USER \"CDI_RUNNER\" SET RSA_PUBLIC_KEY_2='{sk.public_key(new)}'"
    assert fields["rotation"]["nextKeyFingerprint"] == sk.fingerprint(sk.public_key(new))

    # Another value while pending keeps the pending key (its statement may have been run already).
    again = sk.start_rotation(pending, "r2", generator())
    assert again.next_pem == new and again.handled_rotate == "r2"

    done = sk.complete_rotation(pending)
    assert (done.active_pem, done.slot, done.next_pem, done.retired_slot) == (new, 2, None, 1)
    fields = sk.status_fields(done, "cdi_runner")
    assert fields["publicKey"] == sk.public_key(new)
    assert fields["alterUserStatement"] == f"ALTER USER \"CDI_RUNNER\" SET RSA_PUBLIC_KEY_2='{sk.public_key(new)}'"
    assert fields["rotation"]["phase"] == sk.PHASE_COMPLETED
    assert fields["rotation"]["statement"] == 'ALTER USER "CDI_RUNNER" UNSET RSA_PUBLIC_KEY'
    assert sk.complete_rotation(done) == done

    # The next rotation uses the slot just freed.
    third = sk.start_rotation(done, "r3", generator(old))
    assert sk.status_fields(third, "U")["rotation"]["statement"].startswith('ALTER USER "U" SET RSA_PUBLIC_KEY=')
    assert sk.complete_rotation(third).retired_slot == 2

    for st in (state, pending, done, third):
        status = sk.status_fields(st, "cdi_runner")
        text = repr(status) + repr(st)
        assert "PRIVATE KEY" not in text
        WarehouseCredentialStatus.model_validate(status)  # fits the CRD's status schema


def test_secret_round_trip() -> None:
    old, new = keys()
    pending = sk.KeyState(active_pem=old, slot=2, next_pem=new, handled_rotate="x", retired_slot=None)
    data, annotations = sk.to_secret(pending)
    assert data == {"private-key": old, "private-key-next": new}
    present = {k: v for k, v in annotations.items() if v is not None}
    assert sk.from_secret({k: v for k, v in data.items() if v}, present) == pending
    done = sk.complete_rotation(pending)
    data, annotations = sk.to_secret(done)
    assert data["private-key-next"] is None  # deleted by the merge patch
    assert sk.from_secret({"private-key": new}, {k: v for k, v in annotations.items() if v}) == done
    assert sk.from_secret({}, {}) is None


def test_resolved_spec_points_at_the_owned_secret_only_without_own_key() -> None:
    resolved = snowflake_key.resolved_spec(spec(), "wh")
    assert resolved.snowflake is not None and resolved.snowflake.private_key_secret_ref is not None
    ref = resolved.snowflake.private_key_secret_ref
    assert (ref.name, ref.key) == ("wh-snowflake-key", "private-key")
    assert resolved.secret_refs() == [ref]
    own = spec(privateKeySecretRef={"name": "mine", "key": "k"})
    assert snowflake_key.resolved_spec(own, "wh") is own and not snowflake_key.managed(own)


def test_conflicting_credentials() -> None:
    def obj(name: str, account: str, user: str, type_: str = "snowflake") -> dict[str, object]:
        return {"metadata": {"name": name}, "spec": {"type": type_, "snowflake": {"account": account, "user": user}}}

    others = [
        obj("me", "myorg-acct", "CDI_RUNNER"),
        obj("b", "MYORG-ACCT", "cdi_runner"),
        obj("a", "myorg-acct", "CDI_RUNNER"),
        obj("c", "myorg-acct", "OTHER"),
        obj("d", "other-acct", "CDI_RUNNER"),
        {"metadata": {"name": "e"}, "spec": {"type": "redshift", "redshift": {}}},
    ]
    assert sk.conflicting("me", spec(), others) == ["a", "b"]
