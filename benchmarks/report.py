"""The report around the table: when, on what machine, at which revision, and how to read it."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from table import Check, Row, render

HERE = Path(__file__).resolve().parent


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{n:.2f}" for n in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}; load average at the end {load}"
    )


def cpu_busy(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over `seconds` (before the run: what else is using the machine)."""

    def times() -> tuple[int, int]:
        fields = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(seconds)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def revision() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=HERE, check=False
    )
    return done.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def report(
    rows: list[Row], checks: Sequence[Check], seconds: float, started: float, busy_before: float, peers: str
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# modelpod benchmarks",
            "",
            f"- date: {now}; modelpod {revision()}; Python {platform.python_version()}",
            f"- machine: {machine()}; CPU busy before the run: {busy_before:.0%}",
            f"- peers, each in its own virtual environment: {peers or 'none installed'}; FastAPI "
            f"{version('fastapi')} with uvicorn {version('uvicorn')} in modelpod's",
            f"- {seconds:g} s per load point after 1 s of warm-up; the load generators share the machine "
            f"with the server; whole run {time.monotonic() - started:.0f} s",
            "- every server, and the in-process ceiling, runs with OPENBLAS_NUM_THREADS=1 (and OMP, MKL): "
            "one BLAS and torch thread; HTTP load from wrk, gRPC load from h2load (both C), 1 connection "
            "per request in flight",
            "- x best peer: throughput over the strongest peer (any server but modelpod) on the same "
            "workload, transport and concurrency, named in brackets; x in-process: over the model called "
            "directly (batch 1 for c1, batch 32 otherwise)",
            "",
            render(rows, checks),
            "",
        ]
    )
