"""The BigQuery adapter through the official google-cloud-bigquery client, against the REST stand-in in
bigquery_standin.py (DuckDB behind BigQuery's v2 JSON API), pointed at by CDI_BIGQUERY_API_ENDPOINT.

What the stand-in does not cover compared with real BigQuery:
- authentication: requests carry a self-signed JWT (always_use_jwt_access) that the stand-in verifies with the
  registered key's public half; a wrong or revoked key is refused with 401 for real. The OAuth token exchange with
  oauth2.googleapis.com (not used with self-signed JWTs), a disabled service account and IAM roles are not.
- permissions are a list of denied tables, not IAM: no dataset-level grants, authorized views, row-level
  security, column-level policy tags, or the jobs.create permission on the billing project (only a job in
  another project is refused).
- SQL: the stand-in runs the adapter's few statement shapes on DuckDB after rewriting backticks and @params.
  GoogleSQL's strict typing is not enforced (DuckDB would compare a DATETIME column with a TIMESTAMP parameter;
  BigQuery refuses), so the tests check the parameter types the adapter sends instead. Collation, NULL
  ordering and the error texts beyond "Not found: Dataset/Table", "Access Denied" and "Unrecognized name" differ.
- jobs finish at once: no PENDING/RUNNING polling, no job retries on backendError/rateLimitExceeded, no
  quotas, no slot contention; pages are served from rows kept in memory, not from a temporary result table.
- types: no partitioned/clustered tables (so no partition pruning or require_partition_filter), no views,
  external tables, BIGNUMERIC, GEOGRAPHY, INTERVAL, RANGE or picosecond timestamps; JSON is DuckDB's JSON text.
- locations are one fixed location; cross-region and multi-region behaviour is not modelled.
- the BigQuery Storage Read API (gRPC) is not served; the adapter does not use it.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import catalog_contract
import pytest
from bigquery_standin import BigQueryStandIn, translate
from contract_rows import ROWS
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sources import BRAZE_KEY, Source
from test_contract import _payload_text, assert_contract_delivered

from cdi_operator.api.models import BigQuerySpec, WarehouseCredentialSpec
from cdi_operator.braze.emulator import BrazeEmulator
from cdi_operator.controller.connection import check_credential
from cdi_operator.warehouses import FailureReason, ReadWindow, WarehouseError, connect
from cdi_operator.warehouses import bigquery as bq

PROJECT = "cdi-test-project"
SECRET = ("bq-key", "key.json")
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
FAR = datetime(2030, 1, 1, tzinfo=UTC)
NOT_A_KEY = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def sa_key() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": pem,
            "client_email": f"cdi-reader@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, sa_key: str) -> Iterator[BigQueryStandIn]:
    with BigQueryStandIn(PROJECT) as server:
        server.register_key(sa_key)
        server.create_dataset("ds")
        monkeypatch.setenv(bq.ENDPOINT_ENV, server.url)
        yield server


def spec(**overrides: Any) -> BigQuerySpec:
    fields: dict[str, Any] = {"project": PROJECT, "serviceAccountKeySecretRef": {"name": SECRET[0], "key": SECRET[1]}}
    fields.update(overrides)
    return BigQuerySpec.model_validate(fields)


@pytest.fixture
def warehouse(standin: BigQueryStandIn, sa_key: str) -> Iterator[bq.BigQueryWarehouse]:
    opened = bq.connect(spec(), {SECRET: sa_key})
    yield opened
    opened.close()


USERS = "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, PAYLOAD JSON"


def users(standin: BigQueryStandIn, seconds: list[float], table: str = "users") -> None:
    standin.create_table("ds", table, USERS, [(at(s), f"u-{i}", json.dumps({"n": i})) for i, s in enumerate(seconds)])


def read_all(
    warehouse: bq.BigQueryWarehouse,
    window: ReadWindow,
    chunk_rows: int = 1000,
    table: tuple[str, ...] = ("ds", "users"),
    columns: tuple[str, ...] = ("UPDATED_AT", "EXTERNAL_ID", "PAYLOAD"),
) -> list[list[tuple[Any, ...]]]:
    return list(warehouse.read_changes(table, columns, "UPDATED_AT", window, chunk_rows))


def failure(call: Any) -> WarehouseError:
    with pytest.raises(WarehouseError) as info:
        call()
    return info.value


# --- describe and read --------------------------------------------------------------------------------------


def test_describe_maps_bigquery_types(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    standin.create_table(
        "ds",
        "wide",
        "UPDATED_AT TIMESTAMPTZ, LOCAL_AT TIMESTAMP, DAY DATE, N BIGINT, X DOUBLE, OK BOOLEAN, NAME VARCHAR, "
        "PAYLOAD JSON, ATTRS STRUCT(plan VARCHAR, seats INTEGER), TAGS VARCHAR[]",
    )
    described = warehouse.describe((PROJECT, "ds", "wide"))
    assert described.name == f"{PROJECT}.ds.wide"
    assert [(c.name, c.type) for c in described.columns] == [
        ("UPDATED_AT", "TIMESTAMP"),
        ("LOCAL_AT", "DATETIME"),
        ("DAY", "DATE"),
        ("N", "INT64"),
        ("X", "FLOAT64"),
        ("OK", "BOOL"),
        ("NAME", "STRING"),
        ("PAYLOAD", "JSON"),
        ("ATTRS", "STRUCT"),
        ("TAGS", "ARRAY<STRING>"),
    ]
    assert described.column("payload") is not None, "column names are case-insensitive"


def test_window_is_inclusive_ordered_and_bound_as_parameters(
    standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse
) -> None:
    users(standin, [5, 1, 3, 2, 4, 2, 6])
    chunks = read_all(warehouse, ReadWindow(since=at(2), until=at(5)))
    rows = [row for chunk in chunks for row in chunk]
    assert [r[0] for r in rows] == [at(2), at(2), at(3), at(4), at(5)], "both bounds inclusive, ordered"
    assert all(r[0].tzinfo is UTC for r in rows)
    assert {r[1] for r in rows[:2]} == {"u-3", "u-5"}

    query = standin.queries()[-1]
    assert "@since" in query["query"] and "@until" in query["query"]
    assert "2026" not in query["query"], "bounds are never pasted into the SQL"
    assert query["useLegacySql"] is False
    params = {p["name"]: p for p in query["queryParameters"]}
    assert params["since"]["parameterType"]["type"] == "TIMESTAMP"
    assert params["until"]["parameterValue"]["value"].startswith("2026-03-01 12:00:05")


def test_without_since_reads_everything_up_to_until(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [1, 2, 3])
    rows = [r for chunk in read_all(warehouse, ReadWindow(since=None, until=at(2))) for r in chunk]
    assert [r[1] for r in rows] == ["u-0", "u-1"]
    assert "@since" not in standin.queries()[-1]["query"]


def test_streams_pages_in_bounded_chunks(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [float(i) for i in range(25)])
    chunks = read_all(warehouse, ReadWindow(since=None, until=FAR), chunk_rows=7)
    assert [len(c) for c in chunks] == [7, 7, 7, 4]
    assert [r[1] for c in chunks for r in c] == [f"u-{i}" for i in range(25)]
    pages = [q for m, p, q in standin.requests if m == "GET" and "/queries/" in p and q.get("maxResults") != "0"]
    assert len(pages) == 4, "one jobs.getQueryResults call per chunk"
    assert all(q["maxResults"] == "7" for q in pages)
    assert [q.get("pageToken") for q in pages] == [None, "7", "14", "21"]


def test_chunks_are_lazy(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [float(i) for i in range(10)])
    stream = warehouse.read_changes(
        ("ds", "users"), ("UPDATED_AT", "EXTERNAL_ID"), "UPDATED_AT", ReadWindow(None, FAR), 3
    )
    first = next(stream)
    assert len(first) == 3
    fetched = [p for m, p, q in standin.requests if m == "GET" and "/queries/" in p and q.get("pageToken")]
    assert fetched == [], "the next page is fetched only when the consumer asks for it"
    assert sum(len(c) for c in stream) == 7


def test_datetime_updated_at_is_read_as_utc_and_bound_as_datetime(
    standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse
) -> None:
    naive = [(at(s).replace(tzinfo=None), f"u-{s}") for s in (1, 2, 3)]
    standin.create_table("ds", "local", "UPDATED_AT TIMESTAMP, EXTERNAL_ID VARCHAR", naive)
    chunks = read_all(warehouse, ReadWindow(at(2), FAR), table=("ds", "local"), columns=("EXTERNAL_ID", "UPDATED_AT"))
    rows = [r for c in chunks for r in c]
    assert rows == [("u-2", at(2)), ("u-3", at(3))]
    assert all(r[1].tzinfo is UTC for r in rows)
    params = {p["name"]: p for p in standin.queries()[-1]["queryParameters"]}
    assert params["since"]["parameterType"]["type"] == "DATETIME", "BigQuery does not compare DATETIME with TIMESTAMP"
    assert params["since"]["parameterValue"]["value"] == "2026-03-01T12:00:02.000000"
    preview = warehouse.preview(("ds", "local"), ("UPDATED_AT", "EXTERNAL_ID"), 1)
    assert preview == [{"UPDATED_AT": at(3), "EXTERNAL_ID": "u-3"}]
    assert warehouse.count_after(("ds", "local"), "UPDATED_AT", at(1)) == 2


def test_date_updated_at_is_midnight_utc(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    standin.create_table("ds", "daily", "UPDATED_AT DATE, EXTERNAL_ID VARCHAR", [(date(2026, 3, 1), "a")])
    chunks = read_all(warehouse, ReadWindow(None, FAR), table=("ds", "daily"), columns=("UPDATED_AT",))
    rows = [r for c in chunks for r in c]
    assert rows == [(datetime(2026, 3, 1, tzinfo=UTC),)]
    assert standin.queries()[-1]["queryParameters"][0]["parameterType"]["type"] == "DATE"


def test_json_and_struct_payloads_arrive_as_dicts(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    payload = {"name": "Zoë 東京 🎉", "address": {"lines": ["Rua 1", "2º"]}, "n": 10**12, "none": None}
    standin.create_table(
        "ds",
        "payloads",
        "UPDATED_AT TIMESTAMPTZ, PAYLOAD JSON, ATTRS STRUCT(plan VARCHAR, seats INTEGER, tags VARCHAR[]), TEXT VARCHAR",
        [
            (at(1), json.dumps(payload), {"plan": "pro", "seats": 3, "tags": ["a", "b"]}, '{"x": 1}'),
            (at(2), None, None, None),
        ],
    )
    columns = ("UPDATED_AT", "PAYLOAD", "ATTRS", "TEXT")
    rows = [r for c in read_all(warehouse, ReadWindow(None, FAR), table=("ds", "payloads"), columns=columns) for r in c]
    assert rows[0][1] == payload
    assert rows[0][2] == {"plan": "pro", "seats": 3, "tags": ["a", "b"]}
    assert rows[0][3] == '{"x": 1}', "STRING payloads stay JSON text for the runner to parse"
    assert rows[1][1:] == (None, None, None)


def test_identifiers_are_backtick_quoted(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    assert bq.quote_ident("a`b\\c") == "`a\\`b\\\\c`"
    assert translate("SELECT `a\\`b` FROM `p`.`d`.`t`", "p")[0] == 'SELECT "a`b" FROM "d"."t"'
    standin.create_table("ds", "odd-name$1", '"select" TIMESTAMPTZ, "from" VARCHAR', [(at(1), "x")])
    rows = list(warehouse.read_changes(("ds", "odd-name$1"), ("select", "from"), "select", ReadWindow(None, FAR), 10))
    assert rows == [[(at(1), "x")]]
    sql = standin.queries()[-1]["query"]
    assert f"FROM `{PROJECT}`.`ds`.`odd-name$1`" in sql and "`select` <= @until" in sql


def test_preview_is_bounded_and_newest_first(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [float(i) for i in range(50)])
    preview = warehouse.preview(("ds", "users"), ("EXTERNAL_ID", "UPDATED_AT"), 3)
    assert [p["EXTERNAL_ID"] for p in preview] == ["u-49", "u-48", "u-47"]
    assert standin.queries()[-1]["query"].endswith("LIMIT 3")


def test_count_after(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [1, 2, 3, 3])
    assert warehouse.count_after(("ds", "users"), "UPDATED_AT", at(2)) == 2
    assert warehouse.count_after(("ds", "users"), "UPDATED_AT", at(3)) == 0


def test_connect_through_the_registry(standin: BigQueryStandIn, sa_key: str) -> None:
    users(standin, [1])
    block = spec().model_dump(by_alias=True)
    credential = WarehouseCredentialSpec.model_validate({"type": "bigquery", "bigquery": block})
    opened = connect(credential, {SECRET: sa_key})
    try:
        assert opened.describe((PROJECT, "ds", "users")).column("UPDATED_AT") is not None
    finally:
        opened.close()


# --- connection-test verdicts -------------------------------------------------------------------------------


def test_dataset_missing(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    error = failure(lambda: warehouse.describe((PROJECT, "nope", "users")))
    assert error.reason is FailureReason.DATABASE_MISSING
    assert f"{PROJECT}:nope" in error.message and "spec.source.dataset" in error.message


def test_table_missing(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    error = failure(lambda: warehouse.describe(("ds", "nope")))
    assert error.reason is FailureReason.TABLE_MISSING
    assert f"{PROJECT}.ds.nope" in error.message


def test_permission_denied_on_describe_and_on_query(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [1])
    users(standin, [1], table="secret")
    standin.denied.add(("ds", "secret"))
    error = failure(lambda: warehouse.describe(("ds", "secret")))
    assert error.reason is FailureReason.PERMISSION_DENIED
    assert "roles/bigquery.dataViewer" in error.message and "cdi-reader@" in error.message

    warehouse.describe(("ds", "users"))
    standin.denied.add(("ds", "users"))  # access revoked between describe and read
    error = failure(lambda: read_all(warehouse, ReadWindow(None, FAR)))
    assert error.reason is FailureReason.PERMISSION_DENIED


def test_unauthorized(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    standin.reject_auth = True
    error = failure(lambda: warehouse.describe(("ds", "users")))
    assert error.reason is FailureReason.AUTH_FAILED
    assert "bq-key" in error.message


def test_requests_carry_a_jwt_signed_with_the_key_and_a_revoked_key_fails_the_credential_test(
    standin: BigQueryStandIn, sa_key: str
) -> None:
    """The stand-in verifies each request's self-signed JWT with the key's public half (so a token signed with any
    other key is refused), and the credential's connection test makes a request, so a revoked key fails it."""
    credential = WarehouseCredentialSpec.model_validate({"type": "bigquery", "bigquery": spec().model_dump()})
    assert check_credential(credential, {SECRET: sa_key}).passed
    dry_runs = [b for m, p, b in standin.requests if m == "POST" and p.endswith("/jobs")]
    assert dry_runs and dry_runs[-1]["configuration"]["dryRun"] is True

    other = json.loads(sa_key) | {"private_key": json.loads(_another_key())["private_key"]}
    refused = check_credential(credential, {SECRET: json.dumps(other)})
    assert (refused.result, refused.reason) == ("Failed", "AuthFailed"), refused.message

    standin.revoked.add(json.loads(sa_key)["client_email"])
    revoked = check_credential(credential, {SECRET: sa_key})
    assert (revoked.result, revoked.reason) == ("Failed", "AuthFailed"), revoked.message
    assert "PRIVATE KEY" not in revoked.message


def _another_key() -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps({"private_key": pem})


def test_column_missing_and_wrong_type(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    standin.create_table("ds", "no_ts", "CHANGED VARCHAR, EXTERNAL_ID VARCHAR", [("x", "a")])
    error = failure(lambda: read_all(warehouse, ReadWindow(None, FAR), table=("ds", "no_ts")))
    assert error.reason is FailureReason.COLUMN_MISSING
    error = failure(lambda: warehouse.count_after(("ds", "no_ts"), "CHANGED", at(0)))
    assert error.reason is FailureReason.COLUMN_TYPE
    users(standin, [1])
    error = failure(lambda: read_all(warehouse, ReadWindow(None, FAR), columns=("UPDATED_AT", "GONE")))
    assert error.reason is FailureReason.COLUMN_MISSING, error


def test_unreachable(monkeypatch: pytest.MonkeyPatch, sa_key: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(bq.ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    monkeypatch.setattr(bq, "RETRY_SECONDS", 0.5)
    error = failure(lambda: bq.connect(spec(), {SECRET: sa_key}))
    assert error.reason is FailureReason.UNREACHABLE
    assert "bigquery.googleapis.com" in error.message


def test_other_location(standin: BigQueryStandIn, sa_key: str) -> None:
    users(standin, [1])
    opened = bq.connect(spec(location="EU"), {SECRET: sa_key})
    opened.describe(("ds", "users"))
    error = failure(lambda: read_all(opened, ReadWindow(None, FAR)))
    assert error.reason is FailureReason.DATABASE_MISSING
    assert "location EU" in error.message


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda key: key[:-10], "is not JSON"),
        (lambda key: json.dumps([key]), "not an object"),
        (lambda key: json.dumps({**json.loads(key), "private_key": ""}), "lacks private_key"),
        (lambda key: json.dumps({**json.loads(key), "type": "authorized_user"}), "'authorized_user'"),
        (lambda key: json.dumps({**json.loads(key), "private_key": NOT_A_KEY}), "not a usable service-account key"),
    ],
)
def test_malformed_key_is_auth_failed(standin: BigQueryStandIn, sa_key: str, mangle: Any, expected: str) -> None:
    bad = mangle(sa_key)
    error = failure(lambda: bq.connect(spec(), {SECRET: bad}))
    assert error.reason is FailureReason.AUTH_FAILED
    assert expected in error.message and "'bq-key' key 'key.json'" in error.message
    assert "PRIVATE KEY" not in error.message and "bm90IGEga2V5" not in error.message
    assert standin.requests == [], "a malformed key fails before any request"


def test_errors_never_carry_the_key(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse, sa_key: str) -> None:
    private = json.loads(sa_key)["private_key"]
    for call in (lambda: warehouse.describe(("nope", "t")), lambda: warehouse.describe(("ds", "nope"))):
        error = failure(call)
        assert private not in str(error) and "PRIVATE" not in str(error)


# --- the contract -------------------------------------------------------------------------------------------


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


def test_bigquery(standin: BigQueryStandIn, sa_key: str, braze: BrazeEmulator, tmp_path: Path) -> None:
    source = Source(
        "bigquery", {"standin": standin, "project": PROJECT, "schema": "ds", "key_json": json.dumps(sa_key)}
    )
    source.create_table(
        "contract",
        "UPDATED_AT TIMESTAMPTZ, EXTERNAL_ID VARCHAR, ALIAS_NAME VARCHAR, ALIAS_LABEL VARCHAR, BRAZE_ID VARCHAR, "
        "EMAIL VARCHAR, PHONE VARCHAR, PAYLOAD JSON",
        [_payload_text(r) for r in ROWS],
    )
    assert_contract_delivered(source, braze, tmp_path)
    assert standin.queries(), "the rows came through the BigQuery REST API"


def test_waits_for_running_jobs(standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse) -> None:
    users(standin, [1, 2])
    standin.running_polls = 3
    assert [len(c) for c in read_all(warehouse, ReadWindow(None, FAR))] == [2]
    polls = [p for m, p, _ in standin.requests if m == "GET" and "/jobs/" in p]
    assert len(polls) >= 3, "the job was polled with jobs.get until DONE"


def test_a_query_that_runs_too_long_is_cancelled(
    standin: BigQueryStandIn, warehouse: bq.BigQueryWarehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    users(standin, [1])
    standin.running_polls = 10**6
    monkeypatch.setattr(bq, "QUERY_TIMEOUT_SECONDS", 0.5)
    error = failure(lambda: warehouse.count_after(("ds", "users"), "UPDATED_AT", at(0)))
    assert error.reason is FailureReason.QUERY_FAILED and "cancelled" in error.message
    assert any(m == "POST" and p.endswith("/cancel") for m, p, _ in standin.requests)


def test_bigquery_catalog(standin: BigQueryStandIn, sa_key: str, braze: BrazeEmulator, tmp_path: Path) -> None:
    """The catalog contract table (catalog_contract.py) with PAYLOAD as JSON."""
    source = Source(
        "bigquery", {"standin": standin, "project": PROJECT, "schema": "ds", "key_json": json.dumps(sa_key)}
    )
    source.create_table(
        catalog_contract.TABLE,
        "UPDATED_AT TIMESTAMPTZ, ID VARCHAR, PAYLOAD JSON, DELETED BOOLEAN",
        catalog_contract.text_rows(),
    )
    catalog_contract.assert_catalog_delivered(source, braze, tmp_path)
