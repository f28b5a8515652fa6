"""Snowflake through the official `snowflake-connector-python`, with key-pair (JWT) authentication only.

The private key is the PEM the operator generated and keeps in a Secret (or one a user brings for `cdi sync -f`);
it is parsed here, handed to the connector as PKCS#8 DER bytes and never appears in a message. The connection
carries no default database: every table is named `"DATABASE"."SCHEMA"."TABLE"`, each part quoted by Snowflake's
rules after its real spelling has been resolved. Snowflake upper-cases unquoted names, so `analytics/public/users`
in a manifest finds `ANALYTICS.PUBLIC.USERS`; the database through `SHOW DATABASES LIKE`, the schema and table
through the database's INFORMATION_SCHEMA, each case-insensitively with an exact spelling preferred.

Window bounds are bound parameters (qmark style, sent to the server with their Snowflake type): TIMESTAMP_NTZ for
a zone-less UPDATED_AT (compared as stored, so clustering still prunes), TIMESTAMP_TZ otherwise. TIMESTAMP_NTZ and
DATE values are taken as UTC, as Braze advises for CDI source tables; TIMESTAMP_TZ and TIMESTAMP_LTZ are converted
to UTC. The session zone is UTC.

Rows are streamed with `fetchmany`: the connector downloads the result in chunks (prefetching a few in parallel)
and decodes each Arrow chunk to Python tuples in its C extension. Measured against the stand-in this is faster
than `fetch_arrow_batches()` followed by `to_pylist()` (see benchmarks/bench_read_snowflake.py), and it needs
neither pyarrow nor pandas. Memory stays bounded by the chunks the connector holds, whatever the table's size.

`CDI_SNOWFLAKE_ENDPOINT` (e.g. `http://127.0.0.1:8080`) sends the connection to another server than
`<account>.snowflakecomputing.com`: it exists for the test stand-in and is never set in production.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import snowflake.connector
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from snowflake.connector import SnowflakeConnection
from snowflake.connector.constants import FIELD_ID_TO_NAME
from snowflake.connector.cursor import SnowflakeCursor
from snowflake.connector.errors import Error as DriverError
from snowflake.connector.errors import InterfaceError, OperationalError

from cdi_operator.api.models import SecretKeyRef, SnowflakeSpec
from cdi_operator.warehouses import secret_value
from cdi_operator.warehouses.base import Column, FailureReason, WarehouseError, pick_table
from cdi_operator.warehouses.sql import (
    AWARE,
    NAIVE,
    Dialect,
    Select,
    SqlWarehouse,
    Table,
    bind_by_zone,
    double_quoted,
    failure,
    utc_at,
)

ENDPOINT_ENV = "CDI_SNOWFLAKE_ENDPOINT"
# How long the connector keeps retrying the login before it reports the account unreachable.
LOGIN_TIMEOUT_SECONDS = 30
QUERY_TAG = "cdi-operator"

_AWARE_TYPES = frozenset({"TIMESTAMP_TZ", "TIMESTAMP_LTZ"})
_NAIVE_TYPES = frozenset({"TIMESTAMP_NTZ", "TIMESTAMP", "DATETIME", "DATE"})

_COLUMNS_SQL = """
SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, DATA_TYPE
FROM {database}.INFORMATION_SCHEMA.COLUMNS
WHERE UPPER(TABLE_SCHEMA) = UPPER(?) AND UPPER(TABLE_NAME) = UPPER(?)
ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION
"""

# Error numbers of the connector and of Snowflake (https://docs.snowflake.com/en/user-guide/... and the
# connector's errorcode.py); the messages are matched too where one number covers several cases.
_AUTH_ERRNOS = frozenset({390100, 390101, 390102, 390103, 390104, 390144, 390145, 390318, 394300, 251008})
_ROLE_ERRNOS = frozenset({390186, 390189})
_NO_WAREHOUSE = 606
_WAREHOUSE_SUSPENDED = 608
_DOES_NOT_EXIST = 2003
_OBJECT_MISSING = 2043
_INVALID_IDENTIFIER = 904
_INSUFFICIENT_PRIVILEGES = 3001
_WAREHOUSE_MISSING = re.compile(r"^warehouse '[^']*' does not exist")
_FORMATTED_PREFIX = re.compile(r"^\d{6}(?: \([0-9A-Za-z]{5}\))?: ")


def connect(settings: SnowflakeSpec, secrets: Mapping[tuple[str, str], str]) -> SnowflakeWarehouse:
    """Open a session with key-pair authentication; raises WarehouseError with the reason and what to do."""
    ref = settings.private_key_secret_ref
    if ref is None:
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            "spec.snowflake.privateKeySecretRef is not set yet: the operator sets it once it has generated the key "
            "pair (run the ALTER USER statement from the credential's status); for `cdi sync -f`, point it at a "
            "Secret holding your unencrypted PKCS#8 private key PEM",
        )
    private_key = load_private_key(secret_value(secrets, ref), ref)
    kwargs: dict[str, Any] = {
        "account": settings.account,
        "user": settings.user,
        "role": settings.role,
        "warehouse": settings.warehouse,
        "authenticator": "SNOWFLAKE_JWT",
        "private_key": private_key,
        "paramstyle": "qmark",
        "login_timeout": LOGIN_TIMEOUT_SECONDS,
        "client_session_keep_alive": False,
        # The connector otherwise probes cloud metadata endpoints (AWS, GCP, Azure) at every login for its
        # telemetry; where DNS for them is slow this stalls each login for seconds.
        "platform_detection_timeout_seconds": 0.0,
        "session_parameters": {
            "TIMEZONE": "UTC",
            "QUERY_TAG": QUERY_TAG,
            "CLIENT_OUT_OF_BAND_TELEMETRY_ENABLED": False,
        },
    }
    kwargs.update(_endpoint_override())
    try:
        conn = snowflake.connector.connect(**kwargs)
    except (DriverError, OSError) as exc:
        raise _failure(exc, settings) from None
    return SnowflakeWarehouse(conn, settings)


def load_private_key(pem: str, ref: SecretKeyRef) -> bytes:
    """The PEM's RSA private key as unencrypted PKCS#8 DER, which the connector takes as `private_key`."""
    text = pem.strip()
    if "\n" not in text and "\\n" in text:  # pasted with escaped newlines
        text = text.replace("\\n", "\n")
    where = f"Secret {ref.name!r} key {ref.key!r}"
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except TypeError:
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"the private key in {where} is encrypted; store it unencrypted as PKCS#8 PEM "
            f"(openssl pkcs8 -topk8 -nocrypt -in key.p8) — the Secret itself is what protects it",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{where} does not hold a PEM private key ('-----BEGIN PRIVATE KEY-----' …); let the operator "
            f"generate a new one with `kubectl annotate whc <name> cdi.ingest.dev/rotate-key=$(date +%s) "
            f"--overwrite`, or store your own unencrypted RSA key",
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{where} holds a key that is not RSA; Snowflake key-pair authentication needs an RSA key of 2048 "
            f"bits or more",
        )
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _endpoint_override() -> dict[str, Any]:
    value = os.environ.get(ENDPOINT_ENV, "").strip()
    if not value:
        return {}
    url = urlsplit(value if "://" in value else f"https://{value}")
    if not url.hostname:
        raise WarehouseError(
            FailureReason.UNREACHABLE, f"{ENDPOINT_ENV}={value!r} is not a URL such as http://host:port"
        )
    protocol = url.scheme or "https"
    return {"host": url.hostname, "port": url.port or (443 if protocol == "https" else 80), "protocol": protocol}


quote_ident = double_quoted


def _string_literal(value: str) -> str:
    """A Snowflake string literal (backslash is an escape character in Snowflake literals)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _timestamp_kind(type_name: str) -> str | None:
    base = type_name.upper().split("(", 1)[0].strip()
    return AWARE if base in _AWARE_TYPES else NAIVE if base in _NAIVE_TYPES else None


def _bind(name: str, kind: str, value: datetime) -> tuple[str, datetime]:
    """A window bound with its Snowflake type, so the server compares it with the column as stored."""
    return ("TIMESTAMP_NTZ" if kind == NAIVE else "TIMESTAMP_TZ", bind_by_zone(name, kind, value))


DIALECT = Dialect(
    quote=quote_ident,
    placeholder="?",
    bind=_bind,
    timestamp_kind=_timestamp_kind,
    updated_at_types="TIMESTAMP_NTZ (UTC), TIMESTAMP_TZ or TIMESTAMP_LTZ",
    missing_hint=" (TIMESTAMP_NTZ in UTC, or TIMESTAMP_TZ / TIMESTAMP_LTZ)",
)


class SnowflakeWarehouse(SqlWarehouse):
    dialect = DIALECT

    def __init__(self, conn: SnowflakeConnection, settings: SnowflakeSpec) -> None:
        super().__init__()
        self._conn = conn
        self._settings = settings

    def close(self) -> None:
        with contextlib.suppress(DriverError, OSError):  # a broken session has nothing left to save
            self._conn.close()

    # --- the adapter's own part -------------------------------------------------------------------------------

    def _resolve(self, table: Sequence[str]) -> Table:
        parts = list(table)
        if len(parts) != 3:
            raise WarehouseError(
                FailureReason.TABLE_MISSING,
                f"name the Snowflake table as database/schema/table in spec.source, not {'.'.join(parts)!r}",
            )
        database = self._database(parts[0])
        schema, name = parts[1], parts[2]
        rows = self._run(None, _COLUMNS_SQL.format(database=quote_ident(database)), [schema, name])
        found = _pick(rows, schema, name)
        if found is None:
            # Not in INFORMATION_SCHEMA (absent, not granted, or an object it does not list): let the server decide,
            # trying the spelling given, then the one Snowflake gives unquoted names.
            spellings = dict.fromkeys([(schema, name), (schema.upper(), name.upper())])
            first: WarehouseError | None = None
            for real_schema, real_name in spellings:
                probe = Table((database, real_schema, real_name))
                try:
                    return Table(probe.parts, self._probe(probe))
                except WarehouseError as exc:
                    if exc.reason is not FailureReason.TABLE_MISSING:
                        raise
                    first = first or exc
            assert first is not None
            raise first
        (real_schema, real_name), columns = found
        resolved = Table((database, real_schema, real_name), columns)
        self._probe(resolved)  # INFORMATION_SCHEMA lists tables the role may not SELECT from; this finds out
        return resolved

    def _database(self, name: str) -> str:
        """The database's real spelling; DATABASE_MISSING when the role sees no database of that name."""
        # LIKE is case-insensitive in SHOW; '_' matches any character, so the rows are filtered here too.
        cursor = self._cursor(None, f"SHOW DATABASES LIKE {_string_literal(name)}")
        names = [d.name.lower() for d in cursor.description or []]
        column = names.index("name") if "name" in names else 1
        try:
            found = [str(row[column]) for row in cursor.fetchall()]
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings) from None
        exact = [n for n in found if n == name]
        folded = [n for n in found if n.upper() == name.upper()]
        if exact:
            return exact[0]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise WarehouseError(
                FailureReason.DATABASE_MISSING,
                f"{name!r} matches databases that differ only in case ({', '.join(folded)}); spell it exactly in "
                f"spec.source.database",
            )
        s = self._settings
        raise WarehouseError(
            FailureReason.DATABASE_MISSING,
            f"database {name!r} does not exist or role {s.role} may not use it: check spec.source.database, or "
            f"GRANT USAGE ON DATABASE {name} TO ROLE {s.role} ({self._where()})",
        )

    def _probe(self, table: Table) -> tuple[Column, ...]:
        cursor = self._cursor(table, f"SELECT * FROM {DIALECT.name(table.parts)} LIMIT 0")
        return tuple(Column(d.name, FIELD_ID_TO_NAME.get(d.type_code, str(d.type_code))) for d in cursor.description)

    def _cursor(self, table: Table | None, sql: str, params: Sequence[Any] | None = None) -> SnowflakeCursor:
        try:
            cursor = self._conn.cursor()
            cursor.execute(sql, params)
            return cursor
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, table) from None

    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        return [utc_at(row, select.updated_at) for row in self._run(table, select.sql, select.params or None)]

    def _run(self, table: Table | None, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        cursor = self._cursor(table, sql, params)
        try:
            return [tuple(row) for row in cursor.fetchall()]
        except (DriverError, OSError) as exc:
            raise _failure(exc, self._settings, table) from None

    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self._cursor(table, select.sql, select.params)
        try:
            while True:
                try:
                    rows = cursor.fetchmany(fetch_rows)
                except (DriverError, OSError) as exc:
                    raise _failure(exc, self._settings, table) from None
                if not rows:
                    break
                yield [utc_at(row, select.updated_at) for row in rows]
        finally:
            with contextlib.suppress(DriverError, OSError):
                cursor.close()

    def _where(self) -> str:
        return _where(self._settings)


def _pick(rows: Sequence[tuple[Any, ...]], schema: str, name: str) -> tuple[tuple[str, str], tuple[Column, ...]] | None:
    """The columns of the one table the rows describe; the exact spelling wins, then what unquoted names become."""
    exact, upper = (schema, name), (schema.upper(), name.upper())
    return pick_table(rows, [lambda key: key == exact, lambda key: key == upper], f"{schema}.{name}")


# --- errors -------------------------------------------------------------------------------------------------


def _where(settings: SnowflakeSpec) -> str:
    return f"account {settings.account} as {settings.user}, role {settings.role}, warehouse {settings.warehouse}"


def _failure(exc: BaseException, settings: SnowflakeSpec, table: Table | None = None) -> WarehouseError:
    if isinstance(exc, WarehouseError):
        return exc
    errno, detail = _error_parts(exc)
    reason, advice = _classify(exc, errno, detail, settings, table)
    code = f"{errno:06d} " if errno is not None else ""
    return failure(reason, advice, _where(settings), f"{code}{detail}")


def _error_parts(exc: BaseException) -> tuple[int | None, str]:
    """The error number and the server's message, on one line and without the connector's prefix."""
    if isinstance(exc, DriverError):
        errno = exc.errno if isinstance(exc.errno, int) and exc.errno > 0 else None
        text = str(exc.raw_msg or exc.msg or "") or type(exc).__name__
    else:
        errno, text = None, f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    text = _FORMATTED_PREFIX.sub("", text).removeprefix("SQL compilation error: ")
    return errno, text[:400]


def _classify(
    exc: BaseException, errno: int | None, detail: str, settings: SnowflakeSpec, table: Table | None
) -> tuple[FailureReason, str]:
    name = table.display if table else "the table"
    lowered = detail.lower()
    role = settings.role
    ref = settings.private_key_secret_ref
    key_at = f"Secret {ref.name!r} key {ref.key!r}" if ref else "the credential's Secret"
    login_error = errno is not None and 390000 <= errno < 400000
    if errno in _AUTH_ERRNOS or (login_error and "jwt" in lowered):
        return FailureReason.AUTH_FAILED, (
            f"Snowflake refused key-pair authentication for user {settings.user!r}: check spec.snowflake.user and "
            f"that the user's RSA_PUBLIC_KEY (or RSA_PUBLIC_KEY_2) is the public half of the key in {key_at} — run "
            f"the ALTER USER statement from the WarehouseCredential's status"
        )
    if errno in _ROLE_ERRNOS:
        return FailureReason.PERMISSION_DENIED, (
            f"role {role!r} is not granted to user {settings.user!r}: GRANT ROLE {role} TO USER {settings.user}, "
            f"or fix spec.snowflake.role"
        )
    if errno == _WAREHOUSE_SUSPENDED or re.match(r"^warehouse '[^']*' is suspended", lowered):
        wh = settings.warehouse
        return FailureReason.WAREHOUSE_SUSPENDED, (
            f"warehouse {wh!r} is suspended and does not resume by itself: ALTER WAREHOUSE {wh} SET AUTO_RESUME = "
            f"TRUE; or resume it before the syncs with ALTER WAREHOUSE {wh} RESUME, which needs OPERATE (GRANT "
            f"OPERATE ON WAREHOUSE {wh} TO ROLE …)"
        )
    if errno == _NO_WAREHOUSE or "no active warehouse" in lowered or _WAREHOUSE_MISSING.match(lowered):
        return FailureReason.WAREHOUSE_MISSING, (
            f"warehouse {settings.warehouse!r} does not exist or role {role} may not use it: check "
            f"spec.snowflake.warehouse, or GRANT USAGE ON WAREHOUSE {settings.warehouse} TO ROLE {role}"
        )
    if errno == _INSUFFICIENT_PRIVILEGES or "insufficient privileges" in lowered:
        return FailureReason.PERMISSION_DENIED, _grants(f"role {role} may not read {name}", settings, table)
    if errno == _INVALID_IDENTIFIER or (errno == _OBJECT_MISSING and "column" in lowered):
        return FailureReason.COLUMN_MISSING, f"a column is missing from {name}: check the table's columns"
    if errno in (_DOES_NOT_EXIST, _OBJECT_MISSING):
        if lowered.startswith("database"):
            return FailureReason.DATABASE_MISSING, (
                f"the database of {name} does not exist or role {role} may not use it: check spec.source.database"
            )
        return FailureReason.TABLE_MISSING, _grants(
            f"{name} does not exist or role {role} may not see it: check spec.source", settings, table
        )
    if isinstance(exc, OSError | InterfaceError | OperationalError) or (errno is not None and errno // 1000 == 250):
        endpoint = os.environ.get(ENDPOINT_ENV) or f"{settings.account}.snowflakecomputing.com"
        return FailureReason.UNREACHABLE, (
            f"cannot reach Snowflake at {endpoint}: check spec.snowflake.account (the account identifier, e.g. "
            f"'myorg-myaccount'), that the runner may open HTTPS connections to it, and any network policy on the "
            f"user or account"
        )
    return FailureReason.QUERY_FAILED, f"a query on {name} failed"


def _grants(advice: str, settings: SnowflakeSpec, table: Table | None) -> str:
    if table is None:
        return advice
    role = settings.role
    return (
        f"{advice}; to let the role read it: GRANT USAGE ON DATABASE {DIALECT.name(table.parts[:1])} TO ROLE {role}; "
        f"GRANT USAGE ON SCHEMA {DIALECT.name(table.parts[:2])} TO ROLE {role}; "
        f"GRANT SELECT ON {DIALECT.name(table.parts)} TO ROLE {role}"
    )
