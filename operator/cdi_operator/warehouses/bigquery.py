"""Google BigQuery through the official `google-cloud-bigquery` client (REST API v2).

Credentials: the service-account JSON key from `spec.bigquery.serviceAccountKeySecretRef`, through
`google.oauth2.service_account` (scope `…/auth/bigquery`); queries run as jobs in `spec.bigquery.project` (the
billing project) and `spec.bigquery.location` when set. The key needs roles/bigquery.jobUser on that project and
roles/bigquery.dataViewer on the source dataset (or table/view).

Requests carry a self-signed JWT (`always_use_jwt_access`, Google's AIP-4111): the token is signed with the key's
private key and scoped, so no OAuth exchange with oauth2.googleapis.com is needed, and a stand-in can verify it with
the key's public half. `connect()` makes one request, a dry-run `SELECT 1` job (free, and it needs jobs.create on
the billing project), so that a revoked key or a missing role fails the credential's connection test.

Tests and local runs point the client at a stand-in with `CDI_BIGQUERY_API_ENDPOINT=http://host:port`.

Reading: one query job per read, `SELECT <columns> FROM <table> WHERE UPDATED_AT >= @since AND UPDATED_AT <= @until
ORDER BY UPDATED_AT`, the bounds as typed query parameters (TIMESTAMP, or DATETIME / DATE
for such a column), never text in the SQL. Results are streamed page by page through jobs.getQueryResults
(`result(page_size=chunk_rows).pages`), so memory holds one page; BigQuery itself may return fewer rows than asked
(it caps a page at about 10 MB). The BigQuery Storage Read API (faster, gRPC) is not used: it needs the optional
`google-cloud-bigquery-storage` package and cannot be exercised offline.

Types: UPDATED_AT of type TIMESTAMP arrives as aware UTC; DATETIME and DATE (no zone) are taken as UTC. PAYLOAD of
type JSON arrives as the parsed value (a dict for an object; older clients give the JSON text, which is passed on
as text), STRUCT/RECORD as a dict, STRING as JSON text. Identifiers are quoted with backticks, each part of the
table path on its own (domain-scoped projects like `example.com:proj` included).

Costs: BigQuery bills the bytes of the selected columns of the whole table (or of the partitions a filter on the
partitioning column prunes). `preview` reads the newest rows with ORDER BY … LIMIT, which is billed like a scan.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.api_core.client_info import ClientInfo
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.cloud import bigquery
from google.cloud.bigquery.retry import DEFAULT_RETRY
from google.oauth2 import service_account

from cdi_operator.api.models import BigQuerySpec
from cdi_operator.warehouses import secret_value
from cdi_operator.warehouses.base import Column, FailureReason, WarehouseError, bound_for_column
from cdi_operator.warehouses.sql import Dialect, Select, SqlWarehouse, Table, failure, utc_at

ENDPOINT_ENV = "CDI_BIGQUERY_API_ENDPOINT"
SCOPES = ("https://www.googleapis.com/auth/bigquery",)
# How long one API call is retried on transient errors (5xx, rate limits, dropped connections) before the sync
# fails with the reason; the client's own default is ten minutes.
RETRY_SECONDS = 60.0
HTTP_TIMEOUT_SECONDS = 120.0
# How long a query job may run before the read gives up and cancels it (BigQuery also stops it then, through the
# job's jobTimeoutMs). Jobs are polled with jobs.get, so HTTP_TIMEOUT_SECONDS stays a per-request bound.
QUERY_TIMEOUT_SECONDS = 3600.0
POLL_SECONDS = (0.1, 1.0)  # first and longest pause between polls of a running job
# The most rows one page of results asks for: BigQuery answers at most ~10 MB per page anyway.
MAX_PAGE_ROWS = 20_000
USER_AGENT = "cdi-operator"

_KEY_FIELDS = ("type", "project_id", "private_key", "client_email", "token_uri")


def connect(settings: BigQuerySpec, secrets: Mapping[tuple[str, str], str]) -> BigQueryWarehouse:
    """A client for `settings.project`, checked with one dry-run job; raises WarehouseError (AuthFailed for a
    malformed, revoked or disabled key, PermissionDenied without jobs.create)."""
    key_text = secret_value(secrets, settings.service_account_key_secret_ref)
    info = _parse_key(key_text, settings)
    try:
        sa_credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=SCOPES, always_use_jwt_access=True
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{_key_where(settings)} is not a usable service-account key ({type(exc).__name__}: its "
            f"private_key could not be read); download a new JSON key for the service account",
        ) from None
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip() or None
    client = bigquery.Client(
        project=settings.project,
        credentials=sa_credentials,
        location=settings.location,
        client_info=ClientInfo(user_agent=USER_AGENT),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=endpoint) if endpoint else None,
    )
    warehouse = BigQueryWarehouse(client, settings, info, endpoint or "https://bigquery.googleapis.com")
    try:
        warehouse.check_access()
    except WarehouseError:
        warehouse.close()
        raise
    return warehouse


def quote_ident(name: str) -> str:
    """One identifier quoted by GoogleSQL's rules: in backticks, with backslashes and backticks escaped."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


# UPDATED_AT column types the adapter reads → the type of the window-bound query parameters (BigQuery compares
# TIMESTAMP only with TIMESTAMP, DATETIME with DATETIME)
_TIMESTAMP_KINDS = {"TIMESTAMP": "TIMESTAMP", "DATETIME": "DATETIME", "DATE": "DATE"}


def _bound(name: str, kind: str, value: datetime) -> bigquery.ScalarQueryParameter:
    """A window bound typed like the column: BigQuery does not compare TIMESTAMP with DATETIME implicitly."""
    if kind == "TIMESTAMP":
        return bigquery.ScalarQueryParameter(name, "TIMESTAMP", bound_for_column(value, naive_column=False))
    naive = bound_for_column(value, naive_column=True)
    if kind == "DATE":
        return bigquery.ScalarQueryParameter(name, "DATE", naive.date())
    return bigquery.ScalarQueryParameter(name, "DATETIME", naive)


DIALECT = Dialect(
    quote=quote_ident,
    placeholder="@{name}",
    bind=_bound,
    timestamp_kind=_TIMESTAMP_KINDS.get,
    updated_at_types="TIMESTAMP (or DATETIME in UTC)",
    missing_hint=" (TIMESTAMP)",
    fetch_rows=MAX_PAGE_ROWS,
)


class BigQueryWarehouse(SqlWarehouse):
    dialect = DIALECT

    def __init__(self, client: bigquery.Client, settings: BigQuerySpec, key: Mapping[str, Any], endpoint: str) -> None:
        super().__init__()
        self._client = client
        self._settings = settings
        self._key = key
        self._endpoint = endpoint
        self._retry = DEFAULT_RETRY.with_timeout(RETRY_SECONDS)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def check_access(self) -> None:
        """A dry-run job in the billing project: it authenticates the key and needs jobs.create, and costs nothing."""
        config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False, use_legacy_sql=False)
        try:
            self._client.query(
                "SELECT 1", job_config=config, retry=self._retry, job_retry=None, timeout=HTTP_TIMEOUT_SECONDS
            )
        except _CLIENT_ERRORS as exc:
            project = self._settings.project
            raise self._failure(exc, Table((project, ""), shown=f"project {project}")) from None

    # --- the adapter's own part -------------------------------------------------------------------------------

    def _resolve(self, table: Sequence[str]) -> Table:
        parts = list(table)
        if len(parts) == 2:
            parts.insert(0, self._settings.project)
        if len(parts) != 3:
            raise WarehouseError(
                FailureReason.TABLE_MISSING,
                f"name the BigQuery table as project/dataset/table (spec.source.project is optional), "
                f"not {'.'.join(parts)!r}",
            )
        project, dataset, name = parts
        probe = Table((project, dataset, name))
        reference = bigquery.DatasetReference(project, dataset).table(name)
        try:
            found = self._client.get_table(reference, retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS)
        except _CLIENT_ERRORS as exc:
            raise self._failure(exc, probe) from None
        columns = tuple(Column(f.name, _type_name(f)) for f in found.schema)
        return Table(probe.parts, columns)

    def _query(self, sql: str, params: list[bigquery.ScalarQueryParameter]) -> bigquery.QueryJob:
        config = bigquery.QueryJobConfig(query_parameters=params, use_legacy_sql=False, labels={"app": "cdi-operator"})
        config.job_timeout_ms = int(QUERY_TIMEOUT_SECONDS * 1000)
        return self._client.query(sql, job_config=config, retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS)

    def _finished(self, job: bigquery.QueryJob, table: Table) -> bigquery.QueryJob:
        """`job` once it is DONE (failed or not), polled through jobs.get: `result(timeout=…)` would bound the
        whole wait and each HTTP request by the same number. Cancels the job after QUERY_TIMEOUT_SECONDS."""
        deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
        pause = POLL_SECONDS[0]
        while not job.done(retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS):
            if time.monotonic() + pause > deadline:
                with contextlib.suppress(*_CLIENT_ERRORS):
                    job.cancel(retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS)
                raise WarehouseError(
                    FailureReason.QUERY_FAILED,
                    f"the query on {table.display} ran longer than {QUERY_TIMEOUT_SECONDS:g} s and was cancelled "
                    f"(job {job.job_id}); partition or cluster the table on UPDATED_AT, or sync more often",
                )
            time.sleep(pause)
            pause = min(pause * 2, POLL_SECONDS[1])
        return job

    def _fetch(self, table: Table, select: Select) -> list[tuple[Any, ...]]:
        try:
            job = self._finished(self._query(select.sql, select.params), table)
            result = job.result(retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS)
            return [_utc_at(row[:], select) for row in result]  # a Row's slice is its plain tuple of values
        except _CLIENT_ERRORS as exc:
            raise self._failure(exc, table) from None

    def _stream(self, table: Table, select: Select, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        try:
            rows = self._finished(self._query(select.sql, select.params), table).result(
                page_size=fetch_rows, retry=self._retry, timeout=HTTP_TIMEOUT_SECONDS
            )
            for page in rows.pages:
                chunk = [_utc_at(row[:], select) for row in page]
                for start in range(0, len(chunk), fetch_rows):  # pages never exceed maxResults; this is a guard
                    yield chunk[start : start + fetch_rows]
        except _CLIENT_ERRORS as exc:
            raise self._failure(exc, table) from None

    def _failure(self, exc: BaseException, table: Table) -> WarehouseError:
        reason, advice = _classify(exc, table, self._settings, str(self._key.get("client_email", "?")), self._endpoint)
        secrets = (self._key.get(name) for name in ("private_key", "private_key_id"))
        return failure(reason, advice, "", _detail(exc), [s for s in secrets if isinstance(s, str) and len(s) >= 8])


_CLIENT_ERRORS = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    requests.exceptions.RequestException,
    concurrent.futures.TimeoutError,
    OSError,
)


def _parse_key(text: str, settings: BigQuerySpec) -> dict[str, Any]:
    """The key's JSON object; WarehouseError(AuthFailed) naming what is wrong, never quoting the key."""
    try:
        info = json.loads(text)
    except ValueError as exc:
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{_key_where(settings)} is not JSON (line {exc.lineno if hasattr(exc, 'lineno') else '?'}); put the "
            f"service account's JSON key file there whole, e.g. kubectl create secret generic "
            f"{settings.service_account_key_secret_ref.name} --from-file="
            f"{settings.service_account_key_secret_ref.key}=key.json",
        ) from None
    if not isinstance(info, dict):
        raise WarehouseError(
            FailureReason.AUTH_FAILED, f"{_key_where(settings)} is JSON but not an object; use the JSON key file"
        )
    missing = [name for name in _KEY_FIELDS if not isinstance(info.get(name), str) or not info[name]]
    if missing:
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{_key_where(settings)} lacks {', '.join(missing)}; it must be a service-account JSON key "
            f"(IAM → Service accounts → Keys → Add key → JSON)",
        )
    if info["type"] != "service_account":
        raise WarehouseError(
            FailureReason.AUTH_FAILED,
            f"{_key_where(settings)} is a {info['type']!r} credential; only service-account JSON keys "
            f"(type 'service_account') are supported",
        )
    return info


def _key_where(settings: BigQuerySpec) -> str:
    ref = settings.service_account_key_secret_ref
    return f"the value of Secret {ref.name!r} key {ref.key!r}"


def _type_name(field: bigquery.SchemaField) -> str:
    kind = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}.get(
        field.field_type, field.field_type
    )
    return f"ARRAY<{kind}>" if field.mode == "REPEATED" else kind


def _utc_at(row: tuple[Any, ...], select: Select) -> tuple[Any, ...]:
    """The row with a DATETIME / DATE UPDATED_AT made aware UTC; a TIMESTAMP arrives so already."""
    return row if select.kind == "TIMESTAMP" else utc_at(row, select.updated_at)


# --- errors -------------------------------------------------------------------------------------------------


def _detail(exc: BaseException) -> str:
    text = str(exc.message or "") if isinstance(exc, api_exceptions.GoogleAPICallError) else str(exc)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first[:500] or type(exc).__name__


def _api_reason(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None) or []
    if errors and isinstance(errors[0], dict):
        return str(errors[0].get("reason", ""))
    return ""


def _classify(
    exc: BaseException, table: Table, settings: BigQuerySpec, email: str, endpoint: str
) -> tuple[FailureReason, str]:
    if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
        exc = exc.cause
    project, dataset = table.parts[:2]
    ref = settings.service_account_key_secret_ref
    text = str(getattr(exc, "message", "") or exc)
    if isinstance(exc, auth_exceptions.RefreshError):
        return FailureReason.AUTH_FAILED, (
            f"Google refused the service-account key of {email}: the key may be deleted or disabled, or the "
            f"account removed; create a new JSON key and put it in Secret {ref.name!r} key {ref.key!r}"
        )
    # A 401 makes the transport refresh the token and retry; a 401 after that is Unauthorized. (Anonymous
    # credentials, with a stand-in, cannot refresh: InvalidOperation.)
    unauthorized = isinstance(exc, auth_exceptions.GoogleAuthError) and not isinstance(
        exc, auth_exceptions.TransportError
    )
    if isinstance(exc, api_exceptions.Unauthorized) or unauthorized:
        return FailureReason.AUTH_FAILED, (
            f"BigQuery did not accept the credentials of {email}; check the key in Secret {ref.name!r} key {ref.key!r}"
        )
    if isinstance(exc, api_exceptions.Forbidden):
        reason = _api_reason(exc)
        if reason in ("accessDenied", "") or "Access Denied" in text or "permission" in text.lower():
            return FailureReason.PERMISSION_DENIED, (
                f"{email} may not read {table.display}: grant it roles/bigquery.dataViewer on dataset "
                f"{project}.{dataset} (or the table) and roles/bigquery.jobUser on project "
                f"{settings.project}"
            )
        return FailureReason.QUERY_FAILED, f"BigQuery refused the query on {table.display} ({reason})"
    if isinstance(exc, api_exceptions.NotFound):
        where = f" in location {settings.location}" if settings.location else ""
        # "Not found: Dataset p:d" / "Not found: Table p:d.t" from BigQuery; other servers word it differently
        # ("dataset d is not found"): the first of the words names what is missing.
        said = " ".join(str(e.get("message", "")) for e in exc.errors if isinstance(e, dict)) or text
        missing = re.search(r"(?<![\w./:-])(project|dataset|table)(?![\w-])", said, re.I)
        what = missing.group(1).lower() if missing else ""
        if what == "dataset":
            return FailureReason.DATABASE_MISSING, (
                f"dataset {project}:{dataset} does not exist{where} or {email} cannot see it: check "
                f"spec.source.dataset/project and spec.bigquery.location"
            )
        if what == "project":
            return FailureReason.DATABASE_MISSING, (
                f"project {project} does not exist or {email} cannot see it: check spec.source.project "
                f"and spec.bigquery.project"
            )
        if what == "table":
            return FailureReason.TABLE_MISSING, (
                f"table or view {table.display} does not exist{where}: check spec.source.table"
            )
        return FailureReason.QUERY_FAILED, f"a BigQuery call for {table.display} found nothing"
    if isinstance(exc, api_exceptions.BadRequest):
        if "Unrecognized name" in text or ("Name " in text and "not found" in text):
            return FailureReason.COLUMN_MISSING, f"a column is missing from {table.display}"
        return FailureReason.QUERY_FAILED, f"BigQuery rejected the query on {table.display}"
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | auth_exceptions.TransportError
        | concurrent.futures.TimeoutError
        | OSError,
    ):
        return FailureReason.UNREACHABLE, (
            f"cannot reach BigQuery at {endpoint}: let the runner reach bigquery.googleapis.com and "
            f"oauth2.googleapis.com on port 443 (egress rules, proxy settings)"
        )
    if isinstance(exc, api_exceptions.ServiceUnavailable | api_exceptions.InternalServerError):
        return FailureReason.UNREACHABLE, "BigQuery is unavailable right now; the next sync tries again"
    return FailureReason.QUERY_FAILED, f"a BigQuery call for {table.display} failed"
