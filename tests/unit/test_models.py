"""The API models: what a user may write in a WarehouseCredential or CdiIntegration, and what they are told."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from cdi_operator.api import reasons
from cdi_operator.api.models import (
    API_VERSION,
    CdiIntegration,
    CdiIntegrationSpec,
    CdiIntegrationStatus,
    Condition,
    DataType,
    Phase,
    RedshiftSpec,
    RunResult,
    RunSummary,
    SecretKeyRef,
    SnowflakeSpec,
    SourceTable,
    SyncOptions,
    WarehouseCredential,
    WarehouseCredentialSpec,
    WarehouseType,
    Watermark,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def ref(name: str = "wh-secret", key: str = "password") -> dict[str, str]:
    return {"name": name, "key": key}


BLOCKS: dict[str, dict[str, Any]] = {
    "snowflake": {"account": "myorg-myaccount", "user": "CDI_USER", "role": "CDI_ROLE", "warehouse": "COMPUTE_WH"},
    "redshift": {"host": "cluster.abc.us-east-1.redshift.amazonaws.com", "database": "dev", "user": "cdi",
                 "passwordSecretRef": ref()},
    "bigquery": {"project": "my-project-123", "serviceAccountKeySecretRef": ref(key="key.json")},
    "databricks": {"serverHostname": "dbc-123.cloud.databricks.com", "httpPath": "/sql/1.0/warehouses/abc",
                   "accessTokenSecretRef": ref(key="token")},
}  # fmt: skip


def credential_spec(type_: str, **extra_blocks: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, type_: BLOCKS[type_], **extra_blocks}


def integration_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "credentialRef": {"name": "warehouse"},
        "source": {"database": "ANALYTICS", "schema": "BRAZE", "table": "USERS_CHANGED"},
        "dataType": "customAttributes",
        "schedule": "*/15 * * * *",
    }
    spec.update(overrides)
    return spec


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str, str]]:
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.value.errors()]


# --- WarehouseCredential -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(BLOCKS))
def test_each_warehouse_type_with_its_block(type_: str) -> None:
    spec = WarehouseCredentialSpec.model_validate(credential_spec(type_))
    assert spec.type == WarehouseType(type_)
    assert spec.settings is getattr(spec, type_)


@pytest.mark.parametrize("type_", list(BLOCKS))
def test_missing_block_names_it(type_: str) -> None:
    with pytest.raises(ValidationError) as info:
        WarehouseCredentialSpec.model_validate({"type": type_})
    assert f"add the spec.{type_} block" in str(info.value)


def test_extra_block_names_it_and_says_keep_only_the_right_one() -> None:
    with pytest.raises(ValidationError) as info:
        WarehouseCredentialSpec.model_validate(credential_spec("redshift", snowflake=BLOCKS["snowflake"]))
    message = str(info.value)
    assert "snowflake" in message
    assert "keep only spec.redshift" in message


def test_block_of_another_type_only() -> None:
    with pytest.raises(ValidationError) as info:
        WarehouseCredentialSpec.model_validate({"type": "bigquery", "snowflake": BLOCKS["snowflake"]})
    assert "keep only spec.bigquery" in str(info.value)


def test_unknown_type_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        WarehouseCredentialSpec.model_validate({"type": "oracle"})
    assert [loc for loc, _ in errors_of(info)] == ["type"]


def test_unknown_fields_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        WarehouseCredentialSpec.model_validate(
            {"type": "snowflake", "snowflake": {**BLOCKS["snowflake"], "password": "hunter2"}}
        )
    assert ("snowflake.password", "Extra inputs are not permitted") in errors_of(info)


def test_redshift_defaults() -> None:
    redshift = RedshiftSpec.model_validate(BLOCKS["redshift"])
    assert redshift.port == 5439
    assert redshift.ssl is True
    assert redshift.ssh_tunnel is None


def test_snowflake_has_no_password_field() -> None:
    assert "password" not in SnowflakeSpec.model_fields


def test_secret_refs_per_type() -> None:
    redshift = WarehouseCredentialSpec.model_validate(
        credential_spec(
            "redshift",
        )
        | {
            "redshift": {
                **BLOCKS["redshift"],
                "sshTunnel": {"host": "bastion.example.com", "user": "tunnel", "privateKeySecretRef": ref("ssh", "id")},
            }
        }
    )
    assert [(r.name, r.key) for r in redshift.secret_refs()] == [("wh-secret", "password"), ("ssh", "id")]
    assert redshift.redshift is not None and redshift.redshift.ssh_tunnel is not None
    assert redshift.redshift.ssh_tunnel.port == 22

    bigquery = WarehouseCredentialSpec.model_validate(credential_spec("bigquery"))
    assert [(r.name, r.key) for r in bigquery.secret_refs()] == [("wh-secret", "key.json")]
    databricks = WarehouseCredentialSpec.model_validate(credential_spec("databricks"))
    assert [(r.name, r.key) for r in databricks.secret_refs()] == [("wh-secret", "token")]

    snowflake = WarehouseCredentialSpec.model_validate(credential_spec("snowflake"))
    assert snowflake.secret_refs() == []  # the operator generates the key pair
    byo = WarehouseCredentialSpec.model_validate(
        {"type": "snowflake", "snowflake": {**BLOCKS["snowflake"], "privateKeySecretRef": ref("sf", "key.pem")}}
    )
    assert [(r.name, r.key) for r in byo.secret_refs()] == [("sf", "key.pem")]


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "Upper", "key": "k"},
        {"name": "has space", "key": "k"},
        {"name": "", "key": "k"},
        {"name": "ok", "key": "a/b"},
        {"name": "ok", "key": ""},
        {"name": "ok"},
        {"name": "ok", "key": "k", "namespace": "other"},  # same namespace only
    ],
)
def test_secret_ref_shape(bad: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        SecretKeyRef.model_validate(bad)


def test_secret_ref_accepts_kubernetes_names_and_keys() -> None:
    secret = SecretKeyRef.model_validate({"name": "wh.creds-1", "key": "service_account.json"})
    assert (secret.name, secret.key) == ("wh.creds-1", "service_account.json")


@pytest.mark.parametrize("field", ["user", "role", "warehouse"])
@pytest.mark.parametrize("value", ['CDI"; DROP TABLE x; --', "a.b", "a b", "a'b", ""])
def test_snowflake_names_are_sql_safe(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        SnowflakeSpec.model_validate({**BLOCKS["snowflake"], field: value})
    assert [loc for loc, _ in errors_of(info)] == [field]


# --- SourceTable ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ['users"; drop table users; --', "users.changed", "users changed", "users`", "users'", "a\nb", "users\n"]
)
def test_source_names_with_quotes_dots_spaces_rejected(table: str) -> None:
    for field in ("table", "schema", "database", "dataset", "catalog"):
        with pytest.raises(ValidationError):
            SourceTable.model_validate({"table": "ok", field: table})


def test_source_names_allow_warehouse_characters() -> None:
    source = SourceTable.model_validate({"database": "db-1", "schema": "S$1", "table": "_users_2024"})
    assert source.qualified_parts(WarehouseType.SNOWFLAKE) == ("db-1", "S$1", "_users_2024")


def test_problems_for_snowflake_and_redshift_need_three_parts() -> None:
    full = SourceTable.model_validate({"database": "DB", "schema": "S", "table": "T"})
    assert full.problems_for(WarehouseType.SNOWFLAKE) == []
    assert full.problems_for(WarehouseType.REDSHIFT) == []
    only_table = SourceTable.model_validate({"table": "T"})
    assert only_table.problems_for(WarehouseType.SNOWFLAKE) == [
        "spec.source.database is required for snowflake",
        "spec.source.schema is required for snowflake",
    ]


def test_problems_for_bigquery() -> None:
    source = SourceTable.model_validate({"project": "my-proj", "dataset": "braze", "table": "users"})
    assert source.problems_for(WarehouseType.BIGQUERY) == []
    assert source.qualified_parts(WarehouseType.BIGQUERY) == ("my-proj", "braze", "users")
    # project is optional (the credential's project is used)
    assert SourceTable.model_validate({"dataset": "d", "table": "t"}).problems_for(WarehouseType.BIGQUERY) == []
    wrong = SourceTable.model_validate({"database": "DB", "schema": "S", "table": "T"})
    problems = wrong.problems_for(WarehouseType.BIGQUERY)
    assert "spec.source.database is not used by bigquery; name the table with dataset/project/table" in problems
    assert "spec.source.schema is not used by bigquery; name the table with dataset/project/table" in problems
    assert "spec.source.dataset is required for bigquery" in problems


def test_problems_for_databricks() -> None:
    source = SourceTable.model_validate({"catalog": "main", "schema": "braze", "table": "users"})
    assert source.problems_for(WarehouseType.DATABRICKS) == []
    assert source.qualified_parts(WarehouseType.DATABRICKS) == ("main", "braze", "users")
    assert source.display() == "main.braze.users"
    wrong = SourceTable.model_validate({"database": "DB", "table": "T"})
    assert wrong.problems_for(WarehouseType.DATABRICKS) == [
        "spec.source.database is not used by databricks; name the table with catalog/schema/table",
        "spec.source.schema is required for databricks",
    ]
    # a catalog means nothing to Snowflake
    assert source.problems_for(WarehouseType.SNOWFLAKE)[0].startswith("spec.source.catalog is not used by snowflake")


def test_problems_for_duckdb_need_only_table() -> None:
    assert SourceTable.model_validate({"table": "t"}).problems_for(WarehouseType.DUCKDB) == []


# --- CdiIntegration spec -------------------------------------------------------------------------------------------


def test_integration_defaults() -> None:
    spec = CdiIntegrationSpec.model_validate(integration_spec())
    assert spec.time_zone == "UTC"
    assert spec.contact_emails == []
    assert spec.suspend is False
    assert spec.braze is None
    assert spec.data_type is DataType.CUSTOM_ATTRIBUTES
    assert spec.sync.settle_seconds == 60
    assert spec.sync.chunk_rows == 10_000
    assert spec.sync.checkpoint_seconds == 1.0
    assert spec.sync.max_rows_per_run == 500_000_000


def test_braze_defaults_and_limits() -> None:
    spec = CdiIntegrationSpec.model_validate(integration_spec(braze={}))
    assert spec.braze is not None
    assert spec.braze.max_objects_per_request == 75
    assert spec.braze.requests_per_second == 1000.0
    assert spec.braze.max_in_flight == 256
    assert spec.braze.rest_endpoint is None
    for bad in (
        {"maxObjectsPerRequest": 76},
        {"maxObjectsPerRequest": 0},
        {"requestsPerSecond": 0},
        {"maxInFlight": 257},
    ):
        with pytest.raises(ValidationError):
            CdiIntegrationSpec.model_validate(integration_spec(braze=bad))


@pytest.mark.parametrize(
    "endpoint", ["https://rest.iad-01.braze.com", "https://rest.fra-02.braze.eu/", "http://localhost:8080"]
)
def test_braze_endpoint_accepted(endpoint: str) -> None:
    spec = CdiIntegrationSpec.model_validate(integration_spec(braze={"restEndpoint": endpoint}))
    assert spec.braze is not None and spec.braze.rest_endpoint == endpoint


@pytest.mark.parametrize("endpoint", ["rest.iad-01.braze.com", "https://rest.braze.com/users/track", "ftp://x"])
def test_braze_endpoint_rejected(endpoint: str) -> None:
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(integration_spec(braze={"restEndpoint": endpoint}))
    assert [loc for loc, _ in errors_of(info)] == ["braze.restEndpoint"]


@pytest.mark.parametrize("data_type", ["customAttributes", "customEvents", "purchaseEvents", "userDeletes"])
def test_data_types(data_type: str) -> None:
    assert CdiIntegrationSpec.model_validate(integration_spec(dataType=data_type)).data_type.value == data_type


def test_unknown_data_type_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(integration_spec(dataType="attributes"))
    assert [loc for loc, _ in errors_of(info)] == ["dataType"]


def test_schedule_error_is_a_validation_error_on_schedule() -> None:
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(integration_spec(schedule="*/5 * * * *"))
    [(loc, msg)] = errors_of(info)
    assert loc == "schedule"
    assert "at least 15 minutes apart" in msg


def test_time_zone_validated() -> None:
    spec = CdiIntegrationSpec.model_validate(integration_spec(timeZone="Europe/Berlin"))
    assert spec.time_zone == "Europe/Berlin"
    for bad in ("../etc/passwd", "Nowhere/City", "Europe"):
        with pytest.raises(ValidationError) as info:
            CdiIntegrationSpec.model_validate(integration_spec(timeZone=bad))
        assert [loc for loc, _ in errors_of(info)] == ["timeZone"]


@pytest.mark.parametrize("good", [["ops@example.com"], ["a.b+cdi@sub.example.co.uk", "x@y.io"]])
def test_contact_emails_accepted(good: list[str]) -> None:
    assert CdiIntegrationSpec.model_validate(integration_spec(contactEmails=good)).contact_emails == good


@pytest.mark.parametrize(
    "bad", ["ops", "ops@", "@example.com", "ops@example", "o ps@example.com", "a@b@c.com", "ops@example.com\n"]
)
def test_contact_emails_rejected_with_fix(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(integration_spec(contactEmails=["ok@example.com", bad]))
    [(loc, msg)] = errors_of(info)
    assert loc == "contactEmails"
    assert repr(bad) in msg
    assert "name@example.com" in msg


def test_at_most_20_contact_emails() -> None:
    with pytest.raises(ValidationError):
        CdiIntegrationSpec.model_validate(integration_spec(contactEmails=[f"u{i}@example.com" for i in range(21)]))


def test_credential_ref_required() -> None:
    spec = integration_spec()
    del spec["credentialRef"]
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(spec)
    assert ("credentialRef", "Field required") in errors_of(info)


def test_unknown_spec_field_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        CdiIntegrationSpec.model_validate(integration_spec(shedule="@hourly"))
    assert ("shedule", "Extra inputs are not permitted") in errors_of(info)


# --- Resources and round trips -------------------------------------------------------------------------------------


def integration_doc() -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "CdiIntegration",
        "metadata": {"name": "users", "namespace": "marketing", "annotations": {"cdi.ingest.dev/sync-now": "1"}},
        "spec": integration_spec(
            timeZone="America/New_York",
            contactEmails=["ops@example.com"],
            braze={"restEndpoint": "https://rest.iad-01.braze.com", "apiKeySecretRef": ref("braze", "api-key")},
            sync={"settleSeconds": 120, "chunkRows": 5000},
        ),
    }


def test_integration_round_trips_by_alias() -> None:
    integration = CdiIntegration.model_validate(integration_doc())
    dumped = integration.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert dumped["apiVersion"] == "cdi.ingest.dev/v1alpha1"
    assert dumped["spec"]["credentialRef"] == {"name": "warehouse"}
    assert dumped["spec"]["source"] == {"database": "ANALYTICS", "schema": "BRAZE", "table": "USERS_CHANGED"}
    assert dumped["spec"]["timeZone"] == "America/New_York"
    assert dumped["spec"]["contactEmails"] == ["ops@example.com"]
    assert dumped["spec"]["braze"]["apiKeySecretRef"] == {"name": "braze", "key": "api-key"}
    assert dumped["spec"]["braze"]["maxObjectsPerRequest"] == 75
    assert dumped["spec"]["sync"] == {
        "settleSeconds": 120,
        "chunkRows": 5000,
        "maxRowsPerRun": 500_000_000,
        "checkpointSeconds": 1.0,
        "timeoutSeconds": 3600,
        "leaseSeconds": 60,
        "runHistory": 10,
    }
    assert CdiIntegration.model_validate(dumped) == integration
    assert CdiIntegration.model_validate(integration.model_dump(by_alias=True)) == integration


@pytest.mark.parametrize("type_", list(BLOCKS))
def test_credential_round_trips_by_alias(type_: str) -> None:
    doc = {"apiVersion": API_VERSION, "kind": "WarehouseCredential", "metadata": {"name": "wh"}}
    credential = WarehouseCredential.model_validate({**doc, "spec": credential_spec(type_)})
    assert credential.metadata.namespace == "default"
    dumped = credential.model_dump(by_alias=True, mode="json", exclude_none=True)
    for key in BLOCKS[type_]:
        assert key in dumped["spec"][type_]  # camelCase, as written
    assert WarehouseCredential.model_validate(dumped) == credential


def test_wrong_api_version_or_kind_rejected() -> None:
    doc = integration_doc()
    with pytest.raises(ValidationError):
        CdiIntegration.model_validate({**doc, "apiVersion": "cdi.ingest.dev/v1"})
    with pytest.raises(ValidationError):
        CdiIntegration.model_validate({**doc, "kind": "WarehouseCredential"})


@pytest.mark.parametrize("meta", [{"name": "Users"}, {"name": "users", "namespace": "Bad_NS"}, {}])
def test_metadata_names_follow_kubernetes(meta: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        CdiIntegration.model_validate({**integration_doc(), "metadata": meta})


def test_metadata_keeps_fields_we_do_not_model() -> None:
    doc = integration_doc()
    doc["metadata"]["uid"] = "1234"
    integration = CdiIntegration.model_validate(doc)
    assert integration.model_dump(by_alias=True)["metadata"]["uid"] == "1234"


# --- Status --------------------------------------------------------------------------------------------------------


def test_watermark_round_trips_with_aliases() -> None:
    watermark = Watermark.model_validate({"updatedAt": "2026-01-02T03:04:05.123456Z", "boundaryFingerprints": ["a"]})
    assert watermark.updated_at == T0
    dumped = watermark.model_dump(mode="json", by_alias=True)
    assert dumped == {
        "updatedAt": "2026-01-02T03:04:05.123456Z",
        "boundaryFingerprints": ["a"],
        "boundaryComplete": False,
        "source": None,
    }
    assert Watermark.model_validate(dumped) == watermark
    assert Watermark.model_validate({"updatedAt": T0}).boundary_fingerprints == []
    assert Watermark.model_validate({"updatedAt": T0, "boundaryComplete": True}).boundary_complete is True


def test_status_round_trips_with_aliases() -> None:
    status = CdiIntegrationStatus.model_validate(
        {
            "observedGeneration": 3,
            "phase": "Active",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "SyncSucceeded", "lastTransitionTime": T0},
                {"type": "ConnectionVerified", "status": "True", "reason": "Passed", "lastTransitionTime": T0},
            ],
            "watermark": {"updatedAt": T0},
            "lastSync": {"trigger": "syncNow", "startedAt": T0, "result": "Success", "rowsRead": 5, "rowsSynced": 5},
            "lastHandledSyncNow": "1",
        }
    )
    assert status.phase is Phase.ACTIVE
    assert status.last_sync is not None and status.last_sync.result is RunResult.SUCCESS
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped["lastSync"]["rowsSynced"] == 5
    assert dumped["lastHandledSyncNow"] == "1"
    assert CdiIntegrationStatus.model_validate(dumped) == status


def test_run_summary_defaults_and_limits() -> None:
    summary = RunSummary.model_validate({"startedAt": T0, "result": "Partial"})
    assert summary.trigger == "local"
    assert (summary.rows_read, summary.rows_synced, summary.rows_failed) == (0, 0, 0)
    sample = {"reason": "bad", "identifier": "u1", "message": "m"}
    with pytest.raises(ValidationError):
        RunSummary.model_validate({"startedAt": T0, "result": "Error", "rowErrors": [sample] * 21})
    with pytest.raises(ValidationError):
        RunSummary.model_validate({"startedAt": T0, "result": "Error", "trigger": "cron"})


def test_condition_reason_is_kubernetes_shaped() -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate({"type": "Ready", "status": "True", "reason": "has spaces", "lastTransitionTime": T0})
    with pytest.raises(ValidationError):
        Condition.model_validate({"type": "Ready", "status": "Yes", "reason": "Ok", "lastTransitionTime": T0})


def test_status_history_capped_at_the_largest_run_history() -> None:
    run = {"startedAt": T0, "result": "Success"}
    CdiIntegrationStatus.model_validate({"runs": [run] * 50})
    with pytest.raises(ValidationError):
        CdiIntegrationStatus.model_validate({"runs": [run] * 51})
    with pytest.raises(ValidationError, match="runHistory"):
        SyncOptions.model_validate({"runHistory": 51})


def test_public_reason_and_condition_names_do_not_change() -> None:
    # README, alerts and users' automation name these: a rename breaks them (api/reasons.py says so).
    public = [
        (reasons.READY, "Ready"),
        (reasons.CONNECTION_VERIFIED, "ConnectionVerified"),
        (reasons.STALLED, "Stalled"),
        (reasons.RECONCILING, "Reconciling"),
        (reasons.SYNCED, "Synced"),
        (reasons.FailureReason.PERMISSION_DENIED, "PermissionDenied"),
        (reasons.FailureReason.TABLE_MISSING, "TableMissing"),
        (reasons.FailureReason.COLUMN_MISSING, "ColumnMissing"),
        (reasons.CREDENTIAL_NOT_FOUND, "CredentialNotFound"),
        (reasons.DUPLICATE_TABLE, "DuplicateTable"),
        (reasons.INVALID_SPEC, "InvalidSpec"),
        (reasons.CONNECTION_TEST_FAILED, "ConnectionTestFailed"),
        (reasons.SYNC_NOW_REFUSED, "SyncNowRefused"),
        (reasons.CATALOG_NOT_FOUND, "BrazeCatalogNotFound"),
        (reasons.CATALOG_FIELD_MISSING, "CatalogFieldMissing"),
    ]
    assert all(constant == name for constant, name in public)
    values = [v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)]
    pattern = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    assert all(pattern.match(v) for v in [*values, *reasons.FailureReason]), "a reason Kubernetes would refuse"
