"""Connection tests: of an integration (its table, columns and a preview) and of a credential (reach + log in).

A catalogItems integration's test also asks Braze (`GET /catalogs`) that its catalog exists and that the fields of
the preview's PAYLOADs are fields of that catalog, naming any it lacks: Braze refuses such items.

The tests are blocking (warehouse client libraries are); `ConnectionTester` runs each in a thread of its own, many
at once, with a timeout that counts from the test's start.
Every failure becomes a reason a user can act on; messages come from WarehouseError / SourceColumnsError, which
never hold a secret value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from cdi_operator import warehouses
from cdi_operator.api import reasons
from cdi_operator.api.json import JSON
from cdi_operator.api.models import TEST_CONNECTION_ANNOTATION, CdiIntegrationSpec, DataType, WarehouseCredentialSpec
from cdi_operator.braze.client import BrazeClient, BrazeError, BrazeSettings
from cdi_operator.controller.conditions import shorten, timestamp
from cdi_operator.controller.settings import OperatorSettings
from cdi_operator.runner.columns import ColumnPlan, SourceColumnsError, plan_columns
from cdi_operator.warehouses import MissingSecretError, WarehouseError

log = logging.getLogger(__name__)

PREVIEW_ROWS = 3
PREVIEW_VALUE_CHARS = 64
PASSED, FAILED, TESTING = reasons.TEST_PASSED, reasons.TEST_FAILED, reasons.TESTING


@dataclass(frozen=True)
class BrazeAccess:
    """Where the integration's runner sends to, for the checks that ask Braze."""

    rest_endpoint: str | None
    api_key: str | None = field(default=None, repr=False)


@dataclass
class Outcome:
    result: str  # Passed / Failed
    reason: str
    message: str
    columns: list[str] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.result == PASSED

    def status(self, fingerprint: str | None, now: datetime | None = None) -> dict[str, Any]:
        """status.connectionTest."""
        record: dict[str, Any] = {
            "time": timestamp(now),
            "result": self.result,
            "reason": self.reason,
            "message": shorten(self.message),
            "columns": self.columns,
            "preview": self.preview,
        }
        if fingerprint is not None:
            record["fingerprint"] = fingerprint
        return record


def testing_status(fingerprint: str | None, message: str, now: datetime | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"time": timestamp(now), "result": TESTING, "reason": TESTING, "message": message}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    return record


def fingerprint(*parts: Any) -> str:
    """A short stable hash of what a test covers (JSON-able parts)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def preview_value(value: Any) -> Any:
    """A JSON-safe, short rendering of one value for status."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= PREVIEW_VALUE_CHARS else text[: PREVIEW_VALUE_CHARS - 1] + "…"


def preview_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{str(k): preview_value(v) for k, v in row.items()} for row in rows[:PREVIEW_ROWS]]


def _failure(exc: BaseException) -> Outcome:
    if isinstance(exc, WarehouseError):
        return Outcome(FAILED, exc.reason.value, exc.message)
    if isinstance(exc, MissingSecretError):
        return Outcome(FAILED, reasons.SECRET_MISSING, str(exc))
    if isinstance(exc, SourceColumnsError):
        return Outcome(FAILED, reasons.FailureReason.COLUMN_MISSING.value, "; ".join(exc.problems))
    raise exc


def check_integration(
    credential: WarehouseCredentialSpec,
    secrets: Mapping[tuple[str, str], str],
    spec: CdiIntegrationSpec,
    braze: BrazeAccess | None = None,
) -> Outcome:
    """Open the warehouse, describe the source, check its columns and UPDATED_AT's type, preview a few rows, and
    for catalogItems ask Braze about the catalog (blocking)."""
    table = spec.source.qualified_parts(credential.type)
    try:
        warehouse = warehouses.connect(credential, secrets)
    except (WarehouseError, MissingSecretError) as exc:
        return _failure(exc)
    try:
        description = warehouse.describe(table)
        columns = [c.name for c in description.columns]
        try:
            plan = plan_columns(spec.data_type, columns)
        except SourceColumnsError as exc:
            outcome = _failure(exc)
            outcome.columns = columns
            return outcome
        # The same UPDATED_AT query a sync starts with: a column of the wrong type fails here, not at the sync.
        warehouse.count_undated(table, plan.columns[0])
        rows = warehouse.preview(table, list(plan.columns), PREVIEW_ROWS)
        if spec.data_type is DataType.CATALOG_ITEMS and spec.catalog is not None:
            problem = check_catalog(spec.catalog.name, braze, plan, rows)
            if problem is not None:
                problem.columns, problem.preview = columns, preview_rows(rows)
                return problem
        return Outcome(
            PASSED,
            PASSED,
            f"{description.name}: {len(columns)} columns, the source contract is met",
            columns=columns,
            preview=preview_rows(rows),
        )
    except WarehouseError as exc:
        return _failure(exc)
    finally:
        try:
            warehouse.close()
        except Exception:
            log.debug("closing the warehouse failed", exc_info=True)


def check_catalog(name: str, braze: BrazeAccess | None, plan: ColumnPlan, rows: list[dict[str, Any]]) -> Outcome | None:
    """The failed Outcome when Braze has no catalog `name` or it lacks a field of the preview's PAYLOADs (blocking)."""
    if braze is None or not braze.rest_endpoint or not braze.api_key:
        return Outcome(
            FAILED,
            reasons.BRAZE_SETTINGS_MISSING,
            "the catalog cannot be checked without Braze settings: set spec.braze.restEndpoint and "
            "spec.braze.apiKeySecretRef, or the chart's braze defaults",
        )
    try:
        catalogs = asyncio.run(_catalogs(braze.rest_endpoint, braze.api_key))
    except BrazeError as exc:
        return Outcome(FAILED, f"Braze{exc.reason}", exc.message)
    fields = catalogs.get(name)
    if fields is None:
        known = ", ".join(sorted(catalogs)[:10]) or "none"
        return Outcome(
            FAILED,
            reasons.CATALOG_NOT_FOUND,
            f"Braze has no catalog {name!r} (catalogs: {known}); create it in Braze with its fields (a sync never "
            "creates one) or fix spec.catalog.name",
        )
    payload_column = plan.columns[plan.payload] if plan.payload is not None else None
    lacking: set[str] = set()
    for row in rows:
        payload = row.get(payload_column) if payload_column else None
        if isinstance(payload, str | bytes):
            try:
                payload = json.loads(payload)
            except ValueError:
                continue  # the run reports it as a row error
        if isinstance(payload, Mapping):
            lacking |= {str(key) for key in payload if key != "id" and key not in fields}
    if lacking:
        return Outcome(
            FAILED,
            reasons.CATALOG_FIELD_MISSING,
            f"catalog {name!r} has no field {', '.join(repr(f) for f in sorted(lacking))}, which the preview's "
            "PAYLOAD holds; add the field to the catalog in Braze or drop it from PAYLOAD (Braze refuses such items)",
        )
    return None


async def _catalogs(endpoint: str, api_key: str) -> dict[str, dict[str, str]]:
    settings = BrazeSettings(rest_endpoint=endpoint, api_key=api_key, max_attempts=3, max_rate_limit_wait=60.0)
    async with BrazeClient(settings) as client:
        return await client.catalogs()


def check_credential(credential: WarehouseCredentialSpec, secrets: Mapping[tuple[str, str], str]) -> Outcome:
    """Reach the warehouse and log in (blocking). Every adapter's connect() authenticates and runs a statement
    (Redshift sets up its session, DuckDB opens the file), so a successful connect is the check."""
    try:
        warehouse = warehouses.connect(credential, secrets)
    except (WarehouseError, MissingSecretError) as exc:
        return _failure(exc)
    try:
        warehouse.close()
    except Exception:
        log.debug("closing the warehouse failed", exc_info=True)
    return Outcome(PASSED, PASSED, f"reached the {credential.type.value} warehouse and logged in")


class ConnectionTester:
    """Runs blocking connection tests, at most `at_once` together, each in a daemon thread of its own.

    Not in asyncio's default executor (6 threads on 2 cores), where every Kubernetes API call of the operator runs
    (kube/aio.py): six tests of a warehouse that takes minutes to resume held all of it, so every reconcile's API
    calls and the leader Lease's renewal waited behind them; and a test queued there spent its timeout waiting. A
    test's timeout counts from its own start; a test that overruns it is left to finish in its thread (a client
    library call cannot be interrupted) and frees its place; its thread never holds up the operator's exit. While
    it has not returned, its object's next test fails at once instead of starting another thread: a warehouse that
    never answers would otherwise add a hung thread per object at every retest."""

    def __init__(self, at_once: int, timeout: float) -> None:
        self.timeout = timeout
        self._places = asyncio.Semaphore(at_once)
        # key -> (monotonic start, set once it returns) of its test still running past its timeout
        self._overrunning: dict[str, tuple[float, threading.Event]] = {}
        self._lock = threading.Lock()  # _overrunning is cleared from the test's thread

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> ConnectionTester:
        return cls(settings.connection_tests_at_once, settings.connection_test_timeout)

    def overrunning(self) -> int:
        """Tests still running in their threads past their timeout."""
        with self._lock:
            return len(self._overrunning)

    async def run(self, test: Callable[[], Outcome], key: str) -> Outcome:
        """The outcome of `test`, the connection test of the object `key` names (one test of it at a time)."""
        with self._lock:
            overrun = self._overrunning.get(key)
        if overrun is not None:
            started = overrun[0]
            return Outcome(
                FAILED,
                reasons.TEST_TIMEOUT,
                f"the last connection test, started {time.monotonic() - started:.0f} s ago, has still not returned "
                f"(more than {self.timeout:g} s); check that the warehouse is reachable from the cluster (network "
                "policy, firewall, allow-listed IPs) and resumed; no new test starts until that one returns",
            )
        async with self._places:
            started = time.monotonic()
            returned = threading.Event()
            try:
                return await asyncio.wait_for(_in_thread(test, lambda: self._returned(key, returned)), self.timeout)
            except TimeoutError:
                with self._lock:
                    if not returned.is_set():
                        self._overrunning[key] = (started, returned)
                return Outcome(
                    FAILED,
                    reasons.TEST_TIMEOUT,
                    f"the connection test took longer than {self.timeout:g} s; check that the warehouse is reachable "
                    "from the cluster (network policy, firewall, allow-listed IPs) and resumed",
                )
            except Exception as exc:
                log.exception("connection test crashed")
                return Outcome(
                    FAILED,
                    reasons.FailureReason.QUERY_FAILED.value,
                    f"the connection test failed unexpectedly: {type(exc).__name__}",
                )

    def _returned(self, key: str, returned: threading.Event) -> None:
        with self._lock:
            returned.set()
            overrun = self._overrunning.get(key)
            if overrun is not None and overrun[1] is returned:
                del self._overrunning[key]


async def _in_thread(test: Callable[[], Outcome], returned: Callable[[], None]) -> Outcome:
    """`test()` in a daemon thread of its own; `returned()` runs in that thread once `test()` has returned."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Outcome] = loop.create_future()

    def settle(outcome: Outcome | None, error: BaseException | None) -> None:
        if answer.done():  # timed out meanwhile
            return
        if error is not None:
            answer.set_exception(error)
        else:
            assert outcome is not None
            answer.set_result(outcome)

    def work() -> None:
        outcome, error = None, None
        try:
            outcome = test()
        except Exception as exc:
            error = exc
        finally:
            returned()
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits for the outcome any more
            loop.call_soon_threadsafe(settle, outcome, error)

    threading.Thread(target=work, name="cdi-connection-test", daemon=True).start()
    return await answer


def spec_error(exc: ValidationError) -> str:
    """A message naming the fields, e.g. `spec.schedule: runs 5 minutes apart; ...`."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(["spec", *(str(p) for p in error["loc"])])
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - 3
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def test_wanted(
    obj: JSON,
    fingerprint: str,
    retest_failed_seconds: float,
    now: datetime | None = None,
    *,
    retest_missing_secret_seconds: float | None = None,
) -> tuple[bool, bool, str | None]:
    """(test now?, is the last passing test still valid for the current spec?, requested annotation value)."""
    status = obj.get("status") or {}
    test = status.get("connectionTest") or None
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    requested = annotations.get(TEST_CONNECTION_ANNOTATION) or None
    if requested is not None and requested == status.get("lastHandledTestConnection"):
        requested = None
    if not isinstance(test, dict) or test.get("fingerprint") != fingerprint:
        return True, False, requested
    if test.get("result") == TESTING:  # interrupted (operator restarted mid-test)
        return True, False, requested
    if requested is not None:
        return True, test.get("result") == PASSED, requested
    if test.get("result") == FAILED:
        wait = retest_failed_seconds
        if test.get("reason") == reasons.SECRET_MISSING and retest_missing_secret_seconds is not None:
            # A Secret applied together with its credential (an ExternalSecret, a SealedSecret) arrives a moment
            # later; looking again soon lets one GitOps apply converge.
            wait = min(wait, retest_missing_secret_seconds)
        tested = _parse_time(test.get("time"))
        now = now or datetime.now(UTC)
        if tested is None or (now - tested).total_seconds() >= wait:
            return True, False, None
    return False, test.get("result") == PASSED, None
