"""A runner killed with SIGKILL at any point resumes near where it stopped: nothing is lost, and what is sent twice
stays within one in-flight window per kill."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sources import ATTRIBUTE_COLUMNS, BRAZE_KEY, Source, user_row

from cdi_operator.braze.emulator import BrazeEmulator

ROWS = 20_000
MAX_IN_FLIGHT = 8
BATCH = 75
# The runner keeps at most 2 x maxInFlight batches between the reader and Braze.
IN_FLIGHT_WINDOW = 2 * MAX_IN_FLIGHT * BATCH


@pytest.fixture
def braze() -> Iterator[BrazeEmulator]:
    with BrazeEmulator(api_key=BRAZE_KEY) as emulator:
        yield emulator


def start_sync(manifest: Path, state: Path) -> subprocess.Popen[bytes]:
    cdi = Path(sys.executable).with_name("cdi")
    return subprocess.Popen(
        [str(cdi), "sync", "-f", str(manifest), "--state", str(state), "--output", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def received(braze: BrazeEmulator) -> list[str]:
    return [o["external_id"] for o in braze.tracked("attributes")]


@pytest.mark.postgres
def test_sigkill_at_several_points_loses_nothing(pg_source: Source, braze: BrazeEmulator, tmp_path: Path) -> None:
    pg_source.create_table("users", ATTRIBUTE_COLUMNS, [user_row(i // 3, f"u-{i}", {"i": i}) for i in range(ROWS)])
    manifest = pg_source.manifest(
        tmp_path / "m.yaml", "users", "customAttributes", braze.url, max_in_flight=MAX_IN_FLIGHT, chunk_rows=2000
    )
    # Slow Braze down so that the kills land in the middle of the run, not after it.
    manifest.write_text(manifest.read_text().replace("maxInFlight:", "requestsPerSecond: 60\n    maxInFlight:"))
    state = tmp_path / "state.json"

    kills = 0
    for fraction in (0.2, 0.45, 0.7, 0.9):
        runner = start_sync(manifest, state)
        deadline = time.monotonic() + 120
        while len(set(received(braze))) < fraction * ROWS and runner.poll() is None:
            assert time.monotonic() < deadline, "the runner made no progress"
            time.sleep(0.01)
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)
            kills += 1
        runner.wait()

    final = start_sync(manifest, state)
    assert final.wait(timeout=300) == 0

    delivered = received(braze)
    assert set(delivered) == {f"u-{i}" for i in range(ROWS)}, "every row reached Braze"
    duplicates = sum(n - 1 for n in collections.Counter(delivered).values())
    print(f"{kills} kills, {duplicates} rows sent twice")
    assert kills >= 3
    assert duplicates <= kills * IN_FLIGHT_WINDOW, f"{duplicates} rows sent twice over {kills} kills"
