"""The benchmark suite of issue 5: modelpod against plain FastAPI, LitServe and the in-process ceiling.

    python benchmarks/suite.py [--seconds 6] [--output benchmarks/results.md] [--skip litserve ...]

Runs every server as its own process, one at a time, and loads it from this machine: `wrk` for
HTTP JSON, a separate grpcio asyncio process for gRPC, httpx for the 64 MiB binary tensor.
Prints one markdown table (with the date and the machine) and writes it to `--output`.
`benchmarks/run.sh` prepares the environments and runs this.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from types import FrameType

import servers
import wrk_load
from binary_load import run_binary
from inprocess import SENTENCE
from measurement import Measurement
from mlp_numpy import sample_row
from table import FASTAPI, HTTP_JSON, IN_PROCESS, LITSERVE, MODELPOD, Row, render

HERE = Path(__file__).resolve().parent
MODELS = [f"benchmarks/models.py:{name}" for name in ("MLP", "Echo", "TensorEcho", "MiniLM")]
BODIES = {
    "MLP": json.dumps({"x": [sample_row()]}).encode(),
    "Echo": json.dumps({"text": "modelpod"}).encode(),
    "MiniLM": json.dumps({"text": SENTENCE}).encode(),
}
MODELPOD_ROUTES = {
    "MLP": "/models/mlp/predict",
    "Echo": "/models/echo/predict",
    "MiniLM": "/models/minilm/predict",
}
FASTAPI_ROUTES = {"MLP": "/mlp", "Echo": "/echo", "MiniLM": "/minilm"}
CONCURRENCY = {"MLP": (1, 64), "Echo": (1, 64), "MiniLM": (1, 32)}
LITSERVE_BATCH_TIMEOUT_S = 0.005
FASTAPI_DEFAULT_BLAS = f"{FASTAPI} (OpenBLAS default threads)"
PARTS = ("inprocess", "modelpod", "grpc", "binary", "fastapi", "litserve", "minilm")

ORDER = {
    "workload": ["MLP", "Echo", "MiniLM", "64 MiB tensor"],
    "server": [IN_PROCESS, FASTAPI, FASTAPI_DEFAULT_BLAS, MODELPOD, LITSERVE, f"{LITSERVE} (batching)"],
    "transport": ["direct call", HTTP_JSON, "gRPC native", "gRPC V2", "HTTP V2 binary"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Suite:
    def __init__(self, seconds: float, skip: set[str], work: Path) -> None:
        self.seconds = seconds
        self.skip = skip
        self.work = work
        self.rows: list[Row] = []

    def add(
        self, workload: str, server: str, transport: str, concurrency: int, measure: Callable[[], Measurement]
    ) -> None:
        label = f"{workload} / {server} / {transport} / {concurrency}"
        try:
            result = measure()
        except Exception as error:  # one failed point is reported; the rest of the suite still runs
            log(f"  {label}: FAILED: {error}")
            result = Measurement(0.0, None, None, errors=1)
        self.record(Row(workload, server, transport, concurrency, result))

    def record(self, row: Row) -> None:
        self.rows.append(row)
        result = row.result
        p50, p99 = (f"{v:.2f}" if v is not None else "—" for v in (result.p50_ms, result.p99_ms))
        log(
            f"  {row.workload} / {row.server} / {row.transport} / {row.load}: "
            f"{result.throughput:,.2f} {result.unit}, p50 {p50} ms, p99 {p99} ms, errors {result.errors}"
        )

    def wrk(self, url: str, workload: str) -> Callable[[int], Callable[[], Measurement]]:
        return lambda c: lambda: wrk_load.run_wrk(url, BODIES[workload], c, self.seconds)

    # -- parts ------------------------------------------------------------------------------

    def in_process(self) -> None:
        workloads = ["mlp"] + ([] if "minilm" in self.skip else ["minilm"])
        for workload in workloads:
            log(f"in-process {workload}")
            command = [
                sys.executable,
                str(HERE / "inprocess.py"),
                "--workload",
                workload,
                "--batch",
                "1",
                "32",
            ]
            command += ["--seconds", str(min(self.seconds, 3.0))]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                log(f"  in-process {workload} FAILED:\n{done.stderr[-2000:]}")
                continue
            for line in done.stdout.splitlines():
                data = json.loads(line)
                batch = data.pop("batch")
                name = "MLP" if workload == "mlp" else "MiniLM"
                self.record(Row(name, IN_PROCESS, "direct call", batch, Measurement.from_json(data)))

    def modelpod(self) -> None:
        log("modelpod")
        models = [m for m in MODELS if not ("minilm" in self.skip and m.endswith(":MiniLM"))]
        server = servers.modelpod(self.work / "logs", self.work / "modelpod-data", models)
        with servers.running(server, "/v2/health/ready"):
            for workload, route in MODELPOD_ROUTES.items():
                if workload == "MiniLM" and "minilm" in self.skip:
                    continue
                measure = self.wrk(server.url + route, workload)
                for c in CONCURRENCY[workload]:
                    self.add(workload, MODELPOD, HTTP_JSON, c, measure(c))
            if "grpc" not in self.skip:
                for workload, call in (("MLP", "native"), ("MLP", "v2"), ("Echo", "native")):
                    for c in CONCURRENCY[workload]:
                        transport = f"gRPC {'V2' if call == 'v2' else call}"
                        self.add(workload, MODELPOD, transport, c, self._grpc(server, workload, call, c))
            if "binary" not in self.skip:
                url = server.url + "/v2/models/tensor_echo/infer"
                self.add("64 MiB tensor", MODELPOD, "HTTP V2 binary", 1, lambda: run_binary(url, 64, 10))

    def _grpc(
        self, server: servers.Server, workload: str, call: str, concurrency: int
    ) -> Callable[[], Measurement]:
        def measure() -> Measurement:
            command = [
                sys.executable,
                str(HERE / "grpc_load.py"),
                "--target",
                f"{servers.HOST}:{server.grpc_port}",
            ]
            command += ["--workload", workload.lower(), "--call", call, "--concurrency", str(concurrency)]
            command += ["--seconds", str(self.seconds)]
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=self.seconds + 60, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            return Measurement.from_json(json.loads(done.stdout.strip().splitlines()[-1]))

        return measure

    def fastapi(self) -> None:
        log("plain FastAPI")
        with_minilm = "minilm" not in self.skip
        server = servers.fastapi(self.work / "logs", with_minilm=with_minilm)
        with servers.running(server, "/health"):
            for workload, route in FASTAPI_ROUTES.items():
                if workload == "MiniLM" and not with_minilm:
                    continue
                measure = self.wrk(server.url + route, workload)
                for c in CONCURRENCY[workload]:
                    self.add(workload, FASTAPI, HTTP_JSON, c, measure(c))

    def fastapi_default_blas(self) -> None:
        """The same app with OpenBLAS's default threads: shows the pitfall the baseline avoids."""
        log(f"{FASTAPI_DEFAULT_BLAS}")
        server = servers.fastapi(self.work / "logs", with_minilm=False, blas_threads=None)
        with servers.running(server, "/health"):
            url = server.url + FASTAPI_ROUTES["MLP"]
            self.add(
                "MLP",
                FASTAPI_DEFAULT_BLAS,
                HTTP_JSON,
                64,
                lambda: wrk_load.run_wrk(url, BODIES["MLP"], 64, self.seconds),
            )

    def litserve(self) -> None:
        for batch, label in ((1, LITSERVE), (32, f"{LITSERVE} (batching)")):
            log(label)
            server = servers.litserve(self.work / "logs", batch, LITSERVE_BATCH_TIMEOUT_S)
            with servers.running(server, "/health"):
                measure = self.wrk(server.url + "/predict", "MLP")
                for c in CONCURRENCY["MLP"]:
                    self.add("MLP", label, HTTP_JSON, c, measure(c))

    def run(self) -> None:
        parts = [
            ("inprocess", self.in_process),
            ("modelpod", self.modelpod),
            ("fastapi", self.fastapi),
            ("litserve", self.litserve),
            ("fastapi", self.fastapi_default_blas),
        ]
        for name, part in parts:
            if name in self.skip:
                continue
            try:
                part()
            except RuntimeError as error:  # a server that did not start: the other parts still run
                log(f"{name} FAILED: {error}")

    def sorted_rows(self) -> list[Row]:
        def key(row: Row) -> tuple[int, int, int, int]:
            server = row.server if row.server in ORDER["server"] else LITSERVE
            return (
                ORDER["workload"].index(row.workload),
                ORDER["server"].index(server),
                ORDER["transport"].index(row.transport),
                row.concurrency,
            )

        return sorted(self.rows, key=key)


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


def report(rows: list[Row], seconds: float, started: float, busy_before: float) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# modelpod benchmarks",
            "",
            f"- date: {now}; modelpod {revision()}; Python {platform.python_version()}",
            f"- machine: {machine()}; CPU busy before the run: {busy_before:.0%}",
            f"- {seconds:g} s per load point after 1 s of warm-up; the load generators share the machine "
            f"with the server; whole run {time.monotonic() - started:.0f} s",
            "- plain FastAPI runs with OPENBLAS_NUM_THREADS=1 (see the row with OpenBLAS's default threads); "
            "every other server with the defaults",
            "- x FastAPI: throughput over plain FastAPI's (same workload, same concurrency); "
            "x in-process: over the model called directly (batch 1 for c1, batch 32 otherwise)",
            "",
            render(rows),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per load point")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument("--skip", nargs="*", default=[], choices=PARTS, help="parts to leave out")
    options = parser.parse_args()

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through every `finally`, which stops the servers

    signal.signal(signal.SIGTERM, stop)
    if not wrk_load.available():
        sys.exit("wrk is not installed: apt-get install -y wrk")
    busy_before = cpu_busy()
    if busy_before > 0.25:
        log(f"warning: the CPUs were {busy_before:.0%} busy before the run; the numbers will be noisy")
    started = time.monotonic()
    with TemporaryDirectory(prefix="modelpod-bench-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        suite = Suite(options.seconds, set(options.skip), work)
        suite.run()
        text = report(suite.sorted_rows(), options.seconds, started, busy_before)
    options.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
