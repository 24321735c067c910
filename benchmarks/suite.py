"""The benchmark suite of issue 19: modelpod against its strongest peers on every path.

    python benchmarks/suite.py [--seconds 5] [--only mlp echo ...] [--skip triton ...]

Runs every server as its own process, one at a time, and loads it from this machine: `wrk` for
HTTP, `h2load` for gRPC, httpx for the 64 MiB binary tensor (see `plan.py` for the points).
Prints one markdown table (with the date and the machine) and writes it to `--output`.
`benchmarks/run.sh` prepares the environments and runs this.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from types import FrameType

import h2load_grpc
import plan
import servers
import wrk_load
from measurement import Measurement
from report import cpu_busy, report
from table import DIRECT, GRPC_NATIVE, GRPC_V2, IN_PROCESS, Row
from targets import TARGETS

HERE = Path(__file__).resolve().parent
WORKLOADS = ("mlp", "echo", "minilm", "tensor")
PEERS = ("fastapi-sync", "fastapi-async", "litserve", "mlserver", "triton")
SKIPPABLE = ("inprocess", "modelpod", *PEERS, "fastapi", "grpc")
PEER_PACKAGES = {"litserve": "litserve", "mlserver": "mlserver", "pytriton": "nvidia-pytriton"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def short(error: BaseException | str) -> str:
    """An error in a table cell: its first line and, for a server's log tail, its last."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return text[:160].replace("|", "/")


class Suite:
    def __init__(self, seconds: float, only: set[str], skip: set[str], work: Path) -> None:
        self.seconds = seconds
        self.only = only
        self.skip = skip
        self.work = work
        self.rows: list[Row] = []

    def record(self, row: Row) -> None:
        self.rows.append(row)
        label = f"  {row.workload} / {row.server} / {row.transport} / {row.load}"
        result = row.result
        if result is None:
            log(f"{label}: {row.note}")
            return
        p50, p99 = (f"{v:.2f}" if v is not None else "—" for v in (result.p50_ms, result.p99_ms))
        log(
            f"{label}: {result.throughput:,.2f} {result.unit}, p50 {p50} ms, p99 {p99} ms, "
            f"errors {result.errors}"
        )

    def kept(self, point: plan.Point) -> bool:
        grpc = point.transport in (GRPC_NATIVE, GRPC_V2)
        return plan.WORKLOAD_KEYS[point.workload] in self.only and not (grpc and "grpc" in self.skip)

    def run_part(self, part: plan.Part) -> None:
        points = [p for p in part.points if self.kept(p)]
        if not points:
            return
        log(f"{points[0].server} ({part.name})")
        try:
            server = part.start(self.work, self.only)
        except Exception as error:  # a peer that did not install or start: its rows say why
            self._not_measured(points, error)
            return
        try:
            with servers.running(server, part.ready_path):
                for point in points:
                    self.measure(point, server)
        except RuntimeError as error:  # not ready in time, or exited: the points not yet measured
            done = {(r.server, r.workload, r.transport, r.concurrency) for r in self.rows}
            left = [p for p in points if (p.server, p.workload, p.transport, p.concurrency) not in done]
            self._not_measured(left, error)

    def _not_measured(self, points: list[plan.Point], error: BaseException) -> None:
        log(f"  not measured: {error}")
        note = short(error)
        note = note if note.startswith("did not install") else f"skipped: {note}"
        for p in points:
            self.record(Row(p.workload, p.server, p.transport, p.concurrency, None, note))

    def measure(self, point: plan.Point, server: servers.Server) -> None:
        try:
            result: Measurement | None = point.load(server, self.seconds)
            note = ""
        except Exception as error:  # one failed point is reported; the rest of the suite still runs
            log(f"  FAILED: {error}")
            result, note = None, f"failed: {short(error)}"
        self.record(Row(point.workload, point.server, point.transport, point.concurrency, result, note))

    def in_process(self) -> None:
        """The ceiling: the MLP at batch 1 and 32, MiniLM at batch 32, called directly."""
        for workload, name, batches in (("mlp", "MLP", ["1", "32"]), ("minilm", "MiniLM", ["32"])):
            if workload not in self.only:
                continue
            log(f"in-process {workload}")
            command = [
                sys.executable,
                str(HERE / "inprocess.py"),
                "--workload",
                workload,
                "--batch",
                *batches,
            ]
            command += ["--seconds", str(min(self.seconds, 3.0))]
            env = servers.child_environment()
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)
            if done.returncode != 0:
                log(f"  in-process {workload} FAILED:\n{done.stderr[-2000:]}")
                continue
            for line in done.stdout.splitlines():
                data = json.loads(line)
                batch = data.pop("batch")
                self.record(Row(name, IN_PROCESS, DIRECT, batch, Measurement.from_json(data)))

    def run(self) -> None:
        if "inprocess" not in self.skip:
            self.in_process()
        for part in plan.parts():
            family = part.name.split("-")[0]
            if part.name in self.skip or family in self.skip:
                continue
            self.run_part(part)


def peer_versions() -> str:
    """The version each peer's environment holds, for the report."""
    found = []
    for peer, package in PEER_PACKAGES.items():
        python = HERE / f".venv-{peer}" / "bin" / "python"
        if not python.exists() or python.parents[2].with_suffix(".failed").exists():
            continue
        code = f"import importlib.metadata as m; print(m.version({package!r}))"
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
        found.append(f"{package} {done.stdout.strip() or '?'}")
    return ", ".join(found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per load point")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument("--only", nargs="+", default=list(WORKLOADS), choices=WORKLOADS, help="workloads")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=SKIPPABLE, help="servers or gRPC to leave out"
    )
    options = parser.parse_args()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the servers

    signal.signal(signal.SIGTERM, stop)
    if not wrk_load.available():
        sys.exit("wrk is not installed: apt-get install -y wrk")
    if not h2load_grpc.available():
        sys.exit("h2load is not installed: apt-get install -y nghttp2-client")
    busy_before = cpu_busy()
    if busy_before > 0.25:
        log(f"warning: the CPUs were {busy_before:.0%} busy before the run; the numbers will be noisy")
    started = time.monotonic()
    with TemporaryDirectory(prefix="modelpod-bench-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        suite = Suite(options.seconds, set(options.only), set(options.skip), work)
        suite.run()
        text = report(suite.rows, TARGETS, options.seconds, started, busy_before, peer_versions())
    options.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
