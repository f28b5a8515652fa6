"""A small stand-in for the BigQuery REST API (v2), backed by DuckDB, for the adapter's tests and benchmark.

It serves exactly the calls `cdi_operator.warehouses.bigquery` makes through the official `google-cloud-bigquery`
client, pointed at it with `client_options={"api_endpoint": url}`:

- tables.get (`GET …/projects/P/datasets/D/tables/T`) and datasets.get: schema of a DuckDB table in schema D;
- jobs.insert (`POST …/projects/P/jobs`) and jobs.query (`POST …/projects/P/queries`): a GoogleSQL query with
  named query parameters, run at once in DuckDB; the job is DONE (after `running_polls` polls that say RUNNING),
  with `errorResult` when the query failed; jobs.cancel;
- jobs.get and jobs.getQueryResults (`GET …/projects/P/queries/JOB`) with maxResults / pageToken / startIndex
  paging, int64-microsecond TIMESTAMPs (formatOptions.useInt64Timestamp) and a ~10 MB page cap like BigQuery's;
- errors in Google's JSON error format (`{"error": {"code", "message", "errors": [{"reason", …}], "status"}}`)
  with BigQuery's HTTP codes and reasons: notFound 404, accessDenied 403, invalidQuery 400, unauthorized 401.

Datasets are DuckDB schemas of one project (`project`); DuckDB types map to BigQuery's: TIMESTAMPTZ → TIMESTAMP,
TIMESTAMP → DATETIME, JSON → JSON, STRUCT → RECORD, lists → REPEATED. The SQL it accepts is the small subset the
adapter emits (`SELECT <columns> FROM <path> [WHERE …] [ORDER BY …] [LIMIT n]`, `count(*)`): backtick-quoted
identifiers become DuckDB's double-quoted ones (a 3-part path drops the project), `@name` becomes `$name`.
`denied` holds (dataset, table) pairs the caller may not read; `reject_auth` answers 401 to everything.

Authentication: once a service-account key is registered (`register_key`), every request must carry a self-signed
JWT (`Authorization: Bearer …`) issued by a registered account, signed with that key (RS256), scoped to BigQuery and
not expired, as Google checks such tokens; a key in `revoked` gets 401 like a deleted key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import jwt
from cryptography.hazmat.primitives import serialization

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PAGE_BYTES = 10 * 1024 * 1024  # BigQuery caps a page of results at about 10 MB whatever maxResults asks
DEFAULT_PAGE_ROWS = 10_000

_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 500: "INTERNAL"}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason}],
                "status": _STATUS.get(self.code, "UNKNOWN"),
            }
        }

    def error_proto(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, "location": "query"}


@dataclass
class _Job:
    project: str
    job_id: str
    location: str
    query: str
    parameters: list[dict[str, Any]]
    schema: list[dict[str, Any]] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    error: ApiError | None = None
    polls_left: int = 0  # how many more times the job reports RUNNING
    cancelled: bool = False

    def running(self) -> bool:
        if self.polls_left > 0 and not self.cancelled:
            self.polls_left -= 1
            return True
        return False


# --- types ----------------------------------------------------------------------------------------------------


def _field(name: str, t: Any) -> dict[str, Any]:
    if t.id == "list":
        inner = _field(name, t.children[0][1])
        return {**inner, "mode": "REPEATED"}
    if t.id == "struct":
        return {"name": name, "type": "RECORD", "mode": "NULLABLE", "fields": [_field(n, c) for n, c in t.children]}
    text = str(t).upper()
    if text == "TIMESTAMP WITH TIME ZONE":
        kind = "TIMESTAMP"
    elif text.startswith("TIMESTAMP"):
        kind = "DATETIME"
    elif text == "JSON":
        kind = "JSON"
    elif text in ("BIGINT", "INTEGER", "SMALLINT", "TINYINT", "HUGEINT", "UBIGINT", "UINTEGER"):
        kind = "INTEGER"
    elif text in ("DOUBLE", "FLOAT", "REAL"):
        kind = "FLOAT"
    elif text.startswith("DECIMAL"):
        kind = "NUMERIC"
    elif text == "BOOLEAN":
        kind = "BOOLEAN"
    elif text == "DATE":
        kind = "DATE"
    elif text == "BLOB":
        kind = "BYTES"
    else:
        kind = "STRING"
    return {"name": name, "type": kind, "mode": "NULLABLE"}


def _cell(value: Any, spec: dict[str, Any], int64_ts: bool) -> Any:
    if value is None:
        return None
    if spec.get("mode") == "REPEATED":
        single = {**spec, "mode": "NULLABLE"}
        return [{"v": _cell(item, single, int64_ts)} for item in value]
    kind = spec["type"]
    if kind == "RECORD":
        return {"f": [{"v": _cell(value.get(sub["name"]), sub, int64_ts)} for sub in spec["fields"]]}
    if kind == "TIMESTAMP":
        micros = (value.astimezone(UTC) - EPOCH) // timedelta(microseconds=1)
        return str(micros) if int64_ts else f"{micros / 1e6:.6E}"
    if kind == "DATETIME":
        return value.isoformat(timespec="microseconds" if value.microsecond else "seconds")
    if kind == "BOOLEAN":
        return "true" if value else "false"
    if kind == "BYTES":
        return base64.b64encode(value).decode()
    if kind == "JSON" and not isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, date | Decimal | int | float):
        return str(value)
    return value


def _parameter(param: dict[str, Any]) -> Any:
    kind = param["parameterType"]["type"]
    value = param.get("parameterValue", {}).get("value")
    if value is None:
        return None
    if kind == "TIMESTAMP":
        text = value.replace(" ", "T").replace("Z", "+00:00")
        parsed = datetime.fromisoformat(text)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if kind == "DATETIME":
        return datetime.fromisoformat(value.replace(" ", "T"))
    if kind == "DATE":
        return date.fromisoformat(value)
    if kind in ("INT64", "INTEGER"):
        return int(value)
    if kind in ("FLOAT64", "FLOAT"):
        return float(value)
    if kind in ("BOOL", "BOOLEAN"):
        return value.lower() == "true"
    return value


# --- SQL ------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"`((?:[^`\\]|\\.)*)`|'(?:[^'\\]|\\.)*'|@(\w+)|(\s*\.\s*)|[^`'@.]+|.", re.S)


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def translate(sql: str, project: str) -> tuple[str, list[tuple[str, str]]]:
    """GoogleSQL (the adapter's subset) → DuckDB SQL, and the (dataset, table) pairs it reads."""
    tokens: list[tuple[str, str]] = []  # (kind, text): ident, param, dot, other
    for match in _TOKEN.finditer(sql):
        if match.group(1) is not None:
            tokens.append(("ident", _unescape(match.group(1))))
        elif match.group(2) is not None:
            tokens.append(("param", match.group(2)))
        elif match.group(3) is not None:
            tokens.append(("dot", "."))
        else:
            tokens.append(("other", match.group(0)))
    out: list[str] = []
    tables: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident":
            path = [text]
            while i + 2 < len(tokens) and tokens[i + 1][0] == "dot" and tokens[i + 2][0] == "ident":
                path.append(tokens[i + 2][1])
                i += 2
            if len(path) == 1 and "." in path[0] and out and out[-1].rstrip().upper().endswith("FROM"):
                path = path[0].split(".")
            if len(path) >= 2:
                if len(path) == 3:
                    if path[0] != project:
                        raise ApiError(404, "notFound", f"Not found: Dataset {path[0]}:{path[1]}")
                    path = path[1:]
                tables.append((path[0], path[1]))
            out.append(".".join(_quote(p) for p in path))
        elif kind == "param":
            out.append("$" + text)
        else:
            out.append(text)
        i += 1
    return "".join(out), tables


# --- the server -----------------------------------------------------------------------------------------------


class BigQueryStandIn:
    """`with BigQueryStandIn() as bq:` serves on loopback at `bq.url` until the block ends."""

    def __init__(self, project: str = "cdi-test-project", location: str = "US") -> None:
        self.project = project
        self.location = location
        self.denied: set[tuple[str, str]] = set()
        self.reject_auth = False
        self.accounts: dict[str, Any] = {}  # client_email -> public key of its registered key
        self.revoked: set[str] = set()  # client_email of keys deleted since
        self.running_polls = 0  # new jobs report RUNNING to this many jobs.get / getQueryResults calls first
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, query params or JSON body)
        self._db = duckdb.connect()
        self._db.execute("SET TimeZone = 'UTC'")
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- setting data up (DuckDB SQL) -----------------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            result = self._db.execute(sql, params)
            return result.fetchall() if result.description else []

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.executemany(sql, [list(r) for r in rows])

    @contextlib.contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The DuckDB connection itself, held for the block (for tests that set tables up with DuckDB SQL)."""
        with self._lock:
            yield self._db

    def create_dataset(self, dataset: str) -> None:
        self.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(dataset)}")

    def create_table(self, dataset: str, table: str, columns: str, rows: Sequence[Sequence[Any]] = ()) -> None:
        """`columns` in DuckDB's CREATE TABLE syntax (TIMESTAMPTZ for TIMESTAMP, TIMESTAMP for DATETIME)."""
        self.create_dataset(dataset)
        self.execute(f"CREATE TABLE {_quote(dataset)}.{_quote(table)} ({columns})")
        if rows:
            marks = ", ".join(["?"] * len(rows[0]))
            self.executemany(f"INSERT INTO {_quote(dataset)}.{_quote(table)} VALUES ({marks})", rows)

    def queries(self) -> list[dict[str, Any]]:
        """The `configuration.query` of every job inserted, in order."""
        found = []
        for method, path, body in self.requests:
            if method == "POST" and path.endswith("/jobs"):
                found.append(body["configuration"]["query"])
            elif method == "POST" and path.endswith("/queries"):
                found.append(body)
        return found

    # --- lifecycle ------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> BigQueryStandIn:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._handle(self, "GET")

            def do_POST(self) -> None:
                standin._handle(self, "POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="bigquery-standin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with contextlib.suppress(duckdb.Error):
            self._db.close()

    # --- HTTP -----------------------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        body: dict[str, Any] = json.loads(handler.rfile.read(length)) if length else {}
        self.requests.append((method, parts.path, body if method == "POST" else query))
        try:
            if self.reject_auth:
                raise ApiError(401, "unauthorized", "Request had invalid authentication credentials.")
            if self.accounts:
                self._authenticate(handler.headers.get("Authorization", ""))
            status, payload = self._route(method, parts.path, query, body)
        except ApiError as exc:
            status, payload = exc.code, exc.body()
        data = payload if isinstance(payload, bytes) else json.dumps(payload, separators=(",", ":")).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json; charset=UTF-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def register_key(self, key_json: str) -> None:
        """Accept self-signed JWTs of this service-account JSON key from now on."""
        info = json.loads(key_json)
        private = serialization.load_pem_private_key(info["private_key"].encode(), None)
        self.accounts[info["client_email"]] = private.public_key()

    def _authenticate(self, header: str) -> None:
        refused = ApiError(
            401,
            "unauthorized",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
            "valid authentication credential.",
        )
        if not header.startswith("Bearer "):
            raise refused
        token = header.removeprefix("Bearer ")
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            key = self.accounts.get(issuer)
            if key is None or issuer in self.revoked:
                raise refused
            claims = jwt.decode(token, key, algorithms=["RS256"], options={"require": ["exp", "iat", "sub"]})
        except jwt.PyJWTError:
            raise refused from None
        if "https://www.googleapis.com/auth/bigquery" not in str(claims.get("scope", "")).split():
            raise ApiError(403, "accessDenied", "Request had insufficient authentication scopes.")

    def _route(self, method: str, path: str, query: dict[str, str], body: dict[str, Any]) -> tuple[int, Any]:
        segments = path.removeprefix("/bigquery/v2/").strip("/").split("/")
        if len(segments) < 2 or segments[0] != "projects":
            raise ApiError(404, "notFound", f"Not found: {path}")
        project, rest = segments[1], segments[2:]
        match method, rest:
            case "GET", ["datasets", dataset]:
                self._check_dataset(project, dataset)
                return 200, self._dataset_resource(dataset)
            case "GET", ["datasets", dataset, "tables", table]:
                return 200, self._table_resource(project, dataset, table)
            case "POST", ["jobs"]:
                job = self._run(project, body, body.get("configuration", {}).get("query", {}))
                return 200, self._job_resource(job, job.polls_left > 0)
            case "POST", ["queries"]:
                job = self._run(project, {"jobReference": {"location": body.get("location")}}, body)
                int64 = bool(body.get("formatOptions", {}).get("useInt64Timestamp"))
                return 200, self._results(job, body.get("maxResults"), None, None, int64)
            case "GET", ["jobs", job_id]:
                job = self._job(job_id)
                return 200, self._job_resource(job, job.running())
            case "POST", ["jobs", job_id, "cancel"]:
                job = self._job(job_id)
                job.cancelled = True
                job.error = ApiError(400, "stopped", "Job execution was cancelled: User requested cancellation")
                return 200, {"kind": "bigquery#jobCancelResponse", "job": self._job_resource(job)}
            case "GET", ["queries", job_id]:
                job = self._job(job_id)
                if job.running():
                    reference = self._job_resource(job)["jobReference"]
                    return 200, {
                        "kind": "bigquery#getQueryResultsResponse",
                        "jobComplete": False,
                        "jobReference": reference,
                    }
                if job.error is not None:
                    raise job.error  # getQueryResults turns a failed job into the HTTP error
                int64 = query.get("formatOptions.useInt64Timestamp", "").lower() == "true"
                start = query.get("startIndex")
                return 200, self._results(
                    job, query.get("maxResults"), query.get("pageToken"), int(start) if start else None, int64
                )
        raise ApiError(404, "notFound", f"Not found: {method} {path}")

    # --- resources ------------------------------------------------------------------------------------------

    def _check_dataset(self, project: str, dataset: str) -> None:
        if project != self.project or not self.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = ?", [dataset]
        ):
            raise ApiError(404, "notFound", f"Not found: Dataset {project}:{dataset}")

    def _check_table(self, project: str, dataset: str, table: str) -> None:
        self._check_dataset(project, dataset)
        if (dataset, table) in self.denied:
            raise ApiError(
                403,
                "accessDenied",
                f"Access Denied: Table {project}:{dataset}.{table}: Permission bigquery.tables.get denied on "
                f"table {project}:{dataset}.{table} (or it may not exist).",
            )
        found = self.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = ? AND table_name = ?", [dataset, table]
        )
        if not found:
            raise ApiError(404, "notFound", f"Not found: Table {project}:{dataset}.{table}")

    def _dataset_resource(self, dataset: str) -> dict[str, Any]:
        return {
            "kind": "bigquery#dataset",
            "id": f"{self.project}:{dataset}",
            "datasetReference": {"projectId": self.project, "datasetId": dataset},
            "location": self.location,
        }

    def _table_resource(self, project: str, dataset: str, table: str) -> dict[str, Any]:
        self._check_table(project, dataset, table)
        with self._lock:
            rel = self._db.sql(f"SELECT * FROM {_quote(dataset)}.{_quote(table)}")
            fields = [_field(n, t) for n, t in zip(rel.columns, rel.types, strict=True)]
            count = self._db.execute(f"SELECT count(*) FROM {_quote(dataset)}.{_quote(table)}").fetchone()
        return {
            "kind": "bigquery#table",
            "id": f"{project}:{dataset}.{table}",
            "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
            "schema": {"fields": fields},
            "numRows": str(count[0] if count else 0),
            "type": "TABLE",
            "location": self.location,
        }

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "notFound", f"Not found: Job {self.project}:{self.location}.{job_id}")
        return job

    def _run(self, project: str, resource: dict[str, Any], config: dict[str, Any]) -> _Job:
        reference = resource.get("jobReference", {})
        job_id = reference.get("jobId") or f"job_{uuid.uuid4().hex}"
        location = reference.get("location") or self.location
        job = _Job(project, job_id, location, config.get("query", ""), config.get("queryParameters", []))
        job.polls_left = self.running_polls
        self._jobs[job_id] = job
        try:
            if project != self.project:
                raise ApiError(
                    403,
                    "accessDenied",
                    f"Access Denied: Project {project}: User does not have bigquery.jobs.create permission "
                    f"in project {project}.",
                )
            if config.get("useLegacySql", True) and "useLegacySql" in config:
                raise ApiError(400, "invalidQuery", "the stand-in only runs GoogleSQL (useLegacySql: false)")
            sql, tables = translate(job.query, self.project)
            for dataset, table in tables:
                if location.upper() != self.location.upper():
                    raise ApiError(
                        404, "notFound", f"Not found: Dataset {project}:{dataset} was not found in location {location}"
                    )
                if (dataset, table) in self.denied:
                    raise ApiError(
                        403,
                        "accessDenied",
                        f"Access Denied: Table {project}:{dataset}.{table}: User does not have permission to "
                        f"query table {project}:{dataset}.{table}, or perhaps it does not exist.",
                    )
                self._check_table(project, dataset, table)
            params = {p["name"]: _parameter(p) for p in job.parameters}
            with self._lock:
                try:
                    rel = self._db.sql(sql, params=params or None)
                    job.schema = [_field(n, t) for n, t in zip(rel.columns, rel.types, strict=True)]
                    job.rows = rel.fetchall()
                except duckdb.BinderException as exc:
                    text = str(exc)
                    column = re.search(r'column (?:with name )?"?([^" ]+)"? (?:not found|does not exist)', text)
                    if column:
                        raise ApiError(400, "invalidQuery", f"Unrecognized name: {column.group(1)} at [1:8]") from None
                    raise ApiError(400, "invalidQuery", text.splitlines()[0]) from None
                except duckdb.Error as exc:
                    raise ApiError(400, "invalidQuery", str(exc).splitlines()[0]) from None
        except ApiError as exc:
            job.error = exc
        return job

    def _job_resource(self, job: _Job, running: bool = False) -> dict[str, Any]:
        status: dict[str, Any] = {"state": "RUNNING" if running else "DONE"}
        if job.error is not None and not running:
            status["errorResult"] = job.error.error_proto()
            status["errors"] = [job.error.error_proto()]
        now_ms = str(int(datetime.now(UTC).timestamp() * 1000))
        return {
            "kind": "bigquery#job",
            "id": f"{job.project}:{job.location}.{job.job_id}",
            "jobReference": {"projectId": job.project, "jobId": job.job_id, "location": job.location},
            "configuration": {
                "jobType": "QUERY",
                "query": {"query": job.query, "useLegacySql": False, "queryParameters": job.parameters},
            },
            "status": status,
            "statistics": {
                "creationTime": now_ms,
                "startTime": now_ms,
                "endTime": now_ms,
                "query": {"statementType": "SELECT", "totalBytesProcessed": "0", "cacheHit": False},
            },
        }

    def _results(
        self, job: _Job, max_results: Any, page_token: str | None, start_index: int | None, int64_ts: bool
    ) -> bytes:
        """One page of results as the JSON bytes to send (rows are encoded one by one to cap the page's size)."""
        if job.error is not None:
            raise job.error
        offset = int(page_token) if page_token else (start_index or 0)
        limit = DEFAULT_PAGE_ROWS if max_results is None else int(max_results)
        rows: list[str] = []
        size = 0
        end = offset
        schema = job.schema
        while end < len(job.rows) and len(rows) < limit:
            row = {"f": [{"v": _cell(v, s, int64_ts)} for v, s in zip(job.rows[end], schema, strict=True)]}
            text = json.dumps(row, separators=(",", ":"))
            size += len(text)
            if rows and size > PAGE_BYTES:
                break
            rows.append(text)
            end += 1
        response: dict[str, Any] = {
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": {"projectId": job.project, "jobId": job.job_id, "location": job.location},
            "jobComplete": True,
            "schema": {"fields": job.schema},
            "totalRows": str(len(job.rows)),
            "totalBytesProcessed": "0",
            "cacheHit": False,
        }
        if end < len(job.rows) and limit > 0:
            response["pageToken"] = str(end)
        head = json.dumps(response, separators=(",", ":"))
        if rows:
            head = head[:-1] + ',"rows":[' + ",".join(rows) + "]}"
        return head.encode()
