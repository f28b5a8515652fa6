"""CdiIntegration: plain decisions (spec check, duplicate tables, when to test, the CronJob) and the reconcile.

The reconcile is level-triggered: it reads the object, its credential, CronJob and Jobs, decides, and writes only
what differs, so running it again (after a restart, on every watch event, on the periodic resync) is harmless.

Phases: Failed (spec invalid: Stalled=True InvalidSpec), Draft (waiting for a passing connection test, or stalled on
CredentialNotFound / CredentialInvalid / InvalidSource / DuplicateTable / the test's reason), Active (CronJob
scheduled), Suspended (CronJob suspended by spec.suspend).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from pydantic import ValidationError

from cdi_operator.api import reasons
from cdi_operator.api.json import JSON
from cdi_operator.api.models import (
    API_VERSION,
    CDI_PLURAL,
    SYNC_NOW_ANNOTATION,
    WHC_PLURAL,
    CdiIntegrationSpec,
    CdiIntegrationStatus,
    DataType,
    Phase,
    RunResult,
    RunSummary,
    SecretKeyRef,
    SourceTable,
    WarehouseCredentialSpec,
)
from cdi_operator.api.snowflake_key import resolved_spec
from cdi_operator.controller import alerts, conditions, connection, deadline, history, observability, rewind, sync_now
from cdi_operator.controller.connection import spec_error, test_wanted
from cdi_operator.controller.credential import ensure_in_use_finalizer
from cdi_operator.controller.listing import SharedList
from cdi_operator.controller.resources import merged as merged_resources
from cdi_operator.controller.runner_access import build_run_lease, build_runner_access, runner_account_name
from cdi_operator.controller.runner_writes import decisive
from cdi_operator.controller.settings import OperatorSettings
from cdi_operator.controller.status import StatusWriter
from cdi_operator.kube.aio import KubeApi
from cdi_operator.kube.objects import controller_reference
from cdi_operator.runner import contract

log = logging.getLogger(__name__)

INTEGRATION_LABEL = "cdi.ingest.dev/integration"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "cdi-operator"
CRONJOB_NAME_MAX = 52  # the CronJob controller appends "-<minutes>" (11 characters) for its Jobs
LABEL_VALUE_MAX = 63
RUNNER_CONTAINER = "runner"
RUNNER_ACCESS_REFRESH = 600.0


def _shorten_name(name: str, limit: int) -> str:
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11].rstrip('-.')}-{digest}"


def cronjob_name(integration: str) -> str:
    return _shorten_name(integration, CRONJOB_NAME_MAX)


def label_value(integration: str) -> str:
    return _shorten_name(integration, LABEL_VALUE_MAX)


def selector(integration: str) -> str:
    return f"{INTEGRATION_LABEL}={label_value(integration)}"


def parse_spec(obj: JSON) -> CdiIntegrationSpec | str:
    """The validated spec, or a message naming what is wrong."""
    try:
        return CdiIntegrationSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        return spec_error(exc)


def _source_key(obj: JSON, credentials: Mapping[str, WarehouseCredentialSpec]) -> tuple[str, str] | None:
    """What makes two integrations read the same table: the table's address in the warehouse when the credential
    is known (whatever credential names the warehouse), else the credential's name and the table."""
    spec = obj.get("spec") or {}
    try:
        source = SourceTable.model_validate(spec.get("source") or {})
        credential = str((spec.get("credentialRef") or {})["name"])
    except (ValidationError, KeyError, TypeError):
        return None
    if credential in credentials:
        return "table", credentials[credential].table_address(source)
    return f"credential {credential}", source.display().lower()


def credential_specs(objects: list[JSON]) -> dict[str, WarehouseCredentialSpec]:
    """The valid specs of these WarehouseCredential objects, by name."""
    specs = {}
    for obj in objects:
        try:
            specs[str(obj["metadata"]["name"])] = WarehouseCredentialSpec.model_validate(obj.get("spec") or {})
        except (ValidationError, KeyError, TypeError):
            continue
    return specs


def _age_key(obj: JSON) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("creationTimestamp") or ""), str(meta.get("name") or "")


_SourceIndex = tuple[dict[tuple[str, str], list[JSON]], dict[str, WarehouseCredentialSpec]]


def find_duplicate(
    obj: JSON, others: list[JSON], credentials: Mapping[str, WarehouseCredentialSpec] | None = None
) -> str | None:
    """The name of an older integration of the namespace on the same table (through any credential), or None. The
    oldest (by creation time, then name) keeps the table; the others are rejected."""
    credentials = credentials or {}
    key = _source_key(obj, credentials)
    if key is None:
        return None
    name = (obj.get("metadata") or {}).get("name")
    for other in sorted(others, key=_age_key):
        meta = other.get("metadata") or {}
        if meta.get("name") == name or meta.get("deletionTimestamp"):
            continue
        if _source_key(other, credentials) == key and _age_key(other) < _age_key(obj):
            return str(meta.get("name"))
    return None


def test_fingerprint(spec: CdiIntegrationSpec, credential: JSON) -> str:
    meta = credential.get("metadata") or {}
    return connection.fingerprint(
        meta.get("uid"),
        meta.get("generation"),
        spec.credential_ref.name,
        spec.source.model_dump(mode="json", by_alias=True, exclude_none=True),
        spec.data_type.value,
    )


def build_cronjob(obj: JSON, spec: CdiIntegrationSpec, settings: OperatorSettings, *, suspend: bool) -> JSON:
    """The CronJob of an integration (applied server-side; every field here is owned by the operator)."""
    meta = obj["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    labels = {INTEGRATION_LABEL: label_value(name), MANAGED_BY_LABEL: MANAGED_BY}
    env: list[JSON] = [
        {"name": contract.ENV_JOB_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job-name']"}}},
        {"name": contract.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    braze = spec.braze
    if (braze is None or braze.rest_endpoint is None) and settings.braze_default_endpoint:
        env.append({"name": contract.ENV_BRAZE_ENDPOINT, "value": settings.braze_default_endpoint})
    if (braze is None or braze.api_key_secret_ref is None) and settings.braze_default_secret_name:
        env.append(
            {
                "name": contract.ENV_BRAZE_API_KEY,
                "valueFrom": {
                    "secretKeyRef": {
                        "name": settings.braze_default_secret_name,
                        "key": settings.braze_default_secret_key,
                    }
                },
            }
        )
    container: JSON = {
        "name": RUNNER_CONTAINER,
        "image": settings.runner_image,
        "imagePullPolicy": settings.runner_image_pull_policy,
        "args": contract.runner_args(namespace, name),
        "env": env,
        # A read-only root as the chart gives the operator; /tmp (the image's HOME) is where the clients' caches go.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    resources = merged_resources(settings.runner_resources, spec.runner.resources if spec.runner else None)
    if resources:
        container["resources"] = resources
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(name),
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [controller_reference(obj.get("apiVersion", API_VERSION), "CdiIntegration", meta)],
        },
        "spec": {
            "schedule": spec.schedule,
            "timeZone": spec.time_zone,
            "suspend": suspend,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 2,
                    "activeDeadlineSeconds": spec.sync.timeout_seconds,
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": settings.runner_service_account or runner_account_name(name),
                            "automountServiceAccountToken": True,
                            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                            "restartPolicy": "Never",
                            "containers": [container],
                            "volumes": [{"name": "tmp", "emptyDir": {}}],
                        },
                    },
                },
            },
        },
    }


class IntegrationReconciler:
    def __init__(
        self,
        kube: KubeApi,
        settings: OperatorSettings,
        observer: observability.Observer | None = None,
        tester: connection.ConnectionTester | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.observer = observer
        self.tester = tester or connection.ConnectionTester.from_settings(settings)
        self._by_source: SharedList[_SourceIndex] = SharedList(self._list_by_source)
        # (namespace, name) -> (digest, monotonic time) of the runner access last applied: three writes per
        # integration and resync would otherwise be most of the operator's API traffic at scale.
        self._runner_access: dict[tuple[str, str], tuple[str, float]] = {}
        # (namespace, name, the object as an own status write left it): the Controller skips that write's event
        self.own_writes: Callable[[str, str, JSON], None] | None = None

    async def ensure_runner_access(self, namespace: str, name: str, manifests: list[JSON]) -> None:
        """Applies them when they changed, or every RUNNER_ACCESS_REFRESH seconds (someone may have deleted them)."""
        digest = hashlib.sha256(json.dumps(manifests, sort_keys=True).encode()).hexdigest()
        last = self._runner_access.get((namespace, name))
        if last is not None and last[0] == digest and time.monotonic() - last[1] < RUNNER_ACCESS_REFRESH:
            return
        await self.kube.apply_runner_access(manifests)
        self._runner_access[(namespace, name)] = (digest, time.monotonic())

    async def _list_by_source(self, namespace: str) -> _SourceIndex:
        credentials = credential_specs(await self.kube.list_objects(WHC_PLURAL, namespace))
        index: dict[tuple[str, str], list[JSON]] = {}
        for other in await self.kube.list_objects(CDI_PLURAL, namespace):
            key = _source_key(other, credentials)
            if key is not None:
                index.setdefault(key, []).append(other)
        return index, credentials

    async def same_source(self, obj: JSON) -> tuple[list[JSON], dict[str, WarehouseCredentialSpec]]:
        """The integrations of obj's namespace on its table, through any credential (obj included), and the
        namespace's credentials, from LISTs at least as fresh as this call, shared with concurrent reconciles
        (listing.py)."""
        index, credentials = await self._by_source.get(str((obj.get("metadata") or {}).get("namespace")))
        key = _source_key(obj, credentials)
        return (index.get(key, []) if key is not None else []), credentials

    async def reconcile(self, namespace: str, name: str) -> None:
        obj = await self.kube.get(CDI_PLURAL, namespace, name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            if self.observer is not None:
                self.observer.forget(namespace, name)
            return
        run = _Run(self, obj)
        phase_before = run.status.get("phase")
        try:
            await run.go()
            if self.observer is not None:
                await run.observe(self.observer, phase_before)
        finally:  # what was found is written also when a step failed (the next reconcile retries it)
            await run.writer.flush()


class _Run:
    """One reconcile of one integration."""

    def __init__(self, reconciler: IntegrationReconciler, obj: JSON) -> None:
        self.kube = reconciler.kube
        self.settings = reconciler.settings
        self.observer = reconciler.observer
        self.reconciler = reconciler
        self.obj = obj
        meta = obj["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.generation: int | None = meta.get("generation")
        self.writer = StatusWriter(self.kube, CDI_PLURAL, obj, CdiIntegrationStatus)
        self.writer.on_written = self._written
        self.tested = False

    def _written(self, answer: JSON) -> None:
        """A status patch of this reconcile as the API server answered it: when that is the object as read with the
        status as written here, its watch event brings nothing this reconcile has not acted on (runner_writes.py)."""
        own = self.reconciler.own_writes
        if own is not None and decisive(answer) == decisive({**self.obj, "status": self.writer.written}):
            own(self.namespace, self.name, answer)

    @property
    def where(self) -> str:
        return f"CdiIntegration {self.namespace}/{self.name}"

    @property
    def status(self) -> JSON:
        """The status as read (or as patched by the "testing" write of a connection test)."""
        return self.writer.written

    def set(self, phase: Phase | None, wants: list[conditions.Want], **fields: Any) -> None:
        self.writer.set(observed_generation=self.generation, **fields)
        if phase is not None:
            self.writer.set(phase=phase)
        self.writer.want(wants)

    async def stop(self, phase: Phase, reason: str, message: str, connection_status: str | None = None) -> None:
        """Not schedulable: suspend the CronJob if there is one, write the status, refuse a sync-now."""
        await self.suspend()
        self.set(phase, conditions.stalled(reason, message, connection=connection_status))  # type: ignore[arg-type]
        changed = self.status.get("phase") != phase.value or _reason(self.status, reasons.STALLED) != reason
        if changed and not self.tested:  # a test that just failed has had its own Event
            await self.kube.event(self.obj, "Warning", reason, message)
        await self.handle_rewind()
        await self.handle_sync_now(phase, None)

    async def suspend(self) -> None:
        """Suspend the CronJob, unless the integration has no phase yet: then it has never had one (a new one, of
        1,000 applied at once, would make a PATCH that can only fail)."""
        if self.status.get("phase") is not None:
            await self.kube.suspend_cronjob(self.namespace, cronjob_name(self.name))

    async def go(self) -> None:
        spec = parse_spec(self.obj)
        if isinstance(spec, str):
            await self.stop(Phase.FAILED, reasons.INVALID_SPEC, f"{self.where}: {spec}")
            return
        duplicate = find_duplicate(self.obj, *await self.reconciler.same_source(self.obj))
        if duplicate is not None:
            await self.stop(
                Phase.DRAFT,
                reasons.DUPLICATE_TABLE,
                f"CdiIntegration {duplicate} already syncs {spec.source.display()} (whatever credential names the "
                f"warehouse); two integrations on one table would send each row twice. Delete this one or "
                f"{duplicate}",
            )
            return
        credential = await self.kube.get(WHC_PLURAL, self.namespace, spec.credential_ref.name)
        if credential is None:
            await self.stop(
                Phase.DRAFT,
                reasons.CREDENTIAL_NOT_FOUND,
                f"WarehouseCredential {spec.credential_ref.name!r} does not exist in namespace {self.namespace}; "
                "create it or fix spec.credentialRef.name",
            )
            return
        try:
            credential_spec = WarehouseCredentialSpec.model_validate(credential.get("spec") or {})
            credential_spec = resolved_spec(credential_spec, spec.credential_ref.name)  # an operator-made key
        except ValidationError as exc:
            await self.stop(
                Phase.DRAFT,
                reasons.CREDENTIAL_INVALID,
                f"WarehouseCredential {spec.credential_ref.name}: {spec_error(exc)}",
            )
            return
        problems = spec.source.problems_for(credential_spec.type)
        if problems:
            await self.stop(Phase.DRAFT, reasons.INVALID_SOURCE, "; ".join(problems))
            return

        fingerprint = test_fingerprint(spec, credential)
        wanted, still_valid, requested = test_wanted(
            self.obj,
            fingerprint,
            self.settings.retest_failed_seconds,
            retest_missing_secret_seconds=self.settings.resync_seconds,
        )
        if wanted:
            await self.test(spec, credential_spec, fingerprint, live=still_valid, requested=requested)
        test = self.writer.get("connection_test") or {}
        if test.get("result") != connection.PASSED:
            await self.stop(
                Phase.DRAFT,
                str(test.get("reason") or reasons.CONNECTION_TEST_FAILED),
                str(test.get("message") or "the connection test failed"),
                connection_status="False",
            )
            return

        phase = Phase.SUSPENDED if spec.suspend else Phase.ACTIVE
        labels = {INTEGRATION_LABEL: label_value(self.name), MANAGED_BY_LABEL: MANAGED_BY}
        manifests = [build_run_lease(self.obj, labels)]
        if self.settings.runner_service_account is None:
            manifests += build_runner_access(self.obj, spec, credential_spec, labels)
        await self.reconciler.ensure_runner_access(self.namespace, self.name, manifests)
        manifest = build_cronjob(self.obj, spec, self.settings, suspend=spec.suspend)
        await self.record_deadline(await self.kube.apply_cronjob(manifest), spec.sync.run_history)
        await ensure_in_use_finalizer(self.kube, credential, self.where)
        message = (
            "scheduled syncs are paused (spec.suspend)"
            if spec.suspend
            else f"syncing on {spec.schedule!r} ({spec.time_zone})"
        )
        self.set(phase, conditions.ready(phase.value, message))
        if self.status.get("phase") != phase.value:
            await self.kube.event(self.obj, "Normal", phase.value, f"{self.where} is {phase.value}: {message}")
        await self.handle_rewind()
        await self.handle_sync_now(phase, manifest)

    async def test(
        self,
        spec: CdiIntegrationSpec,
        credential_spec: WarehouseCredentialSpec,
        fingerprint: str,
        *,
        live: bool,
        requested: str | None,
    ) -> None:
        message = f"testing the connection to {spec.source.display()}"
        fields: JSON = {"connection_test": connection.testing_status(fingerprint, message)}
        if requested is not None:
            fields["last_handled_test_connection"] = requested
        if not live:
            await self.suspend()
        self.set(None if live else Phase.DRAFT, conditions.testing(message, keep_ready=live), **fields)
        await self.writer.flush()  # a test may take minutes: show that it runs
        secrets = await self.kube.secret_values(self.namespace, credential_spec.secret_refs())
        braze = await self.braze_access(spec) if spec.data_type is DataType.CATALOG_ITEMS else None
        outcome = await self.reconciler.tester.run(
            partial(connection.check_integration, credential_spec, secrets, spec, braze),
            f"CdiIntegration {self.namespace}/{self.name}",
        )
        self.writer.set(connection_test=outcome.status(fingerprint))
        if self.observer is not None:
            self.observer.connection_test(credential_spec.type.value, outcome.result)
        if outcome.passed:
            await self.kube.event(self.obj, "Normal", reasons.CONNECTION_TEST_PASSED, outcome.message)
        else:
            await self.kube.event(
                self.obj, "Warning", reasons.CONNECTION_TEST_FAILED, f"{outcome.reason}: {outcome.message}"
            )
        self.tested = True

    async def braze_access(self, spec: CdiIntegrationSpec) -> connection.BrazeAccess:
        """The Braze endpoint and key the integration's runner gets (its spec.braze, else the operator's)."""
        braze = spec.braze
        endpoint = braze.rest_endpoint if braze and braze.rest_endpoint else self.settings.braze_default_endpoint
        ref = braze.api_key_secret_ref if braze else None
        if ref is None and self.settings.braze_default_secret_name:
            ref = SecretKeyRef(name=self.settings.braze_default_secret_name, key=self.settings.braze_default_secret_key)
        key = (await self.kube.secret_values(self.namespace, [ref])).get((ref.name, ref.key)) if ref else None
        return connection.BrazeAccess(endpoint, key)

    async def handle_sync_now(self, phase: Phase, manifest: JSON | None) -> None:
        decision = sync_now.decide(self.obj, phase.value, [])
        if decision.decision is sync_now.Decision.NOTHING:
            return
        value = decision.value
        assert value is not None
        if phase is Phase.ACTIVE:
            jobs = await self.kube.list_jobs(self.namespace, selector(self.name))
            decision = sync_now.decide(self.obj, phase.value, jobs)
        if decision.decision is sync_now.Decision.CREATE:
            cronjob = await self.kube.get_cronjob(self.namespace, cronjob_name(self.name))
            if cronjob is None:  # just applied; cannot happen unless deleted in between: try again later
                return
            job = sync_now.build_job(cronjob, value)
            created = await self.kube.create_job(job)
            if created:
                await self.kube.event(
                    self.obj,
                    "Normal",
                    reasons.SYNC_NOW,
                    f"sync-now {decision.value!r}: started Job {job['metadata']['name']}",
                )
        else:
            await self.kube.event(self.obj, "Warning", reasons.SYNC_NOW_REFUSED, decision.message)
        self.writer.set(last_handled_sync_now=decision.value)

    async def record_deadline(self, cronjob: JSON | None, run_history: int) -> None:
        """A run its Job's deadline stopped, recorded in status.lastSync and status.runs (deadline.py), without
        replacing what a runner writes meanwhile (StatusWriter.guarded)."""
        if not deadline.should_check(self.status.get("lastSync"), cronjob):
            return
        jobs = await self.kube.list_jobs(self.namespace, selector(self.name))
        await self.writer.guarded(partial(deadline.status_patch, jobs, run_history=run_history))

    async def handle_rewind(self) -> None:
        """A new cdi.ingest.dev/rewind: accepted into status.pendingRewind or refused, with an Event (rewind.py).
        Flushed at once, so that a sync-now of the same reconcile starts a run that sees it."""
        if rewind.requested_value(self.obj) is None:
            return
        decision = rewind.decide(self.obj, await self.kube.list_jobs(self.namespace, selector(self.name)))
        if decision.decision is rewind.Decision.ACCEPT:
            self.writer.set(pending_rewind=decision.pending)
            await self.kube.event(self.obj, "Normal", reasons.REWIND, decision.message)
        else:
            await self.kube.event(self.obj, "Warning", reasons.REWIND_REFUSED, decision.message)
        self.writer.set(last_handled_rewind=decision.value)
        await self.writer.flush()

    async def observe(self, observer: observability.Observer, phase_before: str | None) -> None:
        """Metrics, Events and failure e-mail for each run of status.runs not yet accounted for, the Synced condition
        from the latest run (history.py, observability.py); the sync alerts of spec.notifications (alerts.py)."""
        status = self.writer.view()
        fresh = observer.observe(self.obj, status)
        if fresh:
            self.writer.set(counted_runs=history.counted_runs(status, fresh))
        for run in fresh:
            if run.result is RunResult.SKIPPED and run.trigger == "syncNow":
                await self.kube.event(
                    self.obj,
                    "Warning",
                    reasons.SYNC_NOW_SKIPPED,
                    f"{self.where}: the sync-now Job {run.job or '?'} did not run: {run.message}; annotate "
                    f"{SYNC_NOW_ANNOTATION} again once that run has finished",
                )
        summary = history.latest(status) or observability.last_sync(status)
        want = observability.synced_condition(summary)
        if want is not None:
            old = conditions.find(status.get("conditions"), want.type) or {}
            if (old.get("status"), old.get("reason"), old.get("message")) != (want.status, want.reason, want.message):
                self.set(None, [want])
                if want.status == "False":
                    await self.kube.event(self.obj, "Warning", want.reason, f"{self.where}: {want.message}")
        failures: list[tuple[RunSummary, str]] = []
        stalled = observability.stalled_failure(self.obj, status, phase_before)
        if stalled is not None:
            failures.append(stalled)
        else:
            errors = [r for r in fresh if r.result is RunResult.ERROR]
            if summary is not None and summary.result is RunResult.ERROR and summary not in errors:
                errors.append(summary)  # still failing: told unless told already (a refused e-mail is retried)
            failures += [(r, observability.failure_reason(r)) for r in errors]
        last_key = status.get("lastNotifiedFailure")
        for failure in failures:
            key = await observer.notify(self.obj, *failure, last_key, status.get("runs"))
            if key is not None:
                self.writer.set(last_notified_failure=key)
                last_key = key
        # every run that finished since the last reconcile, oldest first, and the latest again: its e-mail may have
        # been refused by the SMTP server last time
        undecided = [*fresh, *([summary] if summary is not None and summary not in fresh else [])]
        await self.tell_alerts(observer, undecided, status)

    async def tell_alerts(self, observer: observability.Observer, runs: list[RunSummary], status: JSON) -> None:
        """The sync alerts of spec.notifications about `runs`, once per run (alerts.py)."""
        integration = observability.parse(self.obj)
        if integration is None:
            return
        notified = {**status}
        for summary in runs:
            fired = alerts.due(integration, summary, notified)
            if fired is None:
                continue
            if fired and not await observer.alert(integration, summary, fired):
                break  # the SMTP server refused: the next reconcile tries this run again
            notified["notifiedRuns"] = alerts.recorded(notified, summary, fired)
            self.writer.set(notified_runs=notified["notifiedRuns"])


def _reason(status: JSON, type_: str) -> str | None:
    condition = conditions.find(status.get("conditions"), type_)
    return None if condition is None else condition.get("reason")
