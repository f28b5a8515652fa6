"""Which warehouse and table a watermark belongs to, so that a run on another source starts from the beginning.

The identity names the data, not the way in: the warehouse (Snowflake account, Redshift host and port, BigQuery
project, Databricks workspace hostname, DuckDB file) and the table's qualified name with the defaults the reader
applies filled in. A user, role, password, key, SQL warehouse, HTTP path, SSH tunnel or location is left out, so
rotating to another credential for the same warehouse and table keeps the watermark. Names are compared
case-insensitively, as the readers look them up (a DuckDB file's path excepted).

A watermark saved before identities existed has none and is kept (`source_changed`); the next save adds it.
"""

from __future__ import annotations

from cdi_operator.api.models import (
    BigQuerySpec,
    DatabricksSpec,
    DuckDBSpec,
    RedshiftSpec,
    SnowflakeSpec,
    SourceTable,
    WarehouseCredentialSpec,
    Watermark,
)


def source_identity(credential: WarehouseCredentialSpec, source: SourceTable) -> str:
    """E.g. `redshift://cluster.example.com:5439/dev.public.users`."""
    parts = list(source.qualified_parts(credential.type))
    match credential.settings:
        case SnowflakeSpec(account=account):
            where = account
        case RedshiftSpec(host=host, port=port):
            where = f"{host}:{port}"
        case BigQuerySpec(project=project):
            where = project
            if len(parts) == 2:
                parts.insert(0, project)
        case DatabricksSpec(server_hostname=hostname, catalog=catalog):
            where = hostname
            if len(parts) == 2 and catalog:
                parts.insert(0, catalog)
        case DuckDBSpec(path=path):
            return f"duckdb://{path}/{'.'.join(parts).lower()}"  # a file name is case-sensitive
    return f"{credential.type.value}://{where}/{'.'.join(parts)}".lower()


def source_changed(watermark: Watermark | None, identity: str | None) -> str | None:
    """The watermark's own source when it is not `identity` (the run must start from the beginning), else None."""
    if watermark is None or watermark.source is None or identity is None or watermark.source == identity:
        return None
    return watermark.source
