"""A proxy that lets the real `databricks-sql-connector` talk to Spark's real Thrift server (HiveServer2).

The connector speaks Databricks' dialect of TCLIService: Thrift in HTTP POSTs with a bearer token, Arrow results,
named parameters as `TSparkParameter`s. Spark's `HiveThriftServer2` (in binary mode, NOSASL, on loopback) speaks
plain HiveServer2. The proxy decodes each call with the connector's own Thrift classes, forwards it over one binary
Thrift connection, and mends what differs:

1. OpenSession: sets `client_protocol` (the connector sends only `client_protocol_i64`);
2. answers with a Databricks protocol version the connector accepts (≥ SPARK_CLI_SERVICE_PROTOCOL_V2; V8 so that it
   sends named parameters natively);
3. checks the Bearer token itself (HTTP 401 like Databricks' gateway);
4. binds named parameters with `EXECUTE IMMEDIATE '<sql>' USING CAST('<v>' AS T) AS name` (Spark ignores
   TSparkParameter), so Spark's own parser sees the `:name` markers;
5. returns Arrow batches with an Arrow schema: types come from a `DESCRIBE QUERY` of the statement; TIMESTAMP goes
   through `unix_micros()` (exact, whatever the session zone) and STRUCT/MAP/ARRAY/VARIANT through `to_json()`,
   since HiveServer2's text for nested values is not JSON;
6. keeps `hasMoreRows` true while rows come (HiveServer2 says false, and the connector would stop after a batch);
7. adds `resultSetMetadata` to fetch replies (the connector reads the result format from there);
8. strips Java exception prefixes, so `[TABLE_OR_VIEW_NOT_FOUND] … SQLSTATE: 42P01` reaches the adapter as
   Databricks words it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pyarrow as pa
from databricks.sql.thrift_api.TCLIService import TCLIService, ttypes
from databricks_standin import ThriftHttpHandler
from thrift.protocol import TBinaryProtocol
from thrift.transport import TSocket, TTransport

PROTOCOL = ttypes.TProtocolVersion.SPARK_CLI_SERVICE_PROTOCOL_V8
HIVE_PROTOCOL = ttypes.TProtocolVersion.HIVE_CLI_SERVICE_PROTOCOL_V10
SUCCESS = ttypes.TStatus(statusCode=ttypes.TStatusCode.SUCCESS_STATUS)
_QUERY = re.compile(r"\s*(SELECT|WITH|VALUES|FROM|TABLE)\b", re.I)


# --- Spark type names to Arrow -----------------------------------------------------------------------------------

_SIMPLE: dict[str, pa.DataType] = {
    "boolean": pa.bool_(),
    "tinyint": pa.int8(),
    "smallint": pa.int16(),
    "int": pa.int32(),
    "bigint": pa.int64(),
    "float": pa.float32(),
    "double": pa.float64(),
    "string": pa.string(),
    "binary": pa.binary(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="Etc/UTC"),
    "timestamp_ntz": pa.timestamp("us"),
    "void": pa.null(),
    # VARIANT: its JSON text through `to_json()`, as a SQL warehouse sends it (a string column); large_string only
    # marks it for projection() and reaches the connector as a plain str
    "variant": pa.large_string(),
}


def arrow_type(spark: str) -> pa.DataType:
    """The Arrow type a SQL warehouse sends for a Spark type as `DESCRIBE` prints it, e.g. `map<string,int>`."""
    parsed, rest = _parse_type(spark.strip())
    if rest.strip():
        raise ValueError(f"unparsed Spark type text {rest!r} in {spark!r}")
    return parsed


def _parse_type(text: str) -> tuple[pa.DataType, str]:
    name = re.match(r"[a-z_]+", text, re.I)
    if name is None:
        raise ValueError(f"not a Spark type: {text!r}")
    word, rest = name.group(0).lower(), text[name.end() :]
    if word == "decimal":
        found = re.match(r"\((\d+),\s*(\d+)\)", rest)
        precision, scale = (int(found.group(1)), int(found.group(2))) if found else (10, 0)
        return pa.decimal128(precision, scale), rest[found.end() :] if found else rest
    if word in ("varchar", "char"):
        return pa.string(), re.sub(r"^\(\d+\)", "", rest)
    if word == "array":
        item, rest = _parse_type(rest[1:])
        return pa.list_(item), rest[1:]
    if word == "map":
        key, rest = _parse_type(rest[1:])
        value, rest = _parse_type(rest[1:])
        return pa.map_(key, value), rest[1:]
    if word == "struct":
        fields, rest = [], rest[1:]
        while not rest.startswith(">"):
            quoted = re.match(r"`((?:[^`]|``)*)`:|([^:,<>`]+):", rest)
            if quoted is None:
                raise ValueError(f"bad struct field in {text!r}")
            field_name = quoted.group(1).replace("``", "`") if quoted.group(1) is not None else quoted.group(2)
            field_type, rest = _parse_type(rest[quoted.end() :])
            rest = re.sub(r"^\s+(NOT NULL|COMMENT\s+'(?:[^'\\]|\\.)*')", "", rest)
            fields.append(pa.field(field_name.strip(), field_type))
            rest = rest[1:] if rest.startswith(",") else rest
        return pa.struct(fields), rest[1:]
    if word in _SIMPLE:
        return _SIMPLE[word], rest
    raise ValueError(f"unknown Spark type {word!r}")


def _nested(t: pa.DataType) -> bool:
    return bool(pa.types.is_struct(t) or pa.types.is_map(t) or pa.types.is_list(t))


def from_json(value: Any, t: pa.DataType) -> Any:
    """A value of `to_json()` output (decoded with Decimal floats) as pyarrow takes it for type `t`."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        return {f.name: from_json(value.get(f.name), f.type) for f in t}
    if pa.types.is_map(t):
        return [(from_json(_key(k, t.key_type), t.key_type), from_json(v, t.item_type)) for k, v in value.items()]
    if pa.types.is_list(t):
        return [from_json(v, t.value_type) for v in value]
    if pa.types.is_timestamp(t):
        parsed = datetime.fromisoformat(value)
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed
    if pa.types.is_date(t):
        return date.fromisoformat(value)
    if pa.types.is_decimal(t):
        return Decimal(str(value))
    if pa.types.is_floating(t):
        return float(value)
    return value


def _key(key: str, t: pa.DataType) -> Any:
    """JSON object keys are text; a map's keys may be numbers."""
    return int(key) if pa.types.is_integer(t) else key


# --- statements ---------------------------------------------------------------------------------------------------


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def string_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def bind(sql: str, parameters: list[ttypes.TSparkParameter] | None) -> str:
    """`sql` with its named parameters bound by Spark itself, through EXECUTE IMMEDIATE … USING."""
    if not parameters:
        return sql
    using = []
    for p in parameters:
        if not p.name:
            raise ValueError("only named parameters are supported")
        value = p.value.stringValue if p.value is not None else None
        typed = "NULL" if value is None else string_literal(value)
        using.append(f"CAST({typed} AS {p.type or 'STRING'}) AS {p.name}")
    return f"EXECUTE IMMEDIATE {string_literal(sql)} USING {', '.join(using)}"


def projection(columns: list[tuple[str, pa.DataType]]) -> str:
    """The outer select list that gives HiveServer2 text the proxy can turn into exact Arrow values."""
    out = []
    for name, t in columns:
        q = quote(name)
        if pa.types.is_timestamp(t) and t.tz:
            out.append(f"unix_micros({q}) AS {q}")
        elif _nested(t) or pa.types.is_large_string(t):
            out.append(f"to_json({q}) AS {q}")
        else:
            out.append(q)
    return ", ".join(out)


# "[CLASS] org.apache.…Exception: [CLASS] text" and "…HiveSQLException: Error running query: …" in front
_JAVA_PREFIX = re.compile(r"(?:\[[A-Z_.]+\] )?(?:Error running query: |(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*: )")
_SQLSTATE = re.compile(r"SQLSTATE: \w{5}")


def databricks_message(text: str) -> str:
    """HiveServer2's error text as Databricks words it: `[CLASS] message SQLSTATE: xxxxx`, without the Java
    exception classes in front nor the position and analyzed plan after it."""
    text = (text or "").strip()
    while prefix := _JAVA_PREFIX.match(text):
        text = text[prefix.end() :]
    end = _SQLSTATE.search(text)
    return (text[: end.end()] if end else text.split(";\n", 1)[0]).strip()


# --- results ------------------------------------------------------------------------------------------------------


def _nulls(bitmap: bytes, n: int) -> list[bool]:
    return [bool(bitmap[i // 8] >> (i % 8) & 1) if i // 8 < len(bitmap) else False for i in range(n)]


def _column_values(column: ttypes.TColumn) -> list[Any]:
    for kind in ("boolVal", "byteVal", "i16Val", "i32Val", "i64Val", "doubleVal", "stringVal", "binaryVal"):
        typed = getattr(column, kind)
        if typed is not None:
            values = list(typed.values)
            return [
                None if null else v for v, null in zip(values, _nulls(typed.nulls or b"", len(values)), strict=True)
            ]
    return []


def _arrow_column(values: list[Any], t: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(t) and t.tz:  # unix_micros()
        return pa.array(values, pa.int64()).cast(t)
    if _nested(t):
        return pa.array([None if v is None else from_json(json.loads(v, parse_float=Decimal), t) for v in values], t)
    if pa.types.is_timestamp(t):
        return pa.array([None if v is None else datetime.fromisoformat(v) for v in values], t)
    if pa.types.is_date(t):
        return pa.array([None if v is None else date.fromisoformat(v) for v in values], t)
    if pa.types.is_decimal(t):
        return pa.array([None if v is None else Decimal(v) for v in values], t)
    if pa.types.is_null(t):
        return pa.nulls(len(values))
    if pa.types.is_string(t):  # also the text of statements that are not queries (SET, SHOW, DESCRIBE …)
        return pa.array([None if v is None else str(v) for v in values], t)
    return pa.array(values, t)


_TYPE_IDS = [
    (pa.types.is_boolean, ttypes.TTypeId.BOOLEAN_TYPE),
    (pa.types.is_int8, ttypes.TTypeId.TINYINT_TYPE),
    (pa.types.is_int16, ttypes.TTypeId.SMALLINT_TYPE),
    (pa.types.is_int32, ttypes.TTypeId.INT_TYPE),
    (pa.types.is_int64, ttypes.TTypeId.BIGINT_TYPE),
    (pa.types.is_float32, ttypes.TTypeId.FLOAT_TYPE),
    (pa.types.is_float64, ttypes.TTypeId.DOUBLE_TYPE),
    (pa.types.is_string, ttypes.TTypeId.STRING_TYPE),
    (pa.types.is_large_string, ttypes.TTypeId.STRING_TYPE),  # VARIANT, as a SQL warehouse describes it
    (pa.types.is_binary, ttypes.TTypeId.BINARY_TYPE),
    (pa.types.is_date, ttypes.TTypeId.DATE_TYPE),
    (pa.types.is_timestamp, ttypes.TTypeId.TIMESTAMP_TYPE),
    (pa.types.is_decimal, ttypes.TTypeId.DECIMAL_TYPE),
    (pa.types.is_struct, ttypes.TTypeId.STRUCT_TYPE),
    (pa.types.is_map, ttypes.TTypeId.MAP_TYPE),
    (pa.types.is_list, ttypes.TTypeId.ARRAY_TYPE),
    (pa.types.is_null, ttypes.TTypeId.NULL_TYPE),
]


def thrift_schema(schema: pa.Schema) -> ttypes.TTableSchema:
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
        type_id = next(tid for check, tid in _TYPE_IDS if check(f.type))
        entry = ttypes.TTypeEntry(primitiveEntry=ttypes.TPrimitiveTypeEntry(type=type_id, typeQualifiers=qualifiers))
        columns.append(ttypes.TColumnDesc(columnName=f.name, typeDesc=ttypes.TTypeDesc(types=[entry]), position=i + 1))
    return ttypes.TTableSchema(columns=columns)


@dataclass
class _Operation:
    schema: pa.Schema
    offset: int = 0


# --- the service --------------------------------------------------------------------------------------------------


class _Handler:
    """TCLIService calls from the connector, forwarded to HiveServer2 with the differences mended."""

    def __init__(self, host: str, port: int) -> None:
        socket = TSocket.TSocket(host, port)
        socket.setTimeout(600_000)
        self._transport = TTransport.TBufferedTransport(socket)
        self._hive = TCLIService.Client(TBinaryProtocol.TBinaryProtocol(self._transport))
        self._transport.open()
        self._lock = threading.Lock()  # one HiveServer2 connection, one call at a time
        self._operations: dict[bytes, _Operation] = {}

    def close(self) -> None:
        self._transport.close()

    def _call(self, method: str, req: Any) -> Any:
        with self._lock:
            return getattr(self._hive, method)(req)

    def OpenSession(self, req: ttypes.TOpenSessionReq) -> ttypes.TOpenSessionResp:
        resp = self._call(
            "OpenSession", ttypes.TOpenSessionReq(client_protocol=HIVE_PROTOCOL, username="cdi", configuration={})
        )
        if resp.sessionHandle is not None:
            resp.sessionHandle.serverProtocolVersion = PROTOCOL
        resp.serverProtocolVersion = PROTOCOL
        resp.canUseMultipleCatalogs = True
        return resp

    def CloseSession(self, req: ttypes.TCloseSessionReq) -> ttypes.TCloseSessionResp:
        return self._call("CloseSession", ttypes.TCloseSessionReq(sessionHandle=req.sessionHandle))

    def _execute(self, session: ttypes.TSessionHandle, sql: str) -> ttypes.TExecuteStatementResp:
        resp = self._call("ExecuteStatement", ttypes.TExecuteStatementReq(sessionHandle=session, statement=sql))
        if resp.status.statusCode == ttypes.TStatusCode.ERROR_STATUS:
            resp.status.errorMessage = databricks_message(resp.status.errorMessage)
        return resp

    def _rows(self, handle: ttypes.TOperationHandle) -> list[list[Any]]:
        """Every row of a small result (DESCRIBE QUERY), as Python values."""
        resp = self._call(
            "FetchResults",
            ttypes.TFetchResultsReq(
                operationHandle=handle, orientation=ttypes.TFetchOrientation.FETCH_NEXT, maxRows=10_000
            ),
        )
        self._call("CloseOperation", ttypes.TCloseOperationReq(operationHandle=handle))
        columns = [_column_values(c) for c in resp.results.columns or []]
        return [list(r) for r in zip(*columns, strict=True)]

    def ExecuteStatement(self, req: ttypes.TExecuteStatementReq) -> ttypes.TExecuteStatementResp:
        statement = req.statement.strip().rstrip(";")
        session = req.sessionHandle
        try:
            bind(statement, req.parameters)
        except ValueError as exc:
            return ttypes.TExecuteStatementResp(
                status=ttypes.TStatus(statusCode=ttypes.TStatusCode.ERROR_STATUS, errorMessage=str(exc))
            )
        if not _QUERY.match(statement):
            resp = self._execute(session, bind(statement, req.parameters))
            if resp.operationHandle is not None:
                schema = self._call(
                    "GetResultSetMetadata", ttypes.TGetResultSetMetadataReq(operationHandle=resp.operationHandle)
                ).schema
                fields = [pa.field(c.columnName, pa.string()) for c in (schema.columns if schema else [])]
                self._operations[resp.operationHandle.operationId.guid] = _Operation(pa.schema(fields))
            return resp
        described = self._execute(session, bind(f"DESCRIBE QUERY {statement}", req.parameters))
        if described.status.statusCode == ttypes.TStatusCode.ERROR_STATUS:
            return described
        columns = [(str(name), arrow_type(str(t))) for name, t, *_ in self._rows(described.operationHandle)]
        wrapped = f"SELECT {projection(columns)} FROM ({statement}) AS q" if columns else statement
        resp = self._execute(session, bind(wrapped, req.parameters))
        if resp.operationHandle is not None:
            schema = pa.schema([pa.field(name, t) for name, t in columns])
            self._operations[resp.operationHandle.operationId.guid] = _Operation(schema)
        return resp

    def GetOperationStatus(self, req: ttypes.TGetOperationStatusReq) -> ttypes.TGetOperationStatusResp:
        resp = self._call("GetOperationStatus", ttypes.TGetOperationStatusReq(operationHandle=req.operationHandle))
        if resp.errorMessage:
            resp.errorMessage = resp.displayMessage = databricks_message(resp.errorMessage)
        return resp

    def GetResultSetMetadata(self, req: ttypes.TGetResultSetMetadataReq) -> ttypes.TGetResultSetMetadataResp:
        return self._metadata(self._operations[req.operationHandle.operationId.guid])

    @staticmethod
    def _metadata(op: _Operation) -> ttypes.TGetResultSetMetadataResp:
        return ttypes.TGetResultSetMetadataResp(
            status=SUCCESS,
            schema=thrift_schema(op.schema),
            resultFormat=ttypes.TSparkRowSetType.ARROW_BASED_SET,
            lz4Compressed=False,
            arrowSchema=op.schema.serialize().to_pybytes(),
            isStagingOperation=False,
        )

    def FetchResults(self, req: ttypes.TFetchResultsReq) -> ttypes.TFetchResultsResp:
        op = self._operations[req.operationHandle.operationId.guid]
        resp = self._call(
            "FetchResults",
            ttypes.TFetchResultsReq(
                operationHandle=req.operationHandle,
                orientation=ttypes.TFetchOrientation.FETCH_NEXT,
                maxRows=max(1, req.maxRows or 10_000),
            ),
        )
        if resp.status.statusCode == ttypes.TStatusCode.ERROR_STATUS:
            resp.status.errorMessage = databricks_message(resp.status.errorMessage)
            return resp
        values = [_column_values(c) for c in resp.results.columns or []]
        rows = len(values[0]) if values else 0
        batch = None
        if rows:
            arrays = [_arrow_column(v, f.type) for v, f in zip(values, op.schema, strict=True)]
            batch = pa.RecordBatch.from_arrays(arrays, schema=op.schema)
        start, op.offset = op.offset, op.offset + rows
        return ttypes.TFetchResultsResp(
            status=SUCCESS,
            hasMoreRows=rows > 0,
            results=ttypes.TRowSet(
                startRowOffset=start,
                rows=[],
                arrowBatches=[ttypes.TSparkArrowBatch(batch=batch.serialize().to_pybytes(), rowCount=rows)]
                if batch is not None
                else [],
            ),
            resultSetMetadata=self._metadata(op),
        )

    def CloseOperation(self, req: ttypes.TCloseOperationReq) -> ttypes.TCloseOperationResp:
        self._operations.pop(req.operationHandle.operationId.guid, None)
        return self._call("CloseOperation", ttypes.TCloseOperationReq(operationHandle=req.operationHandle))

    def CancelOperation(self, req: ttypes.TCancelOperationReq) -> ttypes.TCancelOperationResp:
        return self._call("CancelOperation", ttypes.TCancelOperationReq(operationHandle=req.operationHandle))


class DatabricksProxy:
    """`with DatabricksProxy(hive_port, token) as proxy:` serves the connector on `proxy.url` + any HTTP path."""

    def __init__(self, hive_host: str, hive_port: int, token: str) -> None:
        self.token = token
        self._handler = _Handler(hive_host, hive_port)
        self._processor = TCLIService.Processor(self._handler)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._request_handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self, http_path: str) -> Any:
        """A connector session through the proxy with its token, for setting tables up (tests, benchmarks)."""
        from databricks import sql as dbsql

        return dbsql.connect(
            server_hostname="127.0.0.1",
            http_path=http_path,
            access_token=self.token,
            _connection_uri=self.url + http_path,
            enable_telemetry=False,
        )

    def __enter__(self) -> DatabricksProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._handler.close()

    def _request_handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(ThriftHttpHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Authorization", "") != f"Bearer {proxy.token}":
                    self._reply(401, b"", {"x-databricks-reason-phrase": "Invalid access token."})
                    return
                self._thrift(proxy._processor, body)

        return Handler
