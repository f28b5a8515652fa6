"""What the `cdi` commands share: exit codes, bad input, logs and progress, the result they print, and the Braze
settings and warehouse connection both sync commands (`-f` and `--in-cluster`) resolve the same way.

Exit status, as DESIGN.md fixes it: 0 the sync completed (row errors included), 1 it failed as a whole, 2 bad input
(a manifest, a flag, a missing setting).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from cdi_operator import warehouses
from cdi_operator.api.models import (
    BrazeSpec,
    BrazeWorkspaceSpec,
    CdiIntegration,
    RateLimit,
    RunSummary,
    WarehouseCredential,
    WarehouseType,
)
from cdi_operator.braze.budget import Limit, WorkspaceBudget
from cdi_operator.braze.client import BrazeSettings
from cdi_operator.commands.manifests import Manifests
from cdi_operator.runner.contract import ENV_BRAZE_API_KEY, ENV_BRAZE_ENDPOINT
from cdi_operator.runner.sync import DryRunReport, Progress

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

log = logging.getLogger(__name__)


class BadInput(Exception):
    """Input the user can fix; printed as it is, exit status 2."""


# --- logging and progress ------------------------------------------------------------------------------------------


class LogfmtFormatter(logging.Formatter):
    """`time=… level=… logger=… msg="…"`: plain structured lines that log collectors parse."""

    def fields(self, record: logging.LogRecord) -> dict[str, object]:
        return {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in self.fields(record).items())


def _logfmt_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


class JsonFormatter(LogfmtFormatter):
    """The same fields as one JSON object per line, for Loki, Elasticsearch and the like."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False, default=str)


LOG_FORMATS: dict[str, type[logging.Formatter]] = {"logfmt": LogfmtFormatter, "json": JsonFormatter}
ENV_LOG_FORMAT = "CDI_LOG_FORMAT"


def setup_logging(verbose: bool, log_format: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LOG_FORMATS[log_format]())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for noisy in ("aiohttp", "asyncio", "urllib3", "redshift_connector"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class ProgressView:
    """A one-line progress display on a terminal; a log line every few seconds otherwise."""

    stream: IO[str]
    interactive: bool
    interval: float = 5.0
    _started: float = field(default_factory=time.monotonic)
    _last: float = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not progress.finished and now - self._last < (0.1 if self.interactive else self.interval):
            return
        self._last = now
        rate = progress.rows_read / max(now - self._started, 1e-6)
        if self.interactive:
            total = progress.rows_total
            if total:
                done = min(progress.rows_read / total, 1.0)
                bar = f"[{'#' * round(done * 30):<30}] {done:4.0%} "
            else:
                bar = "✓ " if progress.finished else "|/-\\"[int(now * 8) % 4] + " "
            line = (
                f"\r{bar}{progress.rows_read:,} rows read · {progress.rows_synced:,} synced · "
                f"{progress.rows_failed:,} failed · {progress.rows_skipped:,} already sent · {rate:,.0f} rows/s"
            )
            self.stream.write(line + ("\n" if progress.finished else ""))
            self.stream.flush()
        elif not progress.finished:
            log.info(
                "sync progress",
                extra={
                    "fields": {
                        "rows_read": progress.rows_read,
                        "rows_synced": progress.rows_synced,
                        "rows_failed": progress.rows_failed,
                        "rows_per_second": round(rate),
                        "watermark": progress.watermark.isoformat() if progress.watermark else "",
                    }
                },
            )


# --- Braze settings, the warehouse, the result ----------------------------------------------------------------------


def braze_settings(
    integration: CdiIntegration, manifests: Manifests, endpoint_flag: str | None, *, required: bool
) -> BrazeSettings | None:
    spec = integration.spec.braze
    where = f"CdiIntegration {integration.metadata.namespace}/{integration.metadata.name}"
    endpoint = endpoint_flag or (spec.rest_endpoint if spec else None) or os.environ.get(ENV_BRAZE_ENDPOINT)
    key: str | None
    if spec is not None and spec.api_key_secret_ref is not None:
        key = manifests.secret_value(integration.metadata.namespace, spec.api_key_secret_ref, where)
    else:
        key = os.environ.get(ENV_BRAZE_API_KEY)
    if not endpoint or not key:
        if not required:
            return None
        missing = (
            "spec.braze.restEndpoint (or --braze-endpoint, or $" + ENV_BRAZE_ENDPOINT + ")" if not endpoint else ""
        )
        if not key:
            missing += (" and " if missing else "") + f"spec.braze.apiKeySecretRef (or ${ENV_BRAZE_API_KEY})"
        raise BadInput(f"{where}: no Braze settings: set {missing}")
    workspace = manifests.workspace_for(integration)
    contract = workspace.spec if workspace is not None else BrazeWorkspaceSpec()
    if spec is None:
        spec = BrazeSpec()
    return BrazeSettings(
        rest_endpoint=endpoint,
        api_key=key,
        max_objects_per_request=min(spec.max_objects_per_request, contract.max_objects_per_request),
        requests_per_second=spec.requests_per_second,
        max_in_flight=spec.max_in_flight,
        budget=workspace_budget(contract),
    )


def workspace_budget(contract: BrazeWorkspaceSpec) -> WorkspaceBudget:
    """What the Braze client paces on, from a BrazeWorkspace's spec (or its defaults)."""
    limits = contract.limits

    def limit(rate: RateLimit) -> Limit:
        return Limit(rate.requests, float(rate.seconds))

    return WorkspaceBudget(
        track=limit(limits.users_track),
        delete=limit(limits.users_delete),
        catalog=limit(limits.catalog_items),
        reserve=contract.reserve_percent / 100,
        share_without_headers=contract.without_headers_percent / 100,
    )


def open_warehouse(credential: WarehouseCredential, manifests: Manifests) -> warehouses.Warehouse:
    return warehouse_opener(credential, manifests)()


def warehouse_opener(credential: WarehouseCredential, manifests: Manifests) -> Callable[[], warehouses.Warehouse]:
    """What opens a connection to the credential's warehouse, its secrets resolved now (ManifestError if not)."""
    where = f"WarehouseCredential {credential.metadata.namespace}/{credential.metadata.name}"
    secrets = manifests.resolve_secrets(credential.metadata.namespace, credential.spec.secret_refs(), where)
    return functools.partial(warehouses.connect, credential.spec, secrets)


def second_reader(credential: WarehouseCredential, manifests: Manifests) -> Callable[[], warehouses.Warehouse] | None:
    """What opens the connection a run reads on in a process of its own (`run_sync`'s `reopen`): Redshift, whose
    driver decodes in pure Python. None for the others, read in the runner's thread: an embedded DuckDB file takes
    one connection, and for Snowflake, Databricks and BigQuery a second process is not measured yet."""
    if credential.spec.type is not WarehouseType.REDSHIFT:
        return None
    return warehouse_opener(credential, manifests)


def print_result(
    out: IO[str],
    output: str,
    key: str,
    summary: RunSummary | None,
    dry_run: DryRunReport | None,
    failure: str | None = None,
) -> None:
    if output == "json":
        record: dict[str, Any] = {"integration": key}
        if summary is not None:
            record.update(summary.model_dump(mode="json", by_alias=True, exclude_none=True))
        else:
            record.update(result="Error", rowsRead=0, rowsSynced=0, rowsFailed=0, watermark=None, message=failure)
        record.setdefault("watermark", None)
        if dry_run is not None:
            record["dryRun"] = {
                "requests": dry_run.requests,
                "objects": dry_run.objects_by_target,
                "sample": dry_run.sample,
            }
        out.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        return
    if summary is None:
        return
    title = "dry run (nothing sent)" if dry_run is not None else summary.result.value
    out.write(f"{key}: {title}\n")
    out.write(
        f"  rows read {summary.rows_read:,}, synced {summary.rows_synced:,}, failed {summary.rows_failed:,}, "
        f"already sent {summary.rows_skipped:,}, dated in the future {summary.future_rows:,}, "
        f"without UPDATED_AT {summary.undated_rows:,}\n"
    )
    out.write(f"  watermark {summary.watermark.isoformat() if summary.watermark else '(none yet)'}\n")
    if summary.message:
        out.write(f"  {summary.message}\n")
    for error in summary.row_errors[:5]:
        out.write(f"  row error {error.reason} {error.identifier}: {error.message}\n")
    if dry_run is not None:
        objects = ", ".join(f"{n:,} {target}" for target, n in dry_run.objects_by_target.items()) or "nothing"
        out.write(f"  would send {objects} in {dry_run.requests:,} request(s); first objects:\n")
        for item in dry_run.sample[:5]:
            out.write(f"    {json.dumps(item, ensure_ascii=False, default=str)}\n")
