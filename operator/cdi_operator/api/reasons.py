"""Condition types and reasons: every name the operator and the runner put into status conditions, Events and run
records, in one place.

These strings are an API: users read them in `kubectl get -o yaml` and `kubectl get events`, the README names them,
Argo CD and Flux read the conditions, alerts and runbooks match on them. Never change one; add a new one instead.

To add a reason: a constant in the group it belongs to, with a comment saying when it is used (UpperCamelCase, as
Kubernetes reasons are; a condition's reason must match `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`). A reason that
means "fix the spec or the objects, nothing to e-mail" also goes into `SPEC_PROBLEMS`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

# --- condition types (kstatus: Ready and ConnectionVerified normal-true; Reconciling and Stalled abnormal-true) ---

READY: Final = "Ready"
CONNECTION_VERIFIED: Final = "ConnectionVerified"
RECONCILING: Final = "Reconciling"  # True while a connection test runs or a deletion waits
STALLED: Final = "Stalled"  # True when a human must act; its reason says why
SYNCED: Final = "Synced"  # CdiIntegration: the last finished run (True after Success/Partial)
KEY_CONFLICT: Final = "KeyConflict"  # WarehouseCredential: another credential manages the same Snowflake user's keys
# WarehouseCredential: integrations that send to several Braze workspaces read as its Snowflake user
WORKSPACE_CONFLICT: Final = "WorkspaceConflict"


# --- the spec or the objects it names are wrong (Stalled=True; Warning Event; never e-mailed) ---

INVALID_SPEC: Final = "InvalidSpec"  # a field fails validation (the message names it and the fix)
CREDENTIAL_NOT_FOUND: Final = "CredentialNotFound"  # spec.credentialRef names no WarehouseCredential
CREDENTIAL_INVALID: Final = "CredentialInvalid"  # the credential's own spec is invalid
INVALID_SOURCE: Final = "InvalidSource"  # spec.source does not fit the credential's warehouse type
DUPLICATE_TABLE: Final = "DuplicateTable"  # an older integration already syncs this table (through any credential)

SPEC_PROBLEMS: Final = frozenset(
    {INVALID_SPEC, DUPLICATE_TABLE, CREDENTIAL_NOT_FOUND, CREDENTIAL_INVALID, INVALID_SOURCE}
)


# --- connection tests (status.connectionTest.reason; Stalled=True with it when it failed) ---


class FailureReason(StrEnum):
    """Why a warehouse could not be used: a connection test's reason, and a failed run's."""

    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    WAREHOUSE_MISSING = "WarehouseMissing"
    WAREHOUSE_SUSPENDED = "WarehouseSuspended"  # Snowflake: suspended, without auto-resume (or OPERATE)
    DATABASE_MISSING = "DatabaseMissing"
    TABLE_MISSING = "TableMissing"
    PERMISSION_DENIED = "PermissionDenied"
    COLUMN_MISSING = "ColumnMissing"
    COLUMN_TYPE = "ColumnType"
    WARMING_UP = "WarmingUp"
    QUERY_FAILED = "QueryFailed"


TEST_PASSED: Final = "Passed"  # status.connectionTest.result/reason, and ConnectionVerified=True
TEST_FAILED: Final = "Failed"  # status.connectionTest.result
TESTING: Final = "Testing"  # a test is running (Reconciling=True)
SECRET_MISSING: Final = "SecretMissing"  # a Secret or key the credential names is absent
TEST_TIMEOUT: Final = "Timeout"  # the test took longer than $CDI_CONNECTION_TEST_TIMEOUT_SECONDS
BRAZE_SETTINGS_MISSING: Final = "BrazeSettingsMissing"  # catalogItems: no Braze endpoint or key to ask
CATALOG_NOT_FOUND: Final = "BrazeCatalogNotFound"  # catalogItems: the catalog does not exist (also a run's reason)
CATALOG_FIELD_MISSING: Final = "CatalogFieldMissing"  # catalogItems: a PAYLOAD field the catalog lacks
CONNECTION_TEST_PASSED: Final = "ConnectionTestPassed"  # Event
CONNECTION_TEST_FAILED: Final = "ConnectionTestFailed"  # Event (the message starts with the test's reason)


# --- a CdiIntegration that is syncing (Ready=True; the reason is its phase) and its runs ---

ACTIVE: Final = "Active"  # also the Normal Event when it becomes Active
SUSPENDED: Final = "Suspended"  # spec.suspend; also its Event
SYNC_NOW: Final = "SyncNow"  # Event: the Job of a sync-now value was created
SYNC_NOW_REFUSED: Final = "SyncNowRefused"  # Event: a sync-now value not acted on (not Active, or a run in progress)
# Event: a sync-now's Job found another run holding the integration (runner/claim.py) and sent nothing; refused, not
# queued, as SYNC_NOW_REFUSED
SYNC_NOW_SKIPPED: Final = "SyncNowSkipped"
SYNC_FAILED: Final = "SyncFailed"  # Synced=False for a failed run whose message names no more precise reason
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"  # a run stopped at spec.sync.timeoutSeconds (the Job's deadline)
TERMINATED: Final = "Terminated"  # a run whose runner got SIGTERM; the operator names the deadline when it was that
REWIND: Final = "Rewind"  # Event: a cdi.ingest.dev/rewind value accepted into status.pendingRewind
REWIND_REFUSED: Final = "RewindRefused"  # Event: a rewind value not acted on (a run in progress, not a time, …)
# Synced's reason after a run is otherwise its result (RunResult: Success, Partial, LimitExceeded), the warehouse
# reason of a failed run (FailureReason), or "Braze" and the Braze error (BrazeUnauthorized, BrazeCatalogNotFound, …).


class Alert(StrEnum):
    """A rule of spec.notifications that fired for a run: the e-mail's `X-CDI-Alert` header and its subject."""

    ROW_ERROR_RATE = "RowErrorRate"  # rowErrorRatePercent: the run's row errors exceed the percentage
    SUCCEEDED = "Succeeded"  # onSuccess: the run completed (Success or Partial)
    NO_CHANGES = "NoChanges"  # onSuccessWithoutChanges: the run completed without any changed row


# --- WarehouseCredential ---

VERIFIED: Final = "Verified"  # Ready=True: the connection test passed
IN_USE: Final = "InUse"  # Ready=False while a deletion waits for the integrations that use it
DELETION_BLOCKED: Final = "DeletionBlocked"  # Event: a deletion waits (names the integrations)
KEY_PAIR_GENERATED: Final = "KeyPairGenerated"  # Event: the operator made a Snowflake key pair
KEY_SECRET_CONFLICT: Final = "KeySecretConflict"  # Stalled: <credential>-snowflake-key exists, not owned by it
KEY_SECRET_INVALID: Final = "KeySecretInvalid"  # Stalled: the owned key Secret holds no key
KEY_ROTATION_STARTED: Final = "KeyRotationStarted"  # Event: a new key for the other slot
KEY_ROTATION_PENDING: Final = "KeyRotationPending"  # Event: a rotate-key value while one already waits
KEY_ROTATED: Final = "KeyRotated"  # Event: a login with the new key passed; it is now active
KEY_ROTATION_IGNORED: Final = "KeyRotationIgnored"  # Event: rotate-key on a credential that brings its own key
SAME_SNOWFLAKE_USER: Final = "SameSnowflakeUser"  # KeyConflict=True
NO_CONFLICT: Final = "NoConflict"  # KeyConflict=False
NOT_MANAGED: Final = "NotManaged"  # KeyConflict=False: the key is the user's own
SEVERAL_WORKSPACES: Final = "SeveralBrazeWorkspaces"  # WorkspaceConflict=True
ONE_WORKSPACE: Final = "OneBrazeWorkspace"  # WorkspaceConflict=False
