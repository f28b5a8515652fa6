"""`cdi sync --in-cluster --integration NAMESPACE/NAME [--trigger schedule|syncNow]`: one sync in a runner pod.

The runner reads its CdiIntegration and WarehouseCredential from the API server, the BrazeWorkspace the integration
names (if any), the Secrets these reference (only those), and keeps its watermark and last run in the
CdiIntegration's status (see status_store.py). It needs `get` on cdiintegrations, warehousecredentials and
brazeworkspaces, `patch` on cdiintegrations/status and `get` on the referenced Secrets, nothing more.

Exit status as for `cdi sync -f`: 0 completed (row errors included), 1 failed as a whole, 2 bad input (a field of
the objects, a missing Secret or key, access the ServiceAccount lacks, a missing setting). Every failure after the
CdiIntegration was read is also written to `status.lastSync` (result Error, message), best effort.
A rewind the operator accepted (`status.pendingRewind`) is applied before the watermark is read (runner/rewind.py);
SIGTERM ends a run as Error `Terminated:` instead of leaving it Running (runner/termination.py).

`$CDI_JOB_NAME` and `$CDI_POD_NAME` (runner/contract.py), when set (the pod label `job-name` and the pod's name, by
the downward API), are recorded as the run's `job` and `pod`. Before it reads a row the run claims its integration
(runner/claim.py); a run that finds another in progress sends nothing, records itself in status.runs as Skipped
naming the holder, and exits 0. The run's record (runner/run_record.py) is in status.runs from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, Any

from pydantic import ValidationError

from cdi_operator.api.models import (
    CDI_PLURAL,
    WHC_PLURAL,
    WORKSPACE_PLURAL,
    BrazeWorkspace,
    CdiIntegration,
    RunResult,
    RunSummary,
    WarehouseCredential,
)
from cdi_operator.api.snowflake_key import resolved_spec
from cdi_operator.braze.client import BrazeClient
from cdi_operator.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    BadInput,
    ProgressView,
    braze_settings,
    open_warehouse,
    print_result,
    second_reader,
)
from cdi_operator.commands.manifests import ManifestError, Manifests, format_validation_error
from cdi_operator.kube import Forbidden, InvalidSecret, Kube, KubeError, NotFound, load_config
from cdi_operator.runner.claim import ClaimLost, RunClaim, RunIdentity
from cdi_operator.runner.contract import ENV_JOB_NAME, ENV_POD_NAME
from cdi_operator.runner.rewind import apply_pending_rewind
from cdi_operator.runner.run_record import new_run_id
from cdi_operator.runner.state import CheckpointDeferred
from cdi_operator.runner.status_store import CrStatusStore, StatusStoreError, WatermarkMoved
from cdi_operator.runner.sync import SyncFailed, SyncJob, Trigger, run_sync
from cdi_operator.runner.termination import MESSAGE as stopped_message
from cdi_operator.runner.termination import cancel_on_sigterm
from cdi_operator.warehouses.base import WarehouseError

log = logging.getLogger(__name__)
RUNNER_FORBIDDEN_HINT = "grant the runner's ServiceAccount access to it in its Role"
# How long a call is asked again while the API server is overloaded or restarting (kube/client.py).
API_RETRY_SECONDS = 10.0


class _Failed(Exception):
    """A failure before the sync started: message and exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _kube_failure(exc: KubeError) -> _Failed:
    # Not found, forbidden, a missing key: fixed by the user (an object, a reference, the Role), so bad input.
    bad_input = isinstance(exc, (NotFound, Forbidden, InvalidSecret))
    return _Failed(exc.message, EXIT_BAD_INPUT if bad_input else EXIT_FAILED)


def _validated(
    model: type[CdiIntegration] | type[WarehouseCredential] | type[BrazeWorkspace], obj: dict[str, Any], where: str
) -> Any:
    # The status is not the runner's input (and partly the operator's); the spec is.
    fields = {k: v for k, v in obj.items() if k != "status"}
    metadata = obj.get("metadata") or {}
    fields["metadata"] = {k: metadata[k] for k in ("name", "namespace", "annotations", "labels") if k in metadata}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise _Failed(format_validation_error(exc, where), EXIT_BAD_INPUT) from None


def _split_key(value: str | None, default_namespace: str | None) -> tuple[str, str]:
    if not value:
        raise _Failed("--in-cluster needs --integration NAMESPACE/NAME", EXIT_BAD_INPUT)
    namespace, _, name = value.rpartition("/")
    namespace = namespace or default_namespace or ""
    if not namespace or not name:
        raise _Failed(f"--integration {value}: write it as NAMESPACE/NAME", EXIT_BAD_INPUT)
    return namespace, name


def _secrets(kube: Kube, integration: CdiIntegration, credential: WarehouseCredential) -> Manifests:
    """The Secret values the two objects reference (only those), as `cdi sync -f` would find them in its files."""
    namespace = integration.metadata.namespace
    refs = list(credential.spec.secret_refs())
    braze = integration.spec.braze
    if braze is not None and braze.api_key_secret_ref is not None:
        refs.append(braze.api_key_secret_ref)
    manifests = Manifests()
    for ref in refs:
        try:
            value = kube.get_secret_value(namespace, ref.name, ref.key)
        except KubeError as exc:
            raise _kube_failure(exc) from None
        manifests.secrets.setdefault((namespace, ref.name), {})[ref.key] = value
    workspace = braze.workspace_ref if braze is not None else None
    if workspace is not None:
        try:
            raw = kube.get_custom(WORKSPACE_PLURAL, namespace, workspace.name)
        except NotFound:
            return manifests  # braze_settings says which field names no BrazeWorkspace, as `cdi sync -f` does
        except KubeError as exc:
            raise _kube_failure(exc) from None
        manifests.workspaces[(namespace, workspace.name)] = _validated(
            BrazeWorkspace, raw, f"BrazeWorkspace {namespace}/{workspace.name}"
        )
    return manifests


def connect_failure(exc: WarehouseError) -> str:
    """The run message of a warehouse that could not be opened: its reason first, as for every warehouse failure,
    so that conditions, e-mails and alerts say AuthFailed, WarmingUp or Unreachable rather than SyncFailed."""
    return f"{exc.reason.value}: cannot connect to the warehouse: {exc.message}"


def _record_failure(
    store: CrStatusStore, trigger: Trigger, started: datetime, message: str, *, last_sync: bool = True
) -> None:
    summary = RunSummary(
        trigger=trigger,
        started_at=started,
        finished_at=datetime.now(UTC),
        result=RunResult.ERROR,
        message=message,
    )
    try:
        store.record_run(summary) if last_sync else store.record_history_only(summary)
    except (KubeError, StatusStoreError) as exc:
        log.error("%s: cannot record the failure in status.lastSync: %s", store.key, exc)
    except Exception as exc:  # the failure itself is what matters; never hide it behind this one
        log.error("%s: cannot record the failure in status.lastSync: %s", store.key, type(exc).__name__)


async def _claim(claim: RunClaim, store: CrStatusStore, trigger: Trigger, started: datetime) -> RunSummary | None:
    """Take the claim; when another run holds it, record this run as Skipped and return that record."""
    holder = await asyncio.to_thread(claim.take)
    if holder is None:
        store.claim = claim
        if claim.took_over is not None:
            now = datetime.now(UTC)
            message = (
                f"the run stopped without finishing (killed, or its pod lost); run {claim.me.run_id} took over its "
                f"expired claim at {now.isoformat()}"
            )
            await asyncio.to_thread(store.close_abandoned, claim.took_over, message, now)
        return None
    message = f"skipped: another run holds the integration, {holder}; this run read and sent nothing"
    log.warning("%s: %s", store.key, message)
    skipped = RunSummary(
        trigger=trigger,
        started_at=started,
        finished_at=datetime.now(UTC),
        result=RunResult.SKIPPED,
        message=message,
        held_by=holder[:512],
    )
    await asyncio.to_thread(store.record_history_only, skipped)
    return skipped


async def in_cluster_sync_command(
    integration_key: str | None,
    out: IO[str],
    *,
    trigger: Trigger = "schedule",
    dry_run: bool = False,
    output: str = "json",
    braze_endpoint: str | None = None,
) -> int:
    """One sync of the CdiIntegration `integration_key` (NAMESPACE/NAME, or NAME in the pod's namespace); the
    result goes to `out` as `output` ("text" or "json"). Returns the exit status."""
    started = datetime.now(UTC)
    me = RunIdentity(
        run_id=new_run_id(started),
        trigger=trigger,
        job=os.environ.get(ENV_JOB_NAME) or None,
        pod=os.environ.get(ENV_POD_NAME) or None,
    )
    held: list[RunClaim] = []
    try:
        return await _sync(integration_key, out, trigger, dry_run, output, braze_endpoint, started, me, held)
    finally:
        for claim in held:  # on every way out, so that the next run need not wait for the claim to expire
            await asyncio.to_thread(claim.release)


async def _sync(
    integration_key: str | None,
    out: IO[str],
    trigger: Trigger,
    dry_run: bool,
    output: str,
    braze_endpoint: str | None,
    started: datetime,
    me: RunIdentity,
    held: list[RunClaim],
) -> int:
    key = integration_key or "?"
    store: CrStatusStore | None = None
    try:
        if not integration_key:
            raise _Failed("--in-cluster needs --integration NAMESPACE/NAME", EXIT_BAD_INPUT)
        try:
            cfg = load_config()
        except Exception as exc:
            raise _Failed(f"cannot load the Kubernetes client configuration: {exc}", EXIT_BAD_INPUT) from None
        kube = Kube(cfg.api_client, forbidden_hint=RUNNER_FORBIDDEN_HINT, retry_seconds=API_RETRY_SECONDS)
        namespace, name = _split_key(integration_key, cfg.namespace)
        key = f"{namespace}/{name}"
        try:
            raw = await asyncio.to_thread(kube.get_custom, CDI_PLURAL, namespace, name)
        except KubeError as exc:
            raise _kube_failure(exc) from None
        store = CrStatusStore(
            kube,
            namespace,
            name,
            resource_version=raw["metadata"].get("resourceVersion"),
            job=me.job,
            run_id=me.run_id,
            pod=me.pod,
        )
        integration: CdiIntegration = _validated(CdiIntegration, raw, f"CdiIntegration {key}")
        store.run_history = integration.spec.sync.run_history
        credential_name = integration.spec.credential_ref.name
        try:
            raw_credential = await asyncio.to_thread(kube.get_custom, WHC_PLURAL, namespace, credential_name)
        except KubeError as exc:
            raise _kube_failure(exc) from None
        credential: WarehouseCredential = _validated(
            WarehouseCredential, raw_credential, f"WarehouseCredential {namespace}/{credential_name}"
        )
        # A snowflake key the operator generated: its owned Secret's active key (the operator never writes spec).
        credential = credential.model_copy(update={"spec": resolved_spec(credential.spec, credential_name)})
        try:
            job = SyncJob.for_integration(integration, credential)
        except SyncFailed as exc:
            raise _Failed(f"CdiIntegration {key}: {exc.message}", EXIT_BAD_INPUT) from None
        manifests = await asyncio.to_thread(_secrets, kube, integration, credential)
        try:
            settings = braze_settings(integration, manifests, braze_endpoint, required=not dry_run)
        except (BadInput, ManifestError) as exc:
            raise _Failed(str(exc), EXIT_BAD_INPUT) from None
        try:
            if not dry_run:
                claim = RunClaim(kube, namespace, name, me, lease_seconds=integration.spec.sync.lease_seconds)
                # A renewal retried this long still lands while the claim counts as held (runner/claim.py).
                kube.retry_seconds = min(API_RETRY_SECONDS, claim.lease_seconds / 6)
                skipped = await _claim(claim, store, trigger, started)
                if skipped is not None:
                    print_result(out, output, key, skipped, None)
                    return EXIT_OK
                held.append(claim)
                # only the run that holds the integration applies a rewind
                store.rewound_to = await asyncio.to_thread(apply_pending_rewind, store, job.source)
            await asyncio.to_thread(store.load_watermark)  # an unusable watermark is found before anything is sent
            if not dry_run:
                running = RunSummary(trigger=trigger, started_at=started, result=RunResult.RUNNING)
                await asyncio.to_thread(store.mark_running, running)
        except StatusStoreError as exc:
            raise _Failed(str(exc), EXIT_BAD_INPUT) from None
        except KubeError as exc:
            raise _kube_failure(exc) from None
        try:
            warehouse = await asyncio.to_thread(open_warehouse, credential, manifests)
        except ManifestError as exc:
            raise _Failed(str(exc), EXIT_BAD_INPUT) from None
        except WarehouseError as exc:
            raise _Failed(connect_failure(exc), EXIT_FAILED) from None
    except _Failed as failure:
        print(f"error: {failure.message}", file=sys.stderr)
        if store is not None and not dry_run:
            await asyncio.to_thread(_record_failure, store, trigger, started, failure.message)
        print_result(out, output, key, None, None, failure=failure.message)
        return failure.exit_code

    view = ProgressView(sys.stderr, interactive=False)
    braze_requests: dict[str, int] = {}
    store.braze_requests = braze_requests

    def count_response(endpoint: str, code: str) -> None:
        label = f"{endpoint}:{code}"
        braze_requests[label] = braze_requests.get(label, 0) + 1

    keeper = asyncio.create_task(held[0].keep()) if held else None
    with cancel_on_sigterm() as stop:
        try:
            if settings is None or dry_run:
                summary, run = await run_sync(job, warehouse, None, store, trigger=trigger, on_progress=view)
            else:
                async with BrazeClient(settings, on_response=count_response) as client:
                    reopen = second_reader(credential, manifests)
                    summary, run = await run_sync(
                        job, warehouse, client, store, trigger=trigger, on_progress=view, reopen=reopen
                    )
        except (KubeError, StatusStoreError, CheckpointDeferred, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not stop.requested:
                raise
            message = (
                stopped_message if stop.requested else f"cannot save progress in the CdiIntegration's status: {exc}"
            )
            print(f"error: {message}", file=sys.stderr)
            if not dry_run:
                # lastSync may be another run's by now: a run that lost its claim records itself in status.runs only
                lost = isinstance(exc, (ClaimLost, WatermarkMoved))
                await asyncio.to_thread(_record_failure, store, trigger, started, message, last_sync=not lost)
            print_result(out, output, key, None, None, failure=message)
            return EXIT_FAILED
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            await asyncio.to_thread(warehouse.close)
    if braze_requests and summary.braze_requests is None:
        summary = summary.model_copy(update={"braze_requests": dict(braze_requests)})
    print_result(out, output, key, summary, run.dry_run_report)
    return EXIT_FAILED if summary.result is RunResult.ERROR else EXIT_OK
