"""A Databricks SQL warehouse stand-in for the tests: DuckDB behind the connector's own wire protocol.

`databricks-sql-connector` speaks Thrift (TCLIService, binary protocol) in HTTP POSTs to the warehouse's HTTP path.
This server decodes those calls with the Thrift classes the connector ships (`databricks.sql.thrift_api`) and runs
the statements on an in-memory DuckDB database, so the tests drive the real connector end to end:

- OpenSession / CloseSession, ExecuteStatement, GetOperationStatus, GetResultSetMetadata, FetchResults (Arrow IPC
  batches, uncompressed, as many rows as the client asks for), CloseOperation, CancelOperation;
- Databricks SQL → DuckDB: backtick identifiers become double-quoted ones, named parameters `:name` become DuckDB
  parameters bound with the connector's TSparkParameter values (typed by their TIMESTAMP/STRING/... cast), and
  `SET TIME ZONE '…'` is accepted;
- the catalog is a DuckDB database attached under the catalog's name, so `catalog`.`schema`.`table` resolves;
- errors come back as Databricks formats them: `[TABLE_OR_VIEW_NOT_FOUND] … SQLSTATE: 42P01` (also for a missing
  schema or catalog, as Databricks does), `[SCHEMA_NOT_FOUND]`, `[CATALOG_NOT_FOUND]`, `[INSUFFICIENT_PERMISSIONS]`;
- HTTP: a wrong bearer token gets 401, a token listed in `forbidden_tokens` 403 (with `x-databricks-reason-phrase`),
  and while warming up every call gets 503 + `Retry-After`, which the connector retries as for a starting warehouse.

Result types follow what a SQL warehouse sends with the connector's default native Arrow types: STRING as Arrow
utf8, TIMESTAMP as `timestamp[us, tz=Etc/UTC]`, TIMESTAMP_NTZ as `timestamp[us]`, STRUCT/MAP/ARRAY as Arrow
struct/map/list. Run standalone with `python databricks_standin.py --port N` (used by the benchmark).
"""

from __future__ import annotations

import argparse
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import duckdb
import pyarrow as pa
from databricks.sql.thrift_api.TCLIService import TCLIService, ttypes
from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport

HTTP_PATH = "/sql/1.0/warehouses/standin"
TOKEN = "dapi-standin-token"
SUCCESS = ttypes.TStatus(statusCode=ttypes.TStatusCode.SUCCESS_STATUS)
_PROTOCOL = ttypes.TProtocolVersion.SPARK_CLI_SERVICE_PROTOCOL_V7


# --- SQL translation -------------------------------------------------------------------------------------------

_TOKENS = re.compile(r"'(?:[^'\\]|\\.|'')*'|`(?:[^`]|``)*`|\"(?:[^\"]|\"\")*\"|::|:([A-Za-z_]\w*)|[^'`\":]+|.", re.S)


def translate(sql: str) -> str:
    """Databricks SQL to DuckDB: backtick identifiers to double-quoted ones, `:name` markers to `$name`."""
    out = []
    for match in _TOKENS.finditer(sql):
        token = match.group(0)
        if token.startswith("`"):
            out.append('"' + token[1:-1].replace("``", "`").replace('"', '""') + '"')
        elif match.group(1):
            out.append("$" + match.group(1))
        else:
            out.append(token)
    return "".join(out)


_CONVERT: dict[str, Any] = {
    "TIMESTAMP": datetime.fromisoformat,
    "TIMESTAMP_NTZ": datetime.fromisoformat,
    "DATE": date.fromisoformat,
    "INT": int,
    "BIGINT": int,
    "SMALLINT": int,
    "TINYINT": int,
    "DOUBLE": float,
    "FLOAT": float,
    "DECIMAL": Decimal,
    "BOOLEAN": lambda v: v.lower() == "true",
}


def parameter_values(parameters: list[ttypes.TSparkParameter] | None) -> dict[str, Any]:
    """The named TSparkParameters as Python values of their declared Databricks type."""
    values: dict[str, Any] = {}
    for p in parameters or []:
        if not p.name:
            raise _SqlError("UNBOUND_SQL_PARAMETER", "positional parameters are not supported here.", "42P02")
        value = p.value.stringValue if p.value is not None else None
        convert = _CONVERT.get((p.type or "STRING").split("(")[0].upper())
        values[p.name] = convert(value) if value is not None and convert else value
    return values


class _SqlError(Exception):
    def __init__(self, error_class: str, text: str, sqlstate: str) -> None:
        super().__init__(f"[{error_class}] {text} SQLSTATE: {sqlstate}")
        self.sqlstate = sqlstate


def _databricks_error(exc: duckdb.Error, sql: str) -> _SqlError:
    text = str(exc)
    if re.search(r"(Table|Catalog|Schema) with name .* does not exist", text):
        found = re.search(r"FROM\s+((?:\"[^\"]*\"\.?)+|\S+)", sql, re.I)
        name = found.group(1).replace('"', "`") if found else "the table"
        return _SqlError(
            "TABLE_OR_VIEW_NOT_FOUND",
            f"The table or view {name} cannot be found. Verify the spelling and correctness of the schema and catalog.",
            "42P01",
        )
    if "Referenced column" in text:
        return _SqlError("UNRESOLVED_COLUMN.WITH_SUGGESTION", text, "42703")
    if "Parser Error" in text:
        return _SqlError("PARSE_SYNTAX_ERROR", text, "42601")
    return _SqlError("INTERNAL_ERROR", text, "XX000")


# --- the service -----------------------------------------------------------------------------------------------


@dataclass
class _Operation:
    schema: pa.Schema | None
    reader: Iterator[pa.RecordBatch] | None
    pending: list[pa.RecordBatch] = field(default_factory=list)
    offset: int = 0
    error: _SqlError | None = None
    done: bool = False


def _spark_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a SQL warehouse sends for a DuckDB result type."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", bool)(t):
        return pa.string()
    if isinstance(t, pa.ExtensionType):
        return _spark_type(t.storage_type)
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", tz="Etc/UTC" if t.tz else None)
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _spark_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_spark_type(t.key_type), _spark_type(t.item_type))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(_spark_type(t.value_type))
    return t


def _type_id(t: pa.DataType) -> int:
    T = ttypes.TTypeId
    checks = [
        (pa.types.is_boolean, T.BOOLEAN_TYPE),
        (pa.types.is_int8, T.TINYINT_TYPE),
        (pa.types.is_int16, T.SMALLINT_TYPE),
        (pa.types.is_int32, T.INT_TYPE),
        (pa.types.is_integer, T.BIGINT_TYPE),
        (pa.types.is_float32, T.FLOAT_TYPE),
        (pa.types.is_floating, T.DOUBLE_TYPE),
        (pa.types.is_string, T.STRING_TYPE),
        (pa.types.is_timestamp, T.TIMESTAMP_TYPE),
        (pa.types.is_date, T.DATE_TYPE),
        (pa.types.is_decimal, T.DECIMAL_TYPE),
        (pa.types.is_binary, T.BINARY_TYPE),
        (pa.types.is_struct, T.STRUCT_TYPE),
        (pa.types.is_map, T.MAP_TYPE),
        (pa.types.is_list, T.ARRAY_TYPE),
        (pa.types.is_null, T.NULL_TYPE),
    ]
    return next((tid for check, tid in checks if check(t)), T.STRING_TYPE)


def _thrift_schema(schema: pa.Schema) -> ttypes.TTableSchema:
    columns = []
    for i, f in enumerate(schema):
        qualifiers = None
        if pa.types.is_decimal(f.type):
            qualifiers = ttypes.TTypeQualifiers(
                qualifiers={
                    "precision": ttypes.TTypeQualifierValue(i32Value=f.type.precision),
                    "scale": ttypes.TTypeQualifierValue(i32Value=f.type.scale),
                }
            )
        entry = ttypes.TTypeEntry(
            primitiveEntry=ttypes.TPrimitiveTypeEntry(type=_type_id(f.type), typeQualifiers=qualifiers)
        )
        columns.append(ttypes.TColumnDesc(columnName=f.name, typeDesc=ttypes.TTypeDesc(types=[entry]), position=i + 1))
    return ttypes.TTableSchema(columns=columns)


def _handle() -> ttypes.THandleIdentifier:
    return ttypes.THandleIdentifier(guid=uuid.uuid4().bytes, secret=uuid.uuid4().bytes)


class _Handler:
    """TCLIService calls, on DuckDB."""

    def __init__(self, standin: DatabricksStandin) -> None:
        self.s = standin
        self.sessions: dict[bytes, duckdb.DuckDBPyConnection] = {}
        self.operations: dict[bytes, _Operation] = {}
        self.lock = threading.Lock()

    def OpenSession(self, req: ttypes.TOpenSessionReq) -> ttypes.TOpenSessionResp:
        handle = _handle()
        with self.lock:
            self.sessions[handle.guid] = self.s.db.cursor()
            self.s.sessions_opened += 1
        return ttypes.TOpenSessionResp(
            status=SUCCESS,
            serverProtocolVersion=_PROTOCOL,
            sessionHandle=ttypes.TSessionHandle(sessionId=handle, serverProtocolVersion=_PROTOCOL),
            canUseMultipleCatalogs=True,
            configuration={},
        )

    def CloseSession(self, req: ttypes.TCloseSessionReq) -> ttypes.TCloseSessionResp:
        with self.lock:
            con = self.sessions.pop(req.sessionHandle.sessionId.guid, None)
        if con is not None:
            con.close()
        return ttypes.TCloseSessionResp(status=SUCCESS)

    def ExecuteStatement(self, req: ttypes.TExecuteStatementReq) -> ttypes.TExecuteStatementResp:
        handle = _handle()
        op = self._run(req)
        with self.lock:
            self.operations[handle.guid] = op
        return ttypes.TExecuteStatementResp(
            status=SUCCESS,
            operationHandle=ttypes.TOperationHandle(
                operationId=handle, operationType=ttypes.TOperationType.EXECUTE_STATEMENT, hasResultSet=True
            ),
        )

    def _run(self, req: ttypes.TExecuteStatementReq) -> _Operation:
        statement = req.statement.strip().rstrip(";")
        self.s.statements.append((statement, {p.name: p.value and p.value.stringValue for p in req.parameters or []}))
        try:
            if re.fullmatch(r"SET\s+TIME\s+ZONE\s+.*", statement, re.I | re.S):
                return _Operation(pa.schema([]), iter(()))
            described = re.fullmatch(r"DESCRIBE\s+(?:SCHEMA|DATABASE)\s+(.+)", statement, re.I | re.S)
            if described:
                return self._describe_schema(described.group(1))
            for denied in self.s.denied_tables:
                if denied.lower() in statement.lower().replace("`", ""):
                    raise _SqlError(
                        "INSUFFICIENT_PERMISSIONS",
                        f"Insufficient privileges: User does not have SELECT on Table '{denied}'.",
                        "42501",
                    )
            cursor = self.s.cursor()
            sql = translate(statement)
            try:
                relation = cursor.sql(sql, params=parameter_values(req.parameters) or None)
                if relation is None:  # a statement without a result
                    return _Operation(pa.schema([]), iter(()))
                reader = relation.to_arrow_reader(4096)
            except duckdb.Error as exc:
                raise _databricks_error(exc, sql) from None
            schema = pa.schema([pa.field(f.name, _spark_type(f.type)) for f in reader.schema])
            return _Operation(schema, iter(reader))
        except _SqlError as exc:
            return _Operation(None, None, error=exc)

    def _describe_schema(self, name: str) -> _Operation:
        parts = [p.replace("``", "`") for p in re.findall(r"`((?:[^`]|``)*)`|([^.`\s]+)", name) for p in p if p]
        catalog, schema = (parts[0], parts[1]) if len(parts) == 2 else (self.s.catalog, parts[0])
        catalogs = {r[0] for r in self.s.db.execute("SELECT database_name FROM duckdb_databases()").fetchall()}
        if catalog not in catalogs:
            raise _SqlError("NO_SUCH_CATALOG_EXCEPTION", f"Catalog '{catalog}' was not found.", "42704")
        found = self.s.db.execute(
            "SELECT 1 FROM duckdb_schemas() WHERE database_name = ? AND schema_name = ?", [catalog, schema]
        ).fetchall()
        if not found:
            raise _SqlError("SCHEMA_NOT_FOUND", f"The schema `{catalog}`.`{schema}` cannot be found.", "42704")
        table = pa.table({"info_name": ["Catalog Name", "Namespace Name"], "info_value": [catalog, schema]})
        return _Operation(table.schema, iter(table.to_batches()))

    def _operation(self, handle: ttypes.TOperationHandle) -> _Operation:
        with self.lock:
            op = self.operations.get(handle.operationId.guid)
        if op is None:
            raise _InvalidHandle()
        return op

    def GetOperationStatus(self, req: ttypes.TGetOperationStatusReq) -> ttypes.TGetOperationStatusResp:
        op = self._operation(req.operationHandle)
        if op.error is not None:
            return ttypes.TGetOperationStatusResp(
                status=SUCCESS,
                operationState=ttypes.TOperationState.ERROR_STATE,
                sqlState=op.error.sqlstate,
                errorMessage=str(op.error),
                displayMessage=str(op.error),
            )
        return ttypes.TGetOperationStatusResp(
            status=SUCCESS, operationState=ttypes.TOperationState.FINISHED_STATE, hasResultSet=True
        )

    def GetResultSetMetadata(self, req: ttypes.TGetResultSetMetadataReq) -> ttypes.TGetResultSetMetadataResp:
        return self._metadata(self._operation(req.operationHandle))

    def _metadata(self, op: _Operation) -> ttypes.TGetResultSetMetadataResp:
        schema = op.schema if op.schema is not None else pa.schema([])
        return ttypes.TGetResultSetMetadataResp(
            status=SUCCESS,
            schema=_thrift_schema(schema),
            resultFormat=ttypes.TSparkRowSetType.ARROW_BASED_SET,
            lz4Compressed=False,
            arrowSchema=schema.serialize().to_pybytes(),
            isStagingOperation=False,
        )

    def FetchResults(self, req: ttypes.TFetchResultsReq) -> ttypes.TFetchResultsResp:
        op = self._operation(req.operationHandle)
        assert op.schema is not None
        wanted, batches, rows = max(1, req.maxRows or 10000), [], 0
        while rows < wanted and not op.done:
            batch = op.pending.pop(0) if op.pending else next(op.reader or iter(()), None)
            if batch is None:
                op.done = True
                break
            if rows + batch.num_rows > wanted:
                op.pending.insert(0, batch.slice(wanted - rows))
                batch = batch.slice(0, wanted - rows)
            batches.append(pa.Table.from_batches([batch]).cast(op.schema).to_batches()[0] if batch.num_rows else batch)
            rows += batch.num_rows
        if not op.pending and not op.done:
            peek = next(op.reader or iter(()), None)
            if peek is None:
                op.done = True
            else:
                op.pending.append(peek)
        arrow = [
            ttypes.TSparkArrowBatch(batch=b.serialize().to_pybytes(), rowCount=b.num_rows)
            for b in batches
            if b.num_rows
        ]
        start, op.offset = op.offset, op.offset + rows
        return ttypes.TFetchResultsResp(
            status=SUCCESS,
            hasMoreRows=not op.done,
            results=ttypes.TRowSet(startRowOffset=start, rows=[], arrowBatches=arrow),
            resultSetMetadata=self._metadata(op),
        )

    def CloseOperation(self, req: ttypes.TCloseOperationReq) -> ttypes.TCloseOperationResp:
        with self.lock:
            self.operations.pop(req.operationHandle.operationId.guid, None)
        return ttypes.TCloseOperationResp(status=SUCCESS)

    def CancelOperation(self, req: ttypes.TCancelOperationReq) -> ttypes.TCancelOperationResp:
        return ttypes.TCancelOperationResp(status=SUCCESS)


class _InvalidHandle(Exception):
    pass


class ThriftHttpHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the connector's Thrift transport expects; quiet."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _thrift(self, processor: TCLIService.Processor, body: bytes) -> None:
        """Answer the Thrift call in `body` with `processor`."""
        out = TTransport.TMemoryBuffer()
        processor.process(
            TBinaryProtocol.TBinaryProtocol(TTransport.TMemoryBuffer(body)), TBinaryProtocol.TBinaryProtocol(out)
        )
        self._reply(200, out.getvalue(), {"Content-Type": "application/x-thrift"})


class DatabricksStandin:
    """The server: `with DatabricksStandin() as dbx:` listens on 127.0.0.1:`dbx.port` at `HTTP_PATH`.

    `execute()` runs DuckDB SQL (the tests' setup) in the catalog; `warm_up(seconds)` makes every request answer
    503 for that long; `statements` records what the connector sent, with its parameters.
    """

    def __init__(self, catalog: str = "workspace", token: str = TOKEN, port: int = 0) -> None:
        self.catalog = catalog
        self.token = token
        self.forbidden_tokens: set[str] = set()
        self.denied_tables: set[str] = set()
        self.statements: list[tuple[str, dict[str, Any]]] = []
        self.sessions_opened = 0
        self.requests = 0
        self._warm_until = 0.0
        self.db = duckdb.connect()
        self.db.execute(f"ATTACH ':memory:' AS \"{catalog}\"")
        self.db.execute(f'USE "{catalog}"')
        self._handler = _Handler(self)
        self._processor = TCLIService.Processor(self._handler)
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._request_handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor in the catalog, with the session zone UTC."""
        cursor = self.db.cursor()
        cursor.execute(f'USE "{self.catalog}"')
        cursor.execute("SET TimeZone = 'UTC'")
        return cursor

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """DuckDB SQL in the catalog (the tests' setup); the rows it returns, if any."""
        cursor = self.cursor()
        cursor.execute(sql, params)
        try:
            return cursor.fetchall()
        except duckdb.Error:
            return []

    def warm_up(self, seconds: float) -> None:
        self._warm_until = time.monotonic() + seconds

    def __enter__(self) -> DatabricksStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.db.close()

    def _request_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(ThriftHttpHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                standin.requests += 1
                if self.path.split("?")[0] != HTTP_PATH:
                    self._reply(404, b"no such warehouse", {"x-databricks-reason-phrase": "Not Found"})
                    return
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token in standin.forbidden_tokens:
                    self._reply(403, b"", {"x-databricks-reason-phrase": "Invalid access to Org: 1234567890"})
                    return
                if token != standin.token:
                    self._reply(401, b"", {"x-databricks-reason-phrase": "Invalid access token."})
                    return
                if time.monotonic() < standin._warm_until:
                    self._reply(
                        503,
                        b"",
                        {
                            "Retry-After": "1",
                            "x-thriftserver-error-message": "TEMPORARILY_UNAVAILABLE: the warehouse is starting",
                        },
                    )
                    return
                try:
                    self._thrift(standin._processor, body)
                except _InvalidHandle:
                    self._reply(400, b"", {"x-thriftserver-error-message": "Invalid OperationHandle"})

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--catalog", default="workspace")
    parser.add_argument("--setup", action="append", default=[], help="DuckDB SQL to run before serving")
    args = parser.parse_args()
    standin = DatabricksStandin(catalog=args.catalog, port=args.port)
    for sql in args.setup:
        standin.execute(sql)
    print(standin.port, flush=True)
    standin._server.serve_forever()


if __name__ == "__main__":
    main()
