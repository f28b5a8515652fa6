"""`cdi sync -f FILE.yaml`: one sync from the YAML a user applies, the watermark kept in a state file."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO

from cdi_operator.api.models import RunResult
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
from cdi_operator.commands.manifests import ManifestError, load_manifests
from cdi_operator.runner.state import JsonFileStore, StateFileError
from cdi_operator.runner.sync import SyncFailed, SyncJob, run_sync
from cdi_operator.warehouses.base import WarehouseError


async def sync_command(
    files: list[Path],
    out: IO[str],
    *,
    integration_name: str | None = None,
    state: Path = Path(".cdi-state.json"),
    dry_run: bool = False,
    output: str = "text",
    braze_endpoint: str | None = None,
) -> int:
    """One sync of the CdiIntegration `integration_name` (NAME or NAMESPACE/NAME; may be omitted when `files` hold
    one) in `files`; the result goes to `out` as `output` ("text" or "json"). Returns the exit status."""
    try:
        manifests = load_manifests(files)
        integration = manifests.integration(integration_name)
        credential = manifests.credential_for(integration)
        job = SyncJob.for_integration(integration, credential)
        settings = braze_settings(integration, manifests, braze_endpoint, required=not dry_run)
        store = JsonFileStore(state, job.key)
        store.load_watermark()  # a broken state file is bad input, found before anything is read or sent
    except (ManifestError, BadInput, StateFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SyncFailed as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_INPUT

    view = ProgressView(sys.stderr, interactive=sys.stderr.isatty() and output == "text")
    try:
        warehouse = await asyncio.to_thread(open_warehouse, credential, manifests)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except WarehouseError as exc:
        print(f"error: cannot connect to the warehouse: {exc}", file=sys.stderr)
        print_result(out, output, job.key, None, None, failure=str(exc))
        return EXIT_FAILED
    try:
        estimate = view.interactive
        if settings is None or dry_run:
            summary, run = await run_sync(job, warehouse, None, store, on_progress=view, estimate_total=estimate)
        else:
            async with BrazeClient(settings) as client:
                reopen = second_reader(credential, manifests)
                summary, run = await run_sync(
                    job, warehouse, client, store, on_progress=view, estimate_total=estimate, reopen=reopen
                )
    finally:
        await asyncio.to_thread(warehouse.close)
    print_result(out, output, job.key, summary, run.dry_run_report)
    return EXIT_FAILED if summary.result is RunResult.ERROR else EXIT_OK
