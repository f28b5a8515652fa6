"""What the benchmarks read of a process from /proc: its status fields and its CPU time."""

from __future__ import annotations

import os


def proc_status(pid: int) -> dict[str, str]:
    """The fields of /proc/PID/status (VmRSS, VmHWM, Threads, ...) as text."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def cpu_seconds(pid: int) -> float:
    """User + system time of the process itself, not of its children (OSError once it has gone)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        parts = f.read().rpartition(")")[2].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
