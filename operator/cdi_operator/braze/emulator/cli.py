"""`python -m cdi_operator.braze.emulator` (and `cdi emulator`): serve the emulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from cdi_operator.braze.emulator.server import BrazeEmulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cdi_operator.braze.emulator", description="Serve the Braze REST API emulator on loopback."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--api-key", default="emulator-key")
    parser.add_argument(
        "--other-api-key", action="append", default=[], help="another workspace's key, with limiters of its own"
    )
    parser.add_argument(
        "--record", action=argparse.BooleanOptionalAction, default=True, help="keep the objects (default: yes)"
    )
    parser.add_argument("--track-limit", type=int, default=75, help="objects per /users/track request (default 75)")
    parser.add_argument("--limit-mode", choices=("total", "perArray"), default="total")
    parser.add_argument("--track-rate-limit", type=int, default=3000)
    parser.add_argument("--track-rate-window", type=float, default=3.0)
    parser.add_argument("--delete-rate-limit", type=int, default=20_000)
    parser.add_argument("--delete-rate-window", type=float, default=60.0)
    parser.add_argument("--catalog-rate-limit", type=int, default=16_000)
    parser.add_argument("--catalog-rate-window", type=float, default=60.0)
    parser.add_argument("--retry-after", action="store_true", help="send Retry-After with 429s")
    parser.add_argument("--slow-delay", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every response takes (default 0)")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def from_args(args: argparse.Namespace) -> BrazeEmulator:
    return BrazeEmulator(
        api_key=args.api_key,
        other_api_keys=args.other_api_key,
        host=args.host,
        port=args.port,
        record=args.record,
        track_limit=args.track_limit,
        limit_mode=args.limit_mode,
        track_rate_limit=args.track_rate_limit,
        track_rate_window=args.track_rate_window,
        delete_rate_limit=args.delete_rate_limit,
        delete_rate_window=args.delete_rate_window,
        catalog_rate_limit=args.catalog_rate_limit,
        catalog_rate_window=args.catalog_rate_window,
        retry_after=args.retry_after,
        slow_delay=args.slow_delay,
        latency=args.latency,
        seed=args.seed,
    )


async def _serve(emulator: BrazeEmulator) -> None:
    url = await emulator.start_async()
    print(f"Braze emulator listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emulator.stop_async()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(from_args(args)))
    except OSError as exc:
        print(f"error: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0
