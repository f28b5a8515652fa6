"""The shared workspace budget: 1, 4 and 16 concurrent runners on one emulator workspace, plus a probe client.

Each runner is a `BrazeClient` with the runner's defaults (1,000 requests/s, requests in flight by Little's law
up to 256), sending one-object requests as fast as its budget lets it; they share one API key with a reserve of
20 %. The probe is the customer's own client: a steady 5 % of the limit, plain aiohttp, no pacing, no retries, in a
process of its own (so that the runners' load cannot slow it down and hide a 429). The emulator runs as its own
process and answers every request in `--latency` seconds (default 0.05).

    .venv/bin/python benchmarks/bench_budget.py                   # track, delete, catalog; 1, 4, 16 runners
    .venv/bin/python benchmarks/bench_budget.py --family track --runners 16 --windows 4
    .venv/bin/python benchmarks/bench_budget.py --runners 1 --max-in-flight 32   # one runner held to 32 in flight

`/users/track` runs with Braze's own window (3,000 per 3 s). Delete and catalog windows are a minute; unless
`--real-windows`, they are scaled to 6 s with a tenth of the requests (the same rate: 2,000 / 6 s, 1,600 / 6 s), so
that a run takes seconds, not minutes. Each run lasts `--windows` whole windows, started on a window boundary.
Prints one line per run (with the runners' count in each window, from the emulator's limiter less the probe's) and a
Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from cdi_operator.braze.budget import Limit, WorkspaceBudget
from cdi_operator.braze.client import BrazeClient, BrazeError, BrazeSettings

KEY = "bench-key"
RESERVE = 0.2
PROBE_SHARE = 0.05
FAMILIES = ("track", "delete", "catalog")
REAL = {"track": Limit(3000, 3.0), "delete": Limit(20_000, 60.0), "catalog": Limit(16_000, 60.0)}
SCALED = {"track": Limit(3000, 3.0), "delete": Limit(2_000, 6.0), "catalog": Limit(1_600, 6.0)}
PROBE = {  # the probe's request per family: another client of the same workspace and limit
    "track": ("POST", "/users/track", {"attributes": [{"external_id": "probe"}]}),
    "delete": ("POST", "/users/identify", {"aliases_to_identify": [{"external_id": "probe"}]}),
    "catalog": ("PUT", "/catalogs/probe/items", {"items": [{"id": "probe"}]}),
}


@dataclass
class Result:
    family: str
    runners: int
    seconds: float
    runner_codes: Counter[str]
    probe_codes: Counter[int]
    limit: Limit
    runner_windows: list[int]  # requests the runners got counted in each window of the run (the emulator's count)
    all_windows: list[int]  # every client's, the probe's included

    @property
    def busiest_window(self) -> float:
        """The runners' busiest window, as a share of limit - reserve."""
        return max(self.runner_windows, default=0) / (self.limit.requests * (1 - RESERVE))

    @property
    def delivered_per_second(self) -> float:
        """The runners' requests the emulator counted in the run's windows (not those that ran over its end)."""
        return sum(self.runner_windows) / self.seconds

    @property
    def target_per_second(self) -> float:
        return self.limit.requests * (1 - RESERVE) / self.limit.seconds

    @property
    def runner_429_share(self) -> float:
        total = sum(self.runner_codes.values())
        return self.runner_codes["429"] / total if total else 0.0


def start_emulator(limits: dict[str, Limit], latency: float) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "cdi_operator.braze.emulator", "--api-key", KEY, "--no-record"]
    command += ["--latency", str(latency)]
    for family, limit in limits.items():
        command += [f"--{family}-rate-limit", str(limit.requests), f"--{family}-rate-window", str(limit.seconds)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"the emulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1].strip()


async def send(client: BrazeClient, family: str, n: int) -> None:
    if family == "track":
        await client.track("attributes", [{"external_id": f"u{n}"}])
    elif family == "delete":
        await client.delete("external_ids", [f"u{n}"])
    else:
        await client.catalog_put("products", [{"id": f"i{n}"}])


async def runner(settings: BrazeSettings, family: str, until: float, codes: Counter[str]) -> None:
    def count(_: str, code: str) -> None:
        codes[code] += 1

    async with BrazeClient(settings, on_response=count) as client:

        async def worker(w: int) -> None:
            n = 0
            while time.time() < until:
                try:
                    await send(client, family, w * 1_000_000 + n)
                except BrazeError as exc:
                    codes[f"error:{exc.reason}"] += 1
                n += 1

        await asyncio.gather(*(worker(w) for w in range(settings.max_in_flight)))


async def probe(
    url: str, family: str, per_second: float, until: float, codes: Counter[int], windows: Counter[int], seconds: float
) -> None:
    method, path, body = PROBE[family]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:

        async def one() -> None:
            async with session.request(method, url + path, json=body) as resp:
                codes[resp.status] += 1
                windows[int(time.time() // seconds)] += 1  # the emulator counts a request as it answers

        sent = []
        next_at = time.monotonic()
        while per_second > 0 and time.time() < until:  # on its schedule, not waiting for the answers
            sent.append(asyncio.create_task(one()))
            next_at += 1 / per_second
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*sent)


def probe_process(
    url: str, family: str, per_second: float, until: float, seconds: float, out: multiprocessing.Queue[Any]
) -> None:
    codes: Counter[int] = Counter()
    windows: Counter[int] = Counter()
    asyncio.run(probe(url, family, per_second, until, codes, windows, seconds))
    out.put((dict(codes), dict(windows)))


async def workspace_windows(url: str, family: str, seconds: float) -> dict[int, int]:
    """Requests the emulator counted for the workspace in each window of `family`, every client together."""
    async with aiohttp.ClientSession() as session, session.get(url + "/_emulator/state") as resp:
        state = await resp.json()
    return {int(start // seconds): count for start, count in state["rate_windows"][KEY][family]}


async def one_run(
    url: str, family: str, runners: int, limit: Limit, windows: int, in_flight: int, probe_share: float
) -> Result:
    budget = WorkspaceBudget(**{family: limit}, reserve=RESERVE)  # type: ignore[arg-type]
    settings = BrazeSettings(rest_endpoint=url, api_key=KEY, budget=budget, max_in_flight=in_flight)
    now = time.time()
    start = (now // limit.seconds + 1) * limit.seconds  # the next window boundary
    await asyncio.sleep(start - now)
    until = start + windows * limit.seconds
    runner_codes: Counter[str] = Counter()
    probe_codes: Counter[int] = Counter()
    probe_rate = limit.requests * probe_share / limit.seconds
    out: multiprocessing.Queue[Any] = multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe_process, args=(url, family, probe_rate, until, limit.seconds, out))
    prober.start()
    await asyncio.gather(*(runner(settings, family, until, runner_codes) for _ in range(runners)))
    codes, probe_windows = await asyncio.to_thread(out.get)
    probe_codes.update(codes)
    prober.join()
    first = int(start // limit.seconds)
    counted = await workspace_windows(url, family, limit.seconds)
    all_windows = [counted.get(w, 0) for w in range(first, first + windows)]
    runner_windows = [
        n - probe_windows.get(w, 0) for w, n in zip(range(first, first + windows), all_windows, strict=True)
    ]
    return Result(
        family, runners, windows * limit.seconds, runner_codes, probe_codes, limit, runner_windows, all_windows
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    limits = REAL if args.real_windows else SCALED
    process, url = start_emulator(limits, args.latency)
    results = []
    try:
        async with aiohttp.ClientSession() as session:
            for name in ("products", "probe"):
                await session.post(url + "/_emulator/catalogs", json={"name": name, "fields": {}})
        for family in args.family or FAMILIES:
            for runners in args.runners or (1, 4, 16):
                result = await one_run(
                    url, family, runners, limits[family], args.windows, args.max_in_flight, args.probe_share
                )
                results.append(result)
                print(
                    f"{family} runners={runners} delivered={result.delivered_per_second:,.0f}/s "
                    f"({result.delivered_per_second / result.target_per_second:.1%} of limit-reserve) "
                    f"busiest window={result.busiest_window:.1%} windows={result.runner_windows} "
                    f"all clients={result.all_windows} "
                    f"runner 429s={result.runner_429_share:.2%} probe={dict(result.probe_codes)} "
                    f"codes={dict(result.runner_codes)}",
                    flush=True,
                )
    finally:
        process.terminate()
        process.wait(timeout=10)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| family (limit) | runners | delivered req/s | of limit - 20 % | busiest window, of limit - 20 % "
        "| runner 429s | probe requests | probe 429s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        limit = f"{r.family} ({r.limit.requests:,} / {r.limit.seconds:g} s)"
        lines.append(
            f"| {limit} | {r.runners} | {r.delivered_per_second:,.0f} | "
            f"{r.delivered_per_second / r.target_per_second:.1%} | {r.busiest_window:.1%} | {r.runner_429_share:.2%} | "
            f"{sum(r.probe_codes.values())} | {r.probe_codes[429]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--runners", action="append", type=int)
    parser.add_argument("--windows", type=int, default=4, help="whole windows per run (default 4)")
    parser.add_argument("--probe-share", type=float, default=PROBE_SHARE, help="the probe's share of the limit")
    parser.add_argument(
        "--max-in-flight",
        type=int,
        default=BrazeSettings.max_in_flight,
        help=f"most requests in flight per runner (default {BrazeSettings.max_in_flight}, the runner's)",
    )
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per emulator response")
    parser.add_argument("--real-windows", action="store_true", help="delete and catalog with their 60 s windows")
    args = parser.parse_args(argv)
    results = asyncio.run(main_async(args))
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
