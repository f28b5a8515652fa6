"""The pieces of databricks_proxy.py on their own: Spark type text to Arrow, parameter binding, the projection that
makes HiveServer2's text exact, and Databricks-shaped error texts. The proxy end to end is test_warehouse_spark.py."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from databricks.sql.thrift_api.TCLIService import ttypes
from databricks_proxy import arrow_type, bind, databricks_message, from_json, projection


def test_spark_types_to_arrow() -> None:
    assert arrow_type("timestamp") == pa.timestamp("us", tz="Etc/UTC")
    assert arrow_type("timestamp_ntz") == pa.timestamp("us")
    assert arrow_type("decimal(38,0)") == pa.decimal128(38, 0)
    assert arrow_type("varchar(10)") == pa.string()
    assert arrow_type("map<string,array<int>>") == pa.map_(pa.string(), pa.list_(pa.int32()))
    assert arrow_type("struct<a:int,`b ``k`:struct<n:bigint>,c:decimal(10,2) NOT NULL>") == pa.struct(
        [
            pa.field("a", pa.int32()),
            pa.field("b `k", pa.struct([pa.field("n", pa.int64())])),
            pa.field("c", pa.decimal128(10, 2)),
        ]
    )
    with pytest.raises(ValueError, match="unknown Spark type"):
        arrow_type("interval day")


def test_nested_json_back_to_arrow_values() -> None:
    t = arrow_type("struct<price:decimal(10,2),since:date,seen:timestamp,m:map<int,double>>")
    text = '{"price":9.90,"since":"2025-12-31","seen":"2026-02-01T08:30:00.123Z","m":{"1":2.5}}'
    value = from_json(json.loads(text, parse_float=Decimal), t)
    assert value == {
        "price": Decimal("9.90"),
        "since": date(2025, 12, 31),
        "seen": datetime(2026, 2, 1, 8, 30, 0, 123000, tzinfo=UTC),
        "m": [(1, 2.5)],
    }
    assert pa.array([value], t).to_pylist()[0]["m"] == [(1, 2.5)]


def test_named_parameters_are_bound_by_spark() -> None:
    since = ttypes.TSparkParameter(
        name="since", type="TIMESTAMP", value=ttypes.TSparkParameterValue("2026-03-01 12:00:00+00:00")
    )
    empty = ttypes.TSparkParameter(name="x", type="STRING", value=None)
    assert bind("SELECT 1 WHERE t >= :since AND 'it''s'", [since, empty]) == (
        "EXECUTE IMMEDIATE 'SELECT 1 WHERE t >= :since AND \\'it\\'\\'s\\'' "
        "USING CAST('2026-03-01 12:00:00+00:00' AS TIMESTAMP) AS since, CAST(NULL AS STRING) AS x"
    )
    assert bind("SELECT 1", None) == "SELECT 1"
    with pytest.raises(ValueError, match="named"):
        bind("SELECT ?", [ttypes.TSparkParameter(ordinal=1, type="INT", value=ttypes.TSparkParameterValue("1"))])


def test_projection_makes_timestamps_and_nested_values_exact() -> None:
    columns = [
        ("t", arrow_type("timestamp")),
        ("n", arrow_type("timestamp_ntz")),
        ("odd `c`", arrow_type("map<string,int>")),
        ("v", arrow_type("variant")),
    ]
    assert projection(columns) == (
        "unix_micros(`t`) AS `t`, `n`, to_json(`odd ``c```) AS `odd ``c```, to_json(`v`) AS `v`"
    )


def test_error_text_as_databricks_words_it() -> None:
    hive = (
        "[TABLE_OR_VIEW_NOT_FOUND] org.apache.spark.sql.AnalysisException: [TABLE_OR_VIEW_NOT_FOUND] The table or "
        "view `s`.`t` cannot be found. Verify the spelling.\nSearch path: [`spark_catalog`.`default`]. "
        "SQLSTATE: 42P01; line 1 pos 14;\n'Project [*]\n+- 'UnresolvedRelation [s, t]"
    )
    assert databricks_message(hive) == (
        "[TABLE_OR_VIEW_NOT_FOUND] The table or view `s`.`t` cannot be found. Verify the spelling.\n"
        "Search path: [`spark_catalog`.`default`]. SQLSTATE: 42P01"
    )
    parse = (
        "org.apache.hive.service.cli.HiveSQLException: Error running query: org.apache.spark.sql.catalyst.parser."
        "ParseException: [PARSE_SYNTAX_ERROR] Syntax error at or near 'x'. SQLSTATE: 42601 (line 1, pos 2)"
    )
    assert databricks_message(parse) == "[PARSE_SYNTAX_ERROR] Syntax error at or near 'x'. SQLSTATE: 42601"
