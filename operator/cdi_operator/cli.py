"""The `cdi` command: `cdi sync` runs one sync, `cdi demo` shows one end to end, `cdi emulator` serves a fake Braze.

Exit status of `cdi sync`: 0 when the sync completed (row errors included), 1 when it failed as a whole, 2 for bad
input (a manifest, a flag, a missing setting), as DESIGN.md fixes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cdi_operator import warehouses
from cdi_operator.api.models import CdiIntegration, RunResult, RunSummary, WarehouseCredential
from cdi_operator.braze.client import BrazeClient, BrazeSettings
from cdi_operator.manifests import ManifestError, Manifests, load_manifests
from cdi_operator.runner.state import JsonFileStore, StateFileError
from cdi_operator.runner.sync import DryRunReport, Progress, SyncFailed, SyncJob, run_sync
from cdi_operator.warehouses.base import WarehouseError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
ENV_BRAZE_ENDPOINT = "CDI_BRAZE_REST_ENDPOINT"
ENV_BRAZE_API_KEY = "CDI_BRAZE_API_KEY"

log = logging.getLogger("cdi")


class BadInput(Exception):
    """Input the user can fix; printed as it is, exit status 2."""


# --- logging and progress ------------------------------------------------------------------------------------------


class LogfmtFormatter(logging.Formatter):
    """`time=… level=… logger=… msg="…"`: plain structured lines that log collectors parse."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())


def _logfmt_value(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
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


# --- cdi sync ------------------------------------------------------------------------------------------------------


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
    if spec is None:
        return BrazeSettings(rest_endpoint=endpoint, api_key=key)
    return BrazeSettings(
        rest_endpoint=endpoint,
        api_key=key,
        max_objects_per_request=spec.max_objects_per_request,
        requests_per_second=spec.requests_per_second,
        max_in_flight=spec.max_in_flight,
    )


def open_warehouse(credential: WarehouseCredential, manifests: Manifests) -> warehouses.Warehouse:
    where = f"WarehouseCredential {credential.metadata.namespace}/{credential.metadata.name}"
    secrets = manifests.resolve_secrets(credential.metadata.namespace, credential.spec.secret_refs(), where)
    return warehouses.connect(credential.spec, secrets)


async def sync_command(args: argparse.Namespace, out: IO[str]) -> int:
    try:
        manifests = load_manifests([Path(p) for p in args.file])
        integration = manifests.integration(args.integration)
        credential = manifests.credential_for(integration)
        job = SyncJob.for_integration(integration, credential)
        settings = braze_settings(integration, manifests, args.braze_endpoint, required=not args.dry_run)
        store = JsonFileStore(Path(args.state), job.key)
        store.load_watermark()  # a broken state file is bad input, found before anything is read or sent
    except (ManifestError, BadInput, StateFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SyncFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT

    view = ProgressView(sys.stderr, interactive=sys.stderr.isatty() and args.output == "text")
    try:
        warehouse = await asyncio.to_thread(open_warehouse, credential, manifests)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WarehouseError as exc:
        print(f"error: cannot connect to the warehouse: {exc}", file=sys.stderr)
        _print_result(out, args.output, job.key, None, None, failure=str(exc))
        return EXIT_FAILED
    try:
        estimate = view.interactive
        if settings is None or args.dry_run:
            summary, run = await run_sync(job, warehouse, None, store, on_progress=view, estimate_total=estimate)
        else:
            async with BrazeClient(settings) as client:
                summary, run = await run_sync(job, warehouse, client, store, on_progress=view, estimate_total=estimate)
    finally:
        await asyncio.to_thread(warehouse.close)
    _print_result(out, args.output, job.key, summary, run.dry_run_report)
    return EXIT_FAILED if summary.result is RunResult.ERROR else EXIT_OK


def _print_result(
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


# --- entry point ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdi", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sync = commands.add_parser("sync", help="run one sync from the YAML you would kubectl apply")
    sync.add_argument("-f", "--file", action="append", metavar="FILE.yaml", help="repeatable; or --in-cluster")
    sync.add_argument("--integration", metavar="NAME", help="NAME or NAMESPACE/NAME when the files hold several")
    sync.add_argument(
        "--state", default=".cdi-state.json", metavar="PATH", help="watermark file (default: %(default)s)"
    )
    sync.add_argument("--dry-run", action="store_true", help="validate and show what would be sent; send nothing")
    sync.add_argument("--output", choices=("text", "json"), help="default: text, json with --in-cluster")
    sync.add_argument(
        "--braze-endpoint", metavar="URL", help=f"overrides spec.braze.restEndpoint and ${ENV_BRAZE_ENDPOINT}"
    )
    sync.add_argument(
        "--in-cluster",
        action="store_true",
        help="in a pod: read the CdiIntegration NAMESPACE/NAME (--integration) from the API server and keep the "
        "watermark in its status",
    )
    sync.add_argument("--trigger", choices=("schedule", "syncNow"), default="schedule", help="with --in-cluster")

    demo = commands.add_parser("demo", help="sync an embedded DuckDB table of users to a local Braze emulator")
    demo.add_argument("--rows", type=int, default=5000, help="users in the demo table (default: %(default)s)")
    demo.add_argument("--dir", metavar="DIR", help="keep the demo's files here instead of a temporary folder")

    commands.add_parser("operator", help="run the operator (settings from $CDI_* variables: controller/settings.py)")

    emulator = commands.add_parser("emulator", help="serve the Braze API emulator on loopback")
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER, help="see `cdi emulator -- --help`")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and EXIT_BAD_INPUT
    setup_logging(args.verbose)
    if args.command == "sync":
        if bool(args.file) == bool(args.in_cluster):
            print("error: give exactly one of -f FILE.yaml (local run) or --in-cluster (in a pod)", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.output is None:
            args.output = "json" if args.in_cluster else "text"
        if args.in_cluster:
            from cdi_operator.runner.in_cluster import in_cluster_sync_command

            return asyncio.run(in_cluster_sync_command(args, sys.stdout))
        return asyncio.run(sync_command(args, sys.stdout))
    if args.command == "operator":
        from cdi_operator.controller.main import run as run_operator

        return run_operator()
    if args.command == "demo":
        from cdi_operator.demo import run_demo

        return run_demo(rows=args.rows, directory=Path(args.dir) if args.dir else None, out=sys.stdout)
    from cdi_operator.braze import emulator as emulator_module

    rest = [a for a in args.emulator_args if a != "--"]
    return emulator_module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
