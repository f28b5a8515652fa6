"""Pydantic models of the cdi.ingest.dev/v1alpha1 resources: the single source of the CRDs.

Field names are camelCase as users write them in YAML. Every check a user can get wrong is here, with a message
that names the field and the fix, so that `cdi sync -f`, the admission webhook and the operator all say the same.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cdi_operator.api.schedule import ScheduleError, validate_schedule, validate_time_zone

GROUP = "cdi.ingest.dev"
VERSION = "v1alpha1"
API_VERSION: Literal["cdi.ingest.dev/v1alpha1"] = "cdi.ingest.dev/v1alpha1"
CDI_PLURAL, WHC_PLURAL, WORKSPACE_PLURAL = "cdiintegrations", "warehousecredentials", "brazeworkspaces"

SYNC_NOW_ANNOTATION = f"{GROUP}/sync-now"
TEST_CONNECTION_ANNOTATION = f"{GROUP}/test-connection"
ROTATE_KEY_ANNOTATION = f"{GROUP}/rotate-key"
REWIND_ANNOTATION = f"{GROUP}/rewind"
REWIND_FULL = "full"
RUN_LEASE_PREFIX = "cdi-run-"
RUN_HISTORY_MAX = 50

_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"
# Table, schema and database names we quote ourselves: letters, digits, '_', '$' and '-' (BigQuery projects) only,
# so that no name can carry a quote, a dot or a control character into SQL.
_SQL_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_$-]{0,254}$"
_HOSTNAME = r"^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def run_lease_name(integration: str) -> str:
    """The coordination.k8s.io Lease that the runs of CdiIntegration `integration` claim (one run at a time)."""
    name = RUN_LEASE_PREFIX + integration
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(integration.encode()).hexdigest()[:10]
    return f"{name[:242].rstrip('-.')}-{digest}"


SqlName = Annotated[str, Field(pattern=_SQL_NAME, description="A name we quote by the warehouse's own rules.")]
Hostname = Annotated[str, Field(pattern=_HOSTNAME, max_length=253)]


class DataType(StrEnum):
    CUSTOM_ATTRIBUTES = "customAttributes"
    CUSTOM_EVENTS = "customEvents"
    PURCHASE_EVENTS = "purchaseEvents"
    USER_DELETES = "userDeletes"
    CATALOG_ITEMS = "catalogItems"


class WarehouseType(StrEnum):
    SNOWFLAKE = "snowflake"
    REDSHIFT = "redshift"
    BIGQUERY = "bigquery"
    DATABRICKS = "databricks"
    DUCKDB = "duckdb"


class Phase(StrEnum):
    DRAFT = "Draft"
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    FAILED = "Failed"


class RunResult(StrEnum):
    RUNNING = "Running"
    SUCCESS = "Success"
    PARTIAL = "Partial"
    ERROR = "Error"
    LIMIT_EXCEEDED = "LimitExceeded"
    SKIPPED = "Skipped"  # another run held the integration: nothing read, nothing sent


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=False)


class SecretKeyRef(Model):
    """A key of a Secret in the same namespace."""

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="Name of the Secret.")
    key: str = Field(pattern=_SECRET_KEY, description="Key inside the Secret's data.")


# --- WarehouseCredential -------------------------------------------------------------------------------------------


class SnowflakeSpec(Model):
    account: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$", description="Account identifier, e.g. 'myorg-myaccount'."
    )
    user: SqlName
    role: SqlName
    warehouse: SqlName
    private_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        alias="privateKeySecretRef",
        description="Leave unset: the operator generates a key pair into the Secret <credential>-snowflake-key "
        "and uses it. Set it only to bring your own key (e.g. for `cdi sync -f`).",
    )


class SshTunnelSpec(Model):
    host: Hostname
    port: int = Field(default=22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64)
    private_key_secret_ref: SecretKeyRef = Field(alias="privateKeySecretRef")
    host_key: str | None = Field(
        default=None,
        alias="hostKey",
        description="The bastion's public host key ('ssh-ed25519 AAAA…'); when set, any other key is refused.",
    )


class RedshiftSpec(Model):
    host: Hostname
    port: int = Field(default=5439, ge=1, le=65535)
    database: SqlName
    user: str = Field(min_length=1, max_length=128)
    password_secret_ref: SecretKeyRef = Field(alias="passwordSecretRef")
    ssl: bool = Field(default=True, description="Use TLS to the cluster (Redshift requires it unless disabled).")
    ssh_tunnel: SshTunnelSpec | None = Field(default=None, alias="sshTunnel")


class BigQuerySpec(Model):
    project: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[A-Za-z0-9_.:-]{1,100}$")
    service_account_key_secret_ref: SecretKeyRef = Field(alias="serviceAccountKeySecretRef")
    location: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{2,40}$")


class DatabricksSpec(Model):
    server_hostname: Hostname = Field(alias="serverHostname")
    http_path: str = Field(alias="httpPath", pattern=r"^/[A-Za-z0-9/_.-]{1,500}$")
    access_token_secret_ref: SecretKeyRef = Field(alias="accessTokenSecretRef")
    catalog: SqlName | None = None


class DuckDBSpec(Model):
    """An embedded DuckDB database file: for `cdi demo`, local runs and tests, not for production clusters."""

    path: str = Field(min_length=1, max_length=4096, description="Path of the DuckDB database file.")


_BLOCKS: dict[WarehouseType, str] = {t: t.value for t in WarehouseType}


class WarehouseCredentialSpec(Model):
    type: WarehouseType
    snowflake: SnowflakeSpec | None = None
    redshift: RedshiftSpec | None = None
    bigquery: BigQuerySpec | None = None
    databricks: DatabricksSpec | None = None
    duckdb: DuckDBSpec | None = None

    @model_validator(mode="after")
    def _one_block_matching_type(self) -> Self:
        present = [name for name in _BLOCKS.values() if getattr(self, name) is not None]
        wanted = _BLOCKS[self.type]
        if present != [wanted]:
            others = [name for name in present if name != wanted]
            if others:
                raise ValueError(
                    f"spec.type is {wanted!r} but the block(s) {', '.join(others)} are set; keep only spec.{wanted}"
                )
            raise ValueError(f"spec.type is {wanted!r}: add the spec.{wanted} block with its connection settings")
        return self

    @property
    def settings(self) -> SnowflakeSpec | RedshiftSpec | BigQuerySpec | DatabricksSpec | DuckDBSpec:
        block = getattr(self, _BLOCKS[self.type])
        assert block is not None  # guaranteed by _one_block_matching_type
        return block  # type: ignore[no-any-return]

    def table_address(self, source: SourceTable) -> str:
        """Where `source` is, whatever credential names it: the warehouse (Snowflake account, Redshift host, BigQuery
        project, Databricks workspace, DuckDB file) and the table's parts with the credential's defaults filled in,
        lower-cased (unquoted names match case-insensitively). Equal addresses mean the same table."""
        parts = source.qualified_parts(self.type)
        match self.settings:
            case SnowflakeSpec(account=account):
                where = account
            case RedshiftSpec(host=host, port=port, database=database):
                where = f"{host}:{port}"
                parts = (source.database or database, *parts[-2:])
            case BigQuerySpec(project=project):
                where = ""
                parts = (source.project or project, *parts[-2:])
            case DatabricksSpec(server_hostname=host, catalog=catalog):
                where = host
                parts = (source.catalog or catalog or "", *parts[-2:])
            case DuckDBSpec(path=path):
                where = path
        return f"{self.type.value}://{where}/{'.'.join(parts)}".lower()

    def secret_refs(self) -> list[SecretKeyRef]:
        refs: list[SecretKeyRef] = []
        match self.settings:
            case SnowflakeSpec(private_key_secret_ref=ref) if ref is not None:
                refs.append(ref)
            case RedshiftSpec() as redshift:
                refs.append(redshift.password_secret_ref)
                if redshift.ssh_tunnel is not None:
                    refs.append(redshift.ssh_tunnel.private_key_secret_ref)
            case BigQuerySpec() as bigquery:
                refs.append(bigquery.service_account_key_secret_ref)
            case DatabricksSpec() as databricks:
                refs.append(databricks.access_token_secret_ref)
        return refs


# --- CdiIntegration ------------------------------------------------------------------------------------------------


class CredentialRef(Model):
    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="A WarehouseCredential in this namespace.")


class SourceTable(Model):
    """The table or view to read. BigQuery names it project/dataset/table, Databricks catalog/schema/table."""

    database: SqlName | None = None
    schema_: SqlName | None = Field(default=None, alias="schema")
    table: SqlName
    project: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    dataset: SqlName | None = None
    catalog: SqlName | None = None

    def qualified_parts(self, warehouse: WarehouseType) -> tuple[str, ...]:
        """The name's parts for `warehouse`, outermost first, with what is unset left out."""
        if warehouse is WarehouseType.BIGQUERY:
            parts = (self.project, self.dataset, self.table)
        elif warehouse is WarehouseType.DATABRICKS:
            parts = (self.catalog, self.schema_, self.table)
        else:
            parts = (self.database, self.schema_, self.table)
        return tuple(p for p in parts if p)

    def problems_for(self, warehouse: WarehouseType) -> list[str]:
        """Fields that do not fit `warehouse`, each with its fix; empty when the source fits."""
        if warehouse is WarehouseType.BIGQUERY:
            allowed, required = {"project", "dataset", "table"}, {"dataset", "table"}
        elif warehouse is WarehouseType.DATABRICKS:
            allowed, required = {"catalog", "schema", "table"}, {"schema", "table"}
        elif warehouse is WarehouseType.DUCKDB:
            allowed, required = {"database", "schema", "table"}, {"table"}
        else:
            allowed, required = {"database", "schema", "table"}, {"database", "schema", "table"}
        given = {name for name in ("database", "schema", "table", "project", "dataset", "catalog") if self._get(name)}
        problems = [
            f"spec.source.{name} is not used by {warehouse.value}; name the table with {'/'.join(sorted(allowed))}"
            for name in sorted(given - allowed)
        ]
        problems += [f"spec.source.{name} is required for {warehouse.value}" for name in sorted(required - given)]
        return problems

    def _get(self, name: str) -> str | None:
        value: str | None = self.schema_ if name == "schema" else getattr(self, name)
        return value

    def display(self) -> str:
        return ".".join(
            p for p in (self.project, self.catalog, self.database, self.dataset, self.schema_, self.table) if p
        )


class WorkspaceRef(Model):
    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253, description="A BrazeWorkspace in this namespace.")


class BrazeSpec(Model):
    workspace_ref: WorkspaceRef | None = Field(
        default=None,
        alias="workspaceRef",
        description="The BrazeWorkspace whose limits and reserve this sync shares with the workspace's other "
        "clients; without it, Braze's documented limits and a 20% reserve.",
    )
    rest_endpoint: str | None = Field(
        default=None,
        alias="restEndpoint",
        pattern=r"^https?://[^\s/]+(:[0-9]+)?/?$",
        description="Your instance's REST endpoint, e.g. https://rest.iad-01.braze.com (never derived).",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, alias="apiKeySecretRef")
    max_objects_per_request: int = Field(
        default=75,
        ge=1,
        le=75,
        alias="maxObjectsPerRequest",
        description="Objects per /users/track request across all arrays; 50 on some newer Braze contracts.",
    )
    requests_per_second: float = Field(
        default=1000.0,
        gt=0,
        le=1000,
        alias="requestsPerSecond",
        description="Most requests a second this sync sends, within the workspace's budget it shares with every "
        "other client (see BrazeWorkspace).",
    )
    max_in_flight: int = Field(
        default=256,
        ge=1,
        le=256,
        alias="maxInFlight",
        description="Most requests in flight at once; the runner keeps requestsPerSecond times the measured "
        "response time in flight (Little's law), up to this (256: 1,000 requests/s at up to 200 ms a response).",
    )


class SyncOptions(Model):
    settle_seconds: int = Field(
        default=60,
        ge=0,
        le=86400,
        alias="settleSeconds",
        description="Rows newer than now minus this are left for the next run, so writers still committing "
        "and rows dated in the future cannot be skipped or freeze the sync.",
    )
    max_rows_per_run: int = Field(
        default=500_000_000,
        ge=1,
        alias="maxRowsPerRun",
        description="A run stops with LimitExceeded past this, once it has read every row with the UPDATED_AT "
        "it reached (so that the next run continues after them).",
    )
    chunk_rows: int = Field(default=10_000, ge=100, le=1_000_000, alias="chunkRows", description="Rows per fetch.")
    checkpoint_seconds: float = Field(
        default=1.0,
        ge=0,
        le=3600,
        alias="checkpointSeconds",
        description="Least time between two saves of progress during a sync; the interval grows with the run (a "
        "tenth of its age, up to 30 s or this, whichever is longer), and a run also saves at its end and when "
        "stopped. After a crash, a run re-sends at most the rows acknowledged in one interval plus those that "
        "were in flight.",
    )
    timeout_seconds: int = Field(
        default=3600,
        ge=10,
        le=3600,
        alias="timeoutSeconds",
        description="A run is stopped after this (the Job's activeDeadlineSeconds) and recorded as Error with "
        "reason DeadlineExceeded; the next run continues from its watermark. Braze expects a sync's queries to "
        "finish within an hour.",
    )

    lease_seconds: int = Field(
        default=60,
        ge=10,
        le=3600,
        alias="leaseSeconds",
        description="How long a run's claim on the integration (its Lease) lasts unrenewed: a runner killed while "
        "holding it keeps every other run out for at most this long.",
    )
    run_history: int = Field(
        default=10,
        ge=1,
        le=RUN_HISTORY_MAX,
        alias="runHistory",
        description="Run records kept in status.runs, newest first.",
    )


Quantity = Annotated[
    str,
    Field(
        pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$",
        max_length=32,
        description="A Kubernetes quantity, e.g. '500m', '1' or '1Gi' (quoted in YAML).",
    ),
]


class ResourceList(Model):
    cpu: Quantity | None = None
    memory: Quantity | None = None
    ephemeral_storage: Quantity | None = Field(default=None, alias="ephemeral-storage")


class ResourceRequirements(Model):
    """Requests and limits of the runner container, as in a Pod spec."""

    requests: ResourceList | None = None
    limits: ResourceList | None = None


class RunnerOptions(Model):
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Requests and limits of this integration's runner pods; unset: the chart's runner.resources. "
        "A key set here replaces that key of the default (requests and limits separately).",
    )


class CatalogSpec(Model):
    """The Braze catalog a `catalogItems` integration fills; it must exist in Braze, with its fields."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9_-]{1,250}$",
        description="The catalog's name in Braze (letters, digits, '-' and '_'). Immutable.",
    )


class NotificationsSpec(Model):
    """Sync alerts as Braze's CDI offers them, e-mailed to spec.contactEmails once per run; only onSyncError is on."""

    on_sync_error: bool = Field(
        default=True,
        alias="onSyncError",
        description="E-mail a sync-level failure (the run failed as a whole, or a failed connection test stopped "
        "the integration); one message per failure, not repeated while it lasts.",
    )
    row_error_rate_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        alias="rowErrorRatePercent",
        description="E-mail a run whose row errors exceed this percentage of the rows it sent or refused (0: any "
        "row error). Unset: row errors are never e-mailed.",
    )
    on_success: bool = Field(
        default=False, alias="onSuccess", description="E-mail every run that completed (Success or Partial)."
    )
    on_success_without_changes: bool = Field(
        default=False,
        alias="onSuccessWithoutChanges",
        description="E-mail a run that completed without any changed row (nothing sent, nothing refused).",
    )


class CdiIntegrationSpec(Model):
    credential_ref: CredentialRef = Field(alias="credentialRef")
    source: SourceTable
    data_type: DataType = Field(alias="dataType", description="Immutable after creation.")
    schedule: str = Field(
        min_length=1, max_length=200, description="Cron expression; runs 15 minutes to a month apart."
    )
    time_zone: str = Field(default="UTC", alias="timeZone", max_length=64, description="IANA zone of the schedule.")
    contact_emails: list[str] = Field(
        default_factory=list,
        alias="contactEmails",
        max_length=20,
        description="Who is e-mailed about the runs spec.notifications selects (by default sync-level failures).",
    )
    notifications: NotificationsSpec = Field(default_factory=NotificationsSpec)
    suspend: bool = False
    braze: BrazeSpec | None = None
    sync: SyncOptions = Field(default_factory=SyncOptions)
    catalog: CatalogSpec | None = Field(
        default=None, description="For dataType catalogItems: the Braze catalog the items go to. Immutable."
    )
    update_existing_only: bool = Field(
        default=False,
        alias="updateExistingOnly",
        description="customAttributes only: rows for users Braze does not know are skipped by Braze instead of "
        "creating them (each object is sent with _update_existing_only: true).",
    )
    runner: RunnerOptions | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        if self.data_type is DataType.CATALOG_ITEMS and self.catalog is None:
            raise ValueError("dataType catalogItems needs spec.catalog.name: the Braze catalog to fill")
        if self.data_type is not DataType.CATALOG_ITEMS and self.catalog is not None:
            raise ValueError(f"spec.catalog is for dataType catalogItems, not {self.data_type.value}; remove it")
        alerts = self.notifications
        opted_in = [
            name
            for name, on in (
                ("rowErrorRatePercent", alerts.row_error_rate_percent is not None),
                ("onSuccess", alerts.on_success),
                ("onSuccessWithoutChanges", alerts.on_success_without_changes),
            )
            if on
        ]
        if opted_in and not self.contact_emails:
            raise ValueError(
                f"spec.notifications.{opted_in[0]} e-mails spec.contactEmails, which is empty; add an address there "
                "or remove the rule"
            )
        if self.update_existing_only and self.data_type is not DataType.CUSTOM_ATTRIBUTES:
            raise ValueError(
                f"spec.updateExistingOnly applies to dataType customAttributes only, not {self.data_type.value}; "
                "remove it"
            )
        return self

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            return validate_schedule(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        try:
            return validate_time_zone(value)
        except ScheduleError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("contact_emails")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            if not _EMAIL.fullmatch(address):  # not match(): '$' would let a trailing newline through
                raise ValueError(f"{address!r} is not an e-mail address; write it as name@example.com")
        return value


# --- BrazeWorkspace ------------------------------------------------------------------------------------------------


class RateLimit(Model):
    requests: int = Field(ge=1, le=10_000_000, description="Requests Braze allows per window.")
    seconds: int = Field(ge=1, le=3600, description="The window's length in seconds.")


class WorkspaceLimits(Model):
    """Braze's rate limits of the workspace's contract, per endpoint family."""

    users_track: RateLimit = Field(
        default=RateLimit(requests=3000, seconds=3),
        alias="usersTrack",
        description="/users/track: 3,000 per 3 s; older contracts 50,000 per 60 s.",
    )
    users_delete: RateLimit = Field(
        default=RateLimit(requests=20_000, seconds=60),
        alias="usersDelete",
        description="/users/delete, shared with the alias, identify and merge endpoints.",
    )
    catalog_items: RateLimit = Field(
        default=RateLimit(requests=16_000, seconds=60),
        alias="catalogItems",
        description="The asynchronous catalog item endpoints together.",
    )


class BrazeWorkspaceSpec(Model):
    reserve_percent: int = Field(
        default=20,
        ge=0,
        le=90,
        alias="reservePercent",
        description="Share of each limit the syncs leave to the workspace's other clients (app backend, CRM).",
    )
    limits: WorkspaceLimits = Field(default_factory=WorkspaceLimits)
    max_objects_per_request: int = Field(
        default=75,
        ge=1,
        le=75,
        alias="maxObjectsPerRequest",
        description="Objects per /users/track request the contract allows (50 on some newer contracts); an "
        "integration's own maxObjectsPerRequest can only lower it.",
    )
    without_headers_percent: int = Field(
        default=25,
        ge=1,
        le=100,
        alias="withoutHeadersPercent",
        description="When Braze's responses carry no X-RateLimit headers (a proxy strips them), the share of "
        "(limit - reserve) one sync paces at, since it cannot see the others.",
    )


# --- Status --------------------------------------------------------------------------------------------------------


class Watermark(Model):
    """How far a sync has delivered: every row up to `updatedAt`, and at exactly `updatedAt` the rows listed (or,
    with `boundaryComplete`, every row the warehouse showed)."""

    updated_at: datetime = Field(alias="updatedAt")
    boundary_fingerprints: list[str] = Field(
        default_factory=list,
        alias="boundaryFingerprints",
        description="Fingerprints of the rows delivered at exactly updatedAt, so that a row that arrives later "
        "with the same UPDATED_AT is still sent and those already sent are not.",
    )
    boundary_complete: bool = Field(
        default=False,
        alias="boundaryComplete",
        description="Every row at exactly updatedAt was delivered, too many to list (a bulk load with one "
        "UPDATED_AT): the next sync skips them all, and a row written later with this same UPDATED_AT is missed, "
        "like any write dated before the watermark.",
    )
    source: str | None = Field(
        default=None,
        max_length=1024,
        description="The address of the table this watermark belongs to (warehouse and table, not the credential): "
        "a run on another table starts from the beginning.",
    )


class RowErrorSample(Model):
    reason: str
    identifier: str
    updated_at: datetime | None = Field(default=None, alias="updatedAt")
    message: str


class RunSummary(Model):
    """One run's record, written by the runner itself: status.lastSync and each entry of status.runs."""

    run_id: str | None = Field(default=None, alias="runId", max_length=128)
    trigger: Literal["schedule", "syncNow", "local"] = "local"
    job: str | None = None
    pod: str | None = None
    started_at: datetime = Field(alias="startedAt")
    finished_at: datetime | None = Field(default=None, alias="finishedAt")
    result: RunResult
    rows_read: int = Field(default=0, alias="rowsRead")
    rows_synced: int = Field(default=0, alias="rowsSynced")
    rows_failed: int = Field(default=0, alias="rowsFailed")
    rows_skipped: int = Field(
        default=0, alias="rowsSkipped", description="Rows at the watermark already delivered by an earlier run."
    )
    undated_rows: int = Field(
        default=0,
        alias="undatedRows",
        description="Rows whose UPDATED_AT is NULL: no sync selects them until they are given a time.",
    )
    future_rows: int = Field(
        default=0, alias="futureRows", description="Rows dated after the read bound; they wait for their time."
    )
    watermark_before: datetime | None = Field(default=None, alias="watermarkBefore")
    watermark: datetime | None = None
    message: str = ""
    held_by: str | None = Field(
        default=None,
        alias="heldBy",
        max_length=512,
        description="A skipped run: the run that held the integration (run id, Job, pod).",
    )
    row_errors_by_reason: dict[str, int] = Field(default_factory=dict, alias="rowErrorsByReason", max_length=64)
    row_errors: list[RowErrorSample] = Field(default_factory=list, alias="rowErrors", max_length=20)
    braze_requests: dict[str, int] | None = Field(
        default=None,
        alias="brazeRequests",
        max_length=64,
        description="Braze responses of this run by 'ENDPOINT:CODE' (e.g. '/users/track:201'), for the operator's "
        "cdi_braze_requests_total.",
    )
    source_changed: str | None = Field(
        default=None,
        alias="sourceChanged",
        max_length=1024,
        description="The source of the saved watermark, when it was another (spec.source or the credential's "
        "warehouse changed): this run started from the beginning of the new source.",
    )
    rewound_to: str | None = Field(
        default=None,
        alias="rewoundTo",
        max_length=64,
        description="The cdi.ingest.dev/rewind this run applied: the time it re-sent the rows after, or 'full'.",
    )


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    last_transition_time: datetime = Field(alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


class ConnectionTest(Model):
    time: datetime
    result: Literal["Passed", "Failed", "Testing"]
    reason: str = ""
    message: str = ""
    columns: list[str] = Field(default_factory=list)
    preview: list[dict[str, Any]] = Field(default_factory=list, max_length=5)
    fingerprint: str | None = Field(
        default=None,
        max_length=64,
        description="Set by the operator: a hash of what was tested (credential and its generation, source, data "
        "type); a change of any of them re-runs the test.",
    )


class PendingRewind(Model):
    value: str = Field(max_length=256, description="The annotation's value.")
    to: datetime | None = Field(
        default=None, description="Re-send the rows with UPDATED_AT after this; null: every row (full)."
    )


class CdiIntegrationStatus(Model):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    connection_test: ConnectionTest | None = Field(default=None, alias="connectionTest")
    watermark: Watermark | None = None
    last_sync: RunSummary | None = Field(default=None, alias="lastSync")
    runs: list[RunSummary] = Field(
        default_factory=list,
        max_length=RUN_HISTORY_MAX,
        description="Written by the runners: one record per run, newest first, at most spec.sync.runHistory.",
    )
    counted_runs: list[str] = Field(
        default_factory=list,
        alias="countedRuns",
        max_length=RUN_HISTORY_MAX,
        description="Set by the operator: the runIds of status.runs already counted in its metrics, so that each "
        "run is counted once, also when it finished while the operator was down.",
    )
    last_handled_sync_now: str | None = Field(default=None, alias="lastHandledSyncNow")
    last_handled_test_connection: str | None = Field(default=None, alias="lastHandledTestConnection")
    last_handled_rewind: str | None = Field(default=None, alias="lastHandledRewind")
    pending_rewind: PendingRewind | None = Field(
        default=None,
        alias="pendingRewind",
        description="Set by the operator when it accepts a cdi.ingest.dev/rewind; the next run applies and clears it.",
    )
    last_notified_failure: str | None = Field(
        default=None,
        alias="lastNotifiedFailure",
        max_length=1024,
        description="Set by the operator: the key of the last sync-level failure e-mailed to spec.contactEmails, so "
        "that it is told once, also across restarts.",
    )
    notified_runs: list[str] = Field(
        default_factory=list,
        alias="notifiedRuns",
        max_length=50,
        description="Set by the operator: the run attempts whose spec.notifications were decided, and the rules "
        "told per run (a Job, with its retries), so that nothing is told twice, also across restarts.",
    )


class KeyRotation(Model):
    """A Snowflake key rotation (`cdi.ingest.dev/rotate-key`), set by the operator."""

    phase: Literal["AwaitingNewKey", "Completed"]
    statement: str = Field(description="The ALTER USER statement to run now.")
    message: str = ""
    next_public_key: str | None = Field(default=None, alias="nextPublicKey")
    next_key_fingerprint: str | None = Field(default=None, alias="nextKeyFingerprint")
    next_key_slot: Literal[1, 2] | None = Field(default=None, alias="nextKeySlot")
    requested_by: str | None = Field(
        default=None, alias="requestedBy", description="The cdi.ingest.dev/rotate-key value that started it."
    )
    checked_at: datetime | None = Field(
        default=None, alias="checkedAt", description="When a login with the new key was last tried."
    )


class WarehouseCredentialStatus(Model):
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    connection_test: ConnectionTest | None = Field(default=None, alias="connectionTest")
    public_key: str | None = Field(default=None, alias="publicKey")
    alter_user_statement: str | None = Field(default=None, alias="alterUserStatement")
    key_fingerprint: str | None = Field(
        default=None,
        alias="keyFingerprint",
        description="Set by the operator: SHA256 fingerprint of publicKey, as DESC USER shows RSA_PUBLIC_KEY_FP.",
    )
    key_slot: Literal[1, 2] | None = Field(
        default=None, alias="keySlot", description="The user's key slot (1: RSA_PUBLIC_KEY, 2: RSA_PUBLIC_KEY_2)."
    )
    rotation: KeyRotation | None = None
    last_handled_rotate_key: str | None = Field(default=None, alias="lastHandledRotateKey")
    last_handled_test_connection: str | None = Field(default=None, alias="lastHandledTestConnection")


# --- Resources -----------------------------------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=_DNS_SUBDOMAIN, max_length=253)
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class WarehouseCredential(Model):
    """How to reach one warehouse (Snowflake, Redshift, BigQuery, Databricks); CdiIntegrations refer to it."""

    api_version: Literal["cdi.ingest.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["WarehouseCredential"] = "WarehouseCredential"
    metadata: ObjectMeta
    spec: WarehouseCredentialSpec
    status: WarehouseCredentialStatus | None = None


class BrazeWorkspace(Model):
    """A Braze workspace's rate limits and the reserve its syncs leave to others (refer to it by workspaceRef)."""

    api_version: Literal["cdi.ingest.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["BrazeWorkspace"] = "BrazeWorkspace"
    metadata: ObjectMeta
    spec: BrazeWorkspaceSpec


class CdiIntegration(Model):
    """Syncs the rows of one warehouse table that changed since the last sync to Braze, on a schedule."""

    api_version: Literal["cdi.ingest.dev/v1alpha1"] = Field(default=API_VERSION, alias="apiVersion")
    kind: Literal["CdiIntegration"] = "CdiIntegration"
    metadata: ObjectMeta
    spec: CdiIntegrationSpec
    status: CdiIntegrationStatus | None = None
