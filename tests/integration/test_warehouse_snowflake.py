"""The Snowflake adapter against a stand-in: fakesnow's HTTP server (DuckDB underneath, see snowflake_standin.py),
reached by the official snowflake-connector-python over HTTP on loopback, plus the shared contract table through
`cdi sync -f`.

What the stand-in does NOT cover compared with real Snowflake:

- Authentication. fakesnow accepts any login; the key gate in front of it (snowflake_keygate.py) checks a
  SNOWFLAKE_JWT login against the user's registered keys (both slots) as Snowflake does and refuses others with
  390144, so a wrong key and the two-slot rotation are real here. Password policies, MFA, OAuth, network policies
  and Snowflake's other refusals (390100, a role not granted: 390189) are only checked through the classifier.
- Roles and grants. There is no RBAC: PermissionDenied (003001 insufficient privileges) and "does not exist or
  not authorized" for objects the role cannot see cannot happen for real; nor can the network policies of a user.
- Warehouses. `warehouse` is only a name: the key gate answers queries of a session on a warehouse suspended with
  `ALTER WAREHOUSE … SUSPEND` with 000608 (WarehouseSuspended); 000606 "No active warehouse selected"
  (WarehouseMissing), resuming warehouses, query queueing and statement timeouts are classifier-only.
- Identifier case. DuckDB matches identifiers case-insensitively, so tables whose names differ only in case
  (`users` and `USERS`) cannot both exist; the exact-spelling preference is tested on the picker alone.
- Types. TIMESTAMP_LTZ is stored as TIMESTAMP_TZ; the real TIMESTAMP_TZ keeps each value's own offset, fakesnow
  keeps the instant. VARIANT comes back as compact JSON text where Snowflake pretty-prints it; nanosecond
  precision, the 16 MB VARIANT limit and the semi-structured edge cases (NaN, huge decimals) are not exercised.
- Result transport. fakesnow returns every result inline as one Arrow IPC block; Snowflake sends large results as
  many chunks downloaded from cloud storage (prefetched in parallel, with retries). The chunked path, its
  failures mid-stream and its memory footprint are not exercised.
- Errors' exact texts and numbers differ: fakesnow reports a missing database, schema or table as 002003 with
  DuckDB's wording and a missing column as 002043 (Snowflake: 000904 invalid identifier); the classifier accepts
  both, and the Snowflake forms are checked with constructed errors.
- TLS, OCSP checks, proxies, PrivateLink hostnames and the account-identifier forms (orgname-account, legacy
  locator with region) are not exercised: the stand-in is plain HTTP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import catalog_contract
import jwt
import pytest
from contract_rows import ROWS
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from snowflake.connector.auth.keypair import AuthByKeyPair
from snowflake.connector.cursor import SnowflakeCursor
from snowflake.connector.errors import DatabaseError, OperationalError, ProgrammingError
from snowflake_standin import ACCOUNT, ROLE, SECRET, USER, WAREHOUSE, SnowflakeStandIn, private_key_pem, running_standin
from sources import BRAZE_KEY, Source, integration_spec
from test_contract import assert_contract_delivered

import cdi_operator.warehouses.snowflake as sf
from cdi_operator.api.models import WarehouseCredentialSpec
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import check_integration
from cdi_operator.warehouses import FailureReason, ReadWindow, WarehouseError
from cdi_operator.warehouses import connect as connect_any
from cdi_operator.warehouses.base import Column
from cdi_operator.warehouses.sql import Table

T0 = datetime(2026, 3, 1, 12, 0, 0)  # naive UTC, as a TIMESTAMP_NTZ column holds it
COLUMNS = "UPDATED_AT TIMESTAMP_NTZ, EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR"


@pytest.fixture(scope="module")
def standin() -> Iterator[SnowflakeStandIn]:
    with running_standin() as server:
        yield server


@pytest.fixture(autouse=True)
def _endpoint(standin: SnowflakeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sf.ENDPOINT_ENV, standin.endpoint)


@pytest.fixture
def db(standin: SnowflakeStandIn) -> str:
    return standin.new_database()


@pytest.fixture
def warehouse(standin: SnowflakeStandIn) -> Iterator[sf.SnowflakeWarehouse]:
    wh = sf.connect(standin.spec(), standin.secrets())
    yield wh
    wh.close()


def ntz_rows(standin: SnowflakeStandIn, db: str, table: str, seconds: list[int]) -> None:
    standin.execute(f'CREATE TABLE "{db}"."PUBLIC".{table} ({COLUMNS})')
    standin.executemany(
        f'INSERT INTO "{db}"."PUBLIC".{table} VALUES (?, ?, ?)',
        [(("TIMESTAMP_NTZ", T0 + timedelta(seconds=s)), f"u-{s}", json.dumps({"n": s})) for s in seconds],
    )


def window(since: int | None, until: int) -> ReadWindow:
    start = None if since is None else (T0 + timedelta(seconds=since)).replace(tzinfo=UTC)
    return ReadWindow(since=start, until=(T0 + timedelta(seconds=until)).replace(tzinfo=UTC))


def read_all(wh: sf.SnowflakeWarehouse, table: list[str], w: ReadWindow, chunk: int = 500) -> list[list[Any]]:
    return [list(c) for c in wh.read_changes(table, ["UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"], "UPDATED_AT", w, chunk)]


# --- connection and key-pair authentication ---------------------------------------------------------------------


def test_registry_opens_snowflake(standin: SnowflakeStandIn, db: str) -> None:
    spec = WarehouseCredentialSpec.model_validate({"type": "snowflake", "snowflake": standin.spec().model_dump()})
    wh = connect_any(spec, standin.secrets())
    try:
        ntz_rows(standin, db, "USERS", [1])
        assert wh.describe([db, "PUBLIC", "USERS"]).column("updated_at") == Column("UPDATED_AT", "TIMESTAMP_NTZ")
    finally:
        wh.close()


def test_login_sends_a_jwt_signed_with_the_secrets_key(
    standin: SnowflakeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Snowflake would verify: SNOWFLAKE_JWT, no password, a JWT signed by the key, with the key's fingerprint."""
    sent: list[dict[str, Any]] = []
    original = AuthByKeyPair.update_body

    def spy(self: AuthByKeyPair, body: dict[Any, Any]) -> None:
        original(self, body)
        sent.append(dict(body["data"]))

    monkeypatch.setattr(AuthByKeyPair, "update_body", spy)
    sf.connect(standin.spec(), standin.secrets()).close()

    assert len(sent) == 1
    data = sent[0]
    assert data["AUTHENTICATOR"] == "SNOWFLAKE_JWT"
    assert "PASSWORD" not in data
    public = serialization.load_pem_private_key(private_key_pem().encode(), None).public_key()
    claims = jwt.decode(data["TOKEN"], public, algorithms=["RS256"])  # type: ignore[arg-type]
    digest = hashes.Hash(hashes.SHA256())
    digest.update(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    fingerprint = "SHA256:" + base64.b64encode(digest.finalize()).decode()
    qualified_user = f"{ACCOUNT.upper()}.{USER.upper()}"
    assert claims["sub"] == qualified_user
    assert claims["iss"] == f"{qualified_user}.{fingerprint}"
    assert data["LOGIN_NAME"] == USER and data["ACCOUNT_NAME"] == ACCOUNT


def test_a_key_snowflake_does_not_know_is_refused_until_its_alter_user_runs(standin: SnowflakeStandIn) -> None:
    """The gate of a key rotation: the new key in slot 2 is refused until its ALTER USER; the old key works all
    along, and stops once its slot is unset."""
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_pem = new.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    refused = _connect_failure(standin, new_pem)
    assert refused.reason is FailureReason.AUTH_FAILED and "ALTER USER" in refused.message, refused.message
    sf.connect(standin.spec(), standin.secrets()).close()  # the registered key still logs in

    standin.register_key(new_pem, slot=2)
    sf.connect(standin.spec(), standin.secrets(new_pem)).close()
    sf.connect(standin.spec(), standin.secrets()).close()

    standin.execute(f'ALTER USER "{USER}" UNSET RSA_PUBLIC_KEY')
    try:
        assert _connect_failure(standin, private_key_pem()).reason is FailureReason.AUTH_FAILED
        sf.connect(standin.spec(), standin.secrets(new_pem)).close()
    finally:
        standin.register_key(private_key_pem())
        standin.execute(f'ALTER USER "{USER}" UNSET RSA_PUBLIC_KEY_2')


def test_a_suspended_warehouse_without_auto_resume_says_both_fixes(standin: SnowflakeStandIn, db: str) -> None:
    ntz_rows(standin, db, "USERS", [1])
    credential = WarehouseCredentialSpec.model_validate({"type": "snowflake", "snowflake": standin.spec().model_dump()})
    integration = integration_spec({"database": db, "schema": "PUBLIC", "table": "USERS"})
    standin.execute(f"ALTER WAREHOUSE {WAREHOUSE} SUSPEND")
    try:
        outcome = check_integration(credential, standin.secrets(), integration)
    finally:
        standin.execute(f"ALTER WAREHOUSE {WAREHOUSE} RESUME")
    assert (outcome.result, outcome.reason) == ("Failed", FailureReason.WAREHOUSE_SUSPENDED.value), outcome.message
    assert "SET AUTO_RESUME = TRUE" in outcome.message and f"GRANT OPERATE ON WAREHOUSE {WAREHOUSE}" in outcome.message
    assert "does not exist" not in outcome.message
    assert check_integration(credential, standin.secrets(), integration).passed, "resumed, it works again"


def _connect_failure(standin: SnowflakeStandIn, pem: str) -> WarehouseError:
    with pytest.raises(WarehouseError) as info:
        sf.connect(standin.spec(), standin.secrets(pem))
    return info.value


def _other_pems() -> dict[str, str]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    return {
        "encrypted": rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ).decode(),
        "ec": ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("garbage", "does not hold a PEM private key"),
        ("truncated", "does not hold a PEM private key"),
        ("encrypted", "is encrypted"),
        ("ec", "needs an RSA key"),
    ],
)
def test_unusable_keys_are_auth_failures_without_the_key(standin: SnowflakeStandIn, case: str, fragment: str) -> None:
    pems = {"garbage": "not a key", "truncated": private_key_pem()[:400], **_other_pems()}
    with pytest.raises(WarehouseError) as caught:
        sf.connect(standin.spec(), standin.secrets(pems[case]))
    assert caught.value.reason is FailureReason.AUTH_FAILED
    assert fragment in caught.value.message
    assert f"Secret {SECRET[0]!r} key {SECRET[1]!r}" in caught.value.message
    body = "".join(pems[case].splitlines()[1:3])
    assert not body or body not in str(caught.value)


def test_pkcs1_and_escaped_newline_pems_are_accepted(standin: SnowflakeStandIn) -> None:
    key = serialization.load_pem_private_key(private_key_pem().encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pkcs1 = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    for pem in (pkcs1, private_key_pem().replace("\n", "\\n")):
        sf.connect(standin.spec(), standin.secrets(pem)).close()


def test_credential_without_key_ref_says_what_to_do(standin: SnowflakeStandIn) -> None:
    with pytest.raises(WarehouseError) as caught:
        sf.connect(standin.spec(privateKeySecretRef=None), {})
    assert caught.value.reason is FailureReason.AUTH_FAILED
    assert "privateKeySecretRef" in caught.value.message


def test_unreachable(standin: SnowflakeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv(sf.ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(sf, "LOGIN_TIMEOUT_SECONDS", 3)
    with pytest.raises(WarehouseError) as caught:
        sf.connect(standin.spec(), standin.secrets())
    assert caught.value.reason is FailureReason.UNREACHABLE
    assert "spec.snowflake.account" in caught.value.message
    assert "PRIVATE KEY" not in str(caught.value)


# --- describe, names and quoting ---------------------------------------------------------------------------------


def test_describe_resolves_case_of_a_reserved_mixed_case_table(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse
) -> None:
    standin.execute(
        f'CREATE TABLE "{db}"."PUBLIC"."Order" ("UPDATED_AT" TIMESTAMP_NTZ, "External_Id" VARCHAR, '
        f'"select" VARCHAR, PAYLOAD VARIANT)'
    )
    standin.execute(
        f'INSERT INTO "{db}"."PUBLIC"."Order" SELECT ?, ?, ?, PARSE_JSON(?)',
        [("TIMESTAMP_NTZ", T0), "u-1", "x", '{"a": 1}'],
    )

    description = warehouse.describe([db.lower(), "public", "ORDER"])

    assert description.name == f"{db}.PUBLIC.Order"
    assert [c.name for c in description.columns] == ["UPDATED_AT", "External_Id", "select", "PAYLOAD"]
    assert description.column("PAYLOAD") == Column("PAYLOAD", "VARIANT")
    rows = read_all_columns(warehouse, [db.lower(), "public", "ORDER"], ["UPDATED_AT", "EXTERNAL_ID", "SELECT"])
    assert rows == [(T0.replace(tzinfo=UTC), "u-1", "x")]


def read_all_columns(wh: sf.SnowflakeWarehouse, table: list[str], columns: list[str]) -> list[tuple[Any, ...]]:
    return [r for c in wh.read_changes(table, columns, "UPDATED_AT", window(None, 10**6), 100) for r in c]


def test_quote_ident_doubles_quotes() -> None:
    assert sf.quote_ident('we"ird') == '"we""ird"'
    assert sf.quote_ident("Order") == '"Order"'


def test_pick_prefers_the_exact_spelling_then_the_upper_cased_one() -> None:
    rows = [("PUBLIC", "users", "A", "TEXT"), ("PUBLIC", "USERS", "B", "TEXT"), ("PUBLIC", "Users", "C", "TEXT")]
    assert sf._pick(rows, "PUBLIC", "Users") == (("PUBLIC", "Users"), (Column("C", "TEXT"),))
    assert sf._pick(rows, "public", "users") == (("PUBLIC", "USERS"), (Column("B", "TEXT"),))
    with pytest.raises(WarehouseError) as caught:
        sf._pick([r for r in rows if r[1] != "USERS"], "PUBLIC", "USERS")
    assert caught.value.reason is FailureReason.TABLE_MISSING and "differ only in case" in caught.value.message


# --- reading ---------------------------------------------------------------------------------------------------


def test_window_is_inclusive_ordered_and_chunked(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    ntz_rows(standin, db, "EVENTS", [7, 3, 5, 1, 4, 2, 6, 0])
    executed: list[tuple[str, Any]] = []

    original = SnowflakeCursor.execute

    def spy(self: SnowflakeCursor, command: str, params: Any = None, **kwargs: Any) -> Any:
        executed.append((command, params))
        return original(self, command, params, **kwargs)

    monkeypatch.setattr(SnowflakeCursor, "execute", spy)
    chunks = read_all(warehouse, [db, "PUBLIC", "EVENTS"], window(2, 5), chunk=3)

    assert [len(c) for c in chunks] == [3, 1]
    rows = [r for c in chunks for r in c]
    assert [r[1] for r in rows] == ["u-2", "u-3", "u-4", "u-5"]
    assert all(r[0].tzinfo is UTC for r in rows)
    assert rows[0][0] == datetime(2026, 3, 1, 12, 0, 2, tzinfo=UTC)
    select = next((sql, p) for sql, p in executed if sql.startswith("SELECT") and "WHERE" in sql)
    assert "2026" not in select[0], "the window bounds are bound parameters"
    assert select[1] == [("TIMESTAMP_NTZ", T0 + timedelta(seconds=2)), ("TIMESTAMP_NTZ", T0 + timedelta(seconds=5))]

    everything = read_all(warehouse, [db, "PUBLIC", "EVENTS"], window(None, 6), chunk=100)
    assert [r[1] for c in everything for r in c] == [f"u-{s}" for s in range(7)]
    assert read_all(warehouse, [db, "PUBLIC", "EVENTS"], window(100, 200)) == []
    assert (
        warehouse.count_after([db, "PUBLIC", "EVENTS"], "updated_at", (T0 + timedelta(seconds=5)).replace(tzinfo=UTC))
        == 2
    )


@pytest.mark.parametrize("type_name", ["TIMESTAMP_TZ", "TIMESTAMP_LTZ"])
def test_zoned_timestamps_arrive_as_aware_utc(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse, type_name: str
) -> None:
    standin.execute(f'CREATE TABLE "{db}"."PUBLIC"."Z" (UPDATED_AT {type_name}, EXTERNAL_ID VARCHAR, PAYLOAD VARCHAR)')
    plus2 = timezone(timedelta(hours=2))
    values = [datetime(2026, 3, 1, 14, 0, s, tzinfo=plus2) for s in range(4)]  # 12:00:0s UTC
    standin.executemany(
        f'INSERT INTO "{db}"."PUBLIC"."Z" VALUES (?, ?, ?)',
        [(("TIMESTAMP_TZ", v), f"u-{i}", "{}") for i, v in enumerate(values)],
    )

    rows = [r for c in read_all(warehouse, [db, "PUBLIC", "Z"], window(1, 2)) for r in c]

    assert [r[1] for r in rows] == ["u-1", "u-2"]
    assert rows[0][0] == datetime(2026, 3, 1, 12, 0, 1, tzinfo=UTC) and rows[0][0].tzinfo is UTC
    assert warehouse.count_after([db, "PUBLIC", "Z"], "UPDATED_AT", datetime(2026, 3, 1, 12, 0, 2, tzinfo=UTC)) == 1


def test_date_updated_at_is_read_as_utc_midnight(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse
) -> None:
    standin.execute(f'CREATE TABLE "{db}"."PUBLIC"."D" (UPDATED_AT DATE, EXTERNAL_ID VARCHAR)')
    standin.execute(f'INSERT INTO "{db}"."PUBLIC"."D" VALUES (\'2026-03-01\', \'u-1\')')
    rows = read_all_columns(warehouse, [db, "PUBLIC", "D"], ["UPDATED_AT", "EXTERNAL_ID"])
    assert rows == [(datetime(2026, 3, 1, tzinfo=UTC), "u-1")]


def test_varchar_and_variant_payloads_arrive_as_json_text(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse
) -> None:
    payload = {"name": "Zoë 東京 🎉", "nested": {"list": [1, 2.5, None, True]}, "n": 10**12}
    standin.execute(
        f'CREATE TABLE "{db}"."PUBLIC"."P" (UPDATED_AT TIMESTAMP_NTZ, EXTERNAL_ID VARCHAR, '
        f"PAYLOAD_TEXT VARCHAR, PAYLOAD VARIANT)"
    )
    standin.execute(
        f'INSERT INTO "{db}"."PUBLIC"."P" SELECT ?, ?, ?, PARSE_JSON(?)',
        [("TIMESTAMP_NTZ", T0), "u-1", json.dumps(payload), json.dumps(payload)],
    )

    (row,) = read_all_columns(warehouse, [db, "PUBLIC", "P"], ["UPDATED_AT", "PAYLOAD_TEXT", "PAYLOAD"])

    assert isinstance(row[1], str) and isinstance(row[2], str)
    assert json.loads(row[1]) == payload
    assert json.loads(row[2]) == payload


def test_preview_is_bounded_and_newest_first(
    standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse
) -> None:
    ntz_rows(standin, db, "MANY", list(range(50)))
    preview = warehouse.preview([db, "PUBLIC", "MANY"], ["UPDATED_AT", "EXTERNAL_ID"], 3)
    assert [p["EXTERNAL_ID"] for p in preview] == ["u-49", "u-48", "u-47"]
    assert preview[0]["UPDATED_AT"] == (T0 + timedelta(seconds=49)).replace(tzinfo=UTC)


# --- connection-test verdicts the stand-in can express ------------------------------------------------------------


def _verdict(call: Any) -> WarehouseError:
    with pytest.raises(WarehouseError) as caught:
        call()
    return caught.value


def test_database_missing(warehouse: sf.SnowflakeWarehouse) -> None:
    error = _verdict(lambda: warehouse.describe(["NO_SUCH_DB", "PUBLIC", "USERS"]))
    assert error.reason is FailureReason.DATABASE_MISSING
    assert "GRANT USAGE ON DATABASE NO_SUCH_DB TO ROLE CDI_READER" in error.message


@pytest.mark.parametrize("schema", ["PUBLIC", "NO_SUCH_SCHEMA"])
def test_table_or_schema_missing(db: str, warehouse: sf.SnowflakeWarehouse, schema: str) -> None:
    error = _verdict(lambda: warehouse.describe([db, schema, "NO_SUCH_TABLE"]))
    assert error.reason is FailureReason.TABLE_MISSING
    assert "check spec.source" in error.message and "GRANT SELECT ON" in error.message


def test_updated_at_missing_or_mistyped(standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse) -> None:
    standin.execute(f'CREATE TABLE "{db}"."PUBLIC"."NOUA" (EXTERNAL_ID VARCHAR, CHANGED VARCHAR)')
    table = [db, "PUBLIC", "NOUA"]
    assert [c.name for c in warehouse.describe(table).columns] == ["EXTERNAL_ID", "CHANGED"]
    error = _verdict(lambda: list(warehouse.read_changes(table, ["EXTERNAL_ID"], "UPDATED_AT", window(0, 1), 10)))
    assert error.reason is FailureReason.COLUMN_MISSING and "add an UPDATED_AT column" in error.message
    error = _verdict(lambda: warehouse.count_after(table, "CHANGED", T0.replace(tzinfo=UTC)))
    assert error.reason is FailureReason.COLUMN_TYPE


def test_selected_column_missing(standin: SnowflakeStandIn, db: str, warehouse: sf.SnowflakeWarehouse) -> None:
    ntz_rows(standin, db, "EVENTS", [1])
    table = [db, "PUBLIC", "EVENTS"]
    warehouse.describe(table)
    standin.execute(f'ALTER TABLE "{db}"."PUBLIC"."EVENTS" DROP COLUMN PAYLOAD')  # gone after describe
    error = _verdict(
        lambda: list(warehouse.read_changes(table, ["UPDATED_AT", "PAYLOAD"], "UPDATED_AT", window(0, 9), 10))
    )
    assert error.reason is FailureReason.COLUMN_MISSING


# --- verdicts only real Snowflake can produce: its error objects, classified ----------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "fragment"),
    [
        (DatabaseError("JWT token is invalid. [a1b2]", errno=390144, sqlstate="08001"), "AUTH_FAILED", "ALTER USER"),
        (DatabaseError("Incorrect username or password was specified.", errno=390100), "AUTH_FAILED", "RSA_PUBLIC"),
        (
            DatabaseError(
                "Role 'CDI_READER' specified in the connect string is not granted to this user.", errno=390189
            ),
            "PERMISSION_DENIED",
            "GRANT ROLE CDI_READER TO USER CDI_RUNNER",
        ),
        (
            ProgrammingError("No active warehouse selected in the current session.", errno=606, sqlstate="57P03"),
            "WAREHOUSE_MISSING",
            "GRANT USAGE ON WAREHOUSE CDI_WH TO ROLE CDI_READER",
        ),
        (
            ProgrammingError(
                "SQL compilation error:\nDatabase 'ANALYTICS' does not exist or not authorized.", errno=2003
            ),
            "DATABASE_MISSING",
            "spec.source.database",
        ),
        (
            ProgrammingError("SQL compilation error:\nObject 'A.B.C' does not exist or not authorized.", errno=2003),
            "TABLE_MISSING",
            "GRANT SELECT ON",
        ),
        (
            ProgrammingError("Warehouse 'CDI_WH' does not exist or not authorized.", errno=2043, sqlstate="02000"),
            "WAREHOUSE_MISSING",
            "spec.snowflake.warehouse",
        ),
        (
            ProgrammingError(
                "SQL compilation error:\nObject 'A.B.WAREHOUSE_JWT' does not exist or not authorized.", errno=2003
            ),
            "TABLE_MISSING",
            "check spec.source",
        ),
        (
            ProgrammingError("Insufficient privileges to operate on table 'USERS'", errno=3001, sqlstate="42501"),
            "PERMISSION_DENIED",
            "GRANT SELECT ON",
        ),
        (
            ProgrammingError(
                "SQL compilation error: error line 1 at position 7\ninvalid identifier '\"X\"'", errno=904
            ),
            "COLUMN_MISSING",
            "column",
        ),
        (
            OperationalError("Could not connect to Snowflake backend after 2 attempt(s).Aborting", errno=250001),
            "UNREACHABLE",
            "spec.snowflake.account",
        ),
    ],
)
def test_snowflake_errors_are_classified(
    standin: SnowflakeStandIn, error: Exception, reason: str, fragment: str
) -> None:
    table = Table(("A", "B", "C"))
    verdict = sf._failure(error, standin.spec(), table)
    assert verdict.reason is FailureReason[reason]
    assert fragment in verdict.message


# --- the contract -----------------------------------------------------------------------------------------------


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


@pytest.fixture
def snowflake_source(standin: SnowflakeStandIn, db: str) -> Source:
    return source_in(standin, db)


def source_in(standin: SnowflakeStandIn, db: str) -> Source:
    """The Source of database `db` of the stand-in, as the contract tests sync it."""
    settings = {
        "account": ACCOUNT,
        "user": USER,
        "role": ROLE,
        "warehouse": WAREHOUSE,
        "private_key": json.dumps(private_key_pem()),
        "port": standin.port,
        "database": db,
        "schema": "PUBLIC",
    }
    return Source("snowflake", settings)


def create_in_snowflake(source: Source) -> None:
    """The contract table with Snowflake's own types: TIMESTAMP_TZ and PAYLOAD as VARIANT."""
    source.execute(
        "CREATE TABLE contract (UPDATED_AT TIMESTAMP_TZ, EXTERNAL_ID VARCHAR, ALIAS_NAME VARCHAR, "
        "ALIAS_LABEL VARCHAR, BRAZE_ID VARCHAR, EMAIL VARCHAR, PHONE VARCHAR, PAYLOAD VARIANT)"
    )
    for row in ROWS:
        source.execute(
            "INSERT INTO contract SELECT ?, ?, ?, ?, ?, ?, ?, PARSE_JSON(?)",
            [("TIMESTAMP_TZ", row[0]) if row[0] else None, *row[1:-1], json.dumps(row[-1], ensure_ascii=False)],
        )


def test_snowflake(snowflake_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_in_snowflake(snowflake_source)
    assert_contract_delivered(snowflake_source, braze, tmp_path)


def create_catalog_in_snowflake(source: Source) -> None:
    """The catalog contract table (catalog_contract.py) with PAYLOAD as VARIANT."""
    source.execute(
        f"CREATE TABLE {catalog_contract.TABLE} (UPDATED_AT TIMESTAMP_TZ, ID VARCHAR, PAYLOAD VARIANT, DELETED BOOLEAN)"
    )
    for updated_at, item_id, payload, deleted in catalog_contract.text_rows():
        source.execute(
            f"INSERT INTO {catalog_contract.TABLE} SELECT ?, ?, PARSE_JSON(?), ?",
            [("TIMESTAMP_TZ", updated_at) if updated_at else None, item_id, payload, deleted],
        )


def test_snowflake_catalog(snowflake_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    create_catalog_in_snowflake(snowflake_source)
    catalog_contract.assert_catalog_delivered(snowflake_source, braze, tmp_path)
