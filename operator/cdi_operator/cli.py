"""The `cdi` command: `cdi sync` runs one sync, `cdi demo` shows one end to end, `cdi emulator` serves a fake Braze.

Only the parser and the dispatch live here; the commands are in cdi_operator.commands (exit status: commands/common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cdi_operator.commands.common import ENV_LOG_FORMAT, EXIT_BAD_INPUT, LOG_FORMATS, setup_logging
from cdi_operator.runner.contract import (
    ENV_BRAZE_ENDPOINT,
    FLAG_IN_CLUSTER,
    FLAG_INTEGRATION,
    FLAG_TRIGGER,
    SYNC_COMMAND,
    TRIGGER_SCHEDULE,
    TRIGGERS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdi", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument(
        "--log-format",
        choices=tuple(LOG_FORMATS),
        default=os.environ.get(ENV_LOG_FORMAT) if os.environ.get(ENV_LOG_FORMAT) in LOG_FORMATS else "logfmt",
        help=f"structured log lines (default: ${ENV_LOG_FORMAT}, else logfmt)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sync = commands.add_parser(SYNC_COMMAND, help="run one sync from the YAML you would kubectl apply")
    sync.add_argument("-f", "--file", action="append", metavar="FILE.yaml", help="repeatable; or --in-cluster")
    sync.add_argument(FLAG_INTEGRATION, metavar="NAME", help="NAME or NAMESPACE/NAME when the files hold several")
    sync.add_argument(
        "--state", default=".cdi-state.json", metavar="PATH", help="watermark file (default: %(default)s)"
    )
    sync.add_argument("--dry-run", action="store_true", help="validate and show what would be sent; send nothing")
    sync.add_argument("--output", choices=("text", "json"), help="default: text, json with --in-cluster")
    sync.add_argument(
        "--braze-endpoint", metavar="URL", help=f"overrides spec.braze.restEndpoint and ${ENV_BRAZE_ENDPOINT}"
    )
    sync.add_argument(
        FLAG_IN_CLUSTER,
        action="store_true",
        help="in a pod: read the CdiIntegration NAMESPACE/NAME (--integration) from the API server and keep the "
        "watermark in its status",
    )
    sync.add_argument(FLAG_TRIGGER, choices=TRIGGERS, default=TRIGGER_SCHEDULE, help="with --in-cluster")

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
    setup_logging(args.verbose, args.log_format)
    if args.command == SYNC_COMMAND:
        if bool(args.file) == bool(args.in_cluster):
            print("error: give exactly one of -f FILE.yaml (local run) or --in-cluster (in a pod)", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.output is None:
            args.output = "json" if args.in_cluster else "text"
        if args.in_cluster:
            from cdi_operator.commands.in_cluster import in_cluster_sync_command

            return asyncio.run(
                in_cluster_sync_command(
                    args.integration,
                    sys.stdout,
                    trigger=args.trigger,
                    dry_run=args.dry_run,
                    output=args.output,
                    braze_endpoint=args.braze_endpoint,
                )
            )
        from cdi_operator.commands.sync import sync_command

        return asyncio.run(
            sync_command(
                [Path(p) for p in args.file],
                sys.stdout,
                integration_name=args.integration,
                state=Path(args.state),
                dry_run=args.dry_run,
                output=args.output,
                braze_endpoint=args.braze_endpoint,
            )
        )
    if args.command == "operator":
        from cdi_operator.controller.main import run as run_operator

        return run_operator()
    if args.command == "demo":
        from cdi_operator.commands.demo import run_demo

        return run_demo(rows=args.rows, directory=Path(args.dir) if args.dir else None, out=sys.stdout)
    from cdi_operator.braze import emulator as emulator_module

    rest = [a for a in args.emulator_args if a != "--"]
    return emulator_module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
