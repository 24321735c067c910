"""What tracing and payload capture cost: an MLP under load with neither, with `--otel` (every
request sampled, spans exported over OTLP/HTTP to a collector in this process), and with
`--capture mlp=1` (every request written).

    python benchmarks/tracing_cost.py [--seconds 5] [--concurrency 64] [--rounds 5] [--example]

The MLP is the performance suite's (`benchmarks/models.py`: 256 -> 1024 -> 1024 -> 10, batched up
to 32 rows, so that a request's spans include its `queue` wait and its batch's `batch` span), sent
the suite's V2 JSON body; `--example` serves the README's `examples/mlp.py` instead (16 -> 64 -> 4,
no batching: each request its own model call on a model thread). Every server runs with one BLAS
thread, as in the suite (OpenBLAS's idle threads otherwise spin on the cores the load needs).

The three servers run side by side and are loaded in turn, round after round, so that the machine's
changing load falls on all three alike. For each: requests per second, p50 and p99 latency, and the
server process's CPU time per request (user + system, from /proc: the figure a shared machine moves
least), each the median over the rounds, and the ratio to "neither": the median of each round's
ratio to "neither" in that round. HTTP V2 JSON load from `wrk` when installed, else httpx. Runs in
about two and a half minutes with the defaults."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench_server import http_requests, measure_httpx, measure_wrk  # benchmarks/ is on the path
from payloads import v2_json
from servers import ONE_THREAD

ROOT = Path(__file__).resolve().parents[1]
CONFIGURATIONS: dict[str, tuple[str, ...]] = {
    "neither": (),
    "tracing (--otel, sampling 1.0)": ("--otel",),
    "capture (--capture mlp=1)": ("--capture", "mlp=1"),
}


class Collector:
    """An OTLP/HTTP endpoint that accepts and counts export requests (what a collector costs the
    server is the export itself, not what the collector does with it)."""

    def __init__(self) -> None:
        self.exports = 0
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                self.rfile.read(int(self.headers.get("content-length", "0")))
                collector.exports += 1
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


SUITE_MLP = str(ROOT / "benchmarks" / "models.py:MLP")
EXAMPLE_MLP = str(ROOT / "examples" / "mlp.py:MLP")


def start(
    data_path: str, flags: tuple[str, ...], endpoint: str, model: str = SUITE_MLP
) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "modelpod", "serve", model,
               "--http-port", "0", "--grpc-port", "0", "--data-path", data_path, "--log-level", "warning",
               *flags]  # fmt: skip
    env = {
        **os.environ,
        **ONE_THREAD,
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    }
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    port = 0
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"HTTP listening on \S*?:(\d+)", line)
        if match:
            port = int(match.group(1))
        if line.strip() == "modelpod: ready":
            return process, port
    raise RuntimeError(f"the server exited before it was ready: {flags}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    port: int, pid: int, concurrency: int, seconds: float, example: bool = False
) -> tuple[float, float, float, float]:
    if example:
        path, body, headers = http_requests()["HTTP V2 (JSON)"]
    else:
        path, suite_body = "/v2/models/mlp/infer", v2_json()
        body, headers = suite_body.body, suite_body.headers
    url = f"http://127.0.0.1:{port}{path}"
    load = measure_wrk if shutil.which("wrk") else None
    if load is not None:
        load(url, body, headers, concurrency, 1.0)  # warm-up
    before = cpu_seconds(pid)
    if load is not None:
        rate, p50, p99 = load(url, body, headers, concurrency, seconds)
    else:
        rate, p50, p99 = asyncio.run(measure_httpx(url, body, headers, concurrency, seconds))
    cpu = cpu_seconds(pid) - before
    return rate, p50, p99, cpu / max(rate * seconds, 1) * 1e6


def capture_counts(port: int) -> str:
    """The capture's written and dropped records, from the server's /metrics."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    found = re.findall(r'modelpod_capture_records_total\{model="mlp",outcome="(\w+)"\} ([\d.e+]+)', text)
    return ", ".join(f"{outcome} {float(count):,.0f}" for outcome, count in found)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--example", action="store_true", help="serve examples/mlp.py (no batching)")
    options = parser.parse_args()
    collector = Collector()
    results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in CONFIGURATIONS}
    with ExitStack() as stack:
        servers = {}
        for name, flags in CONFIGURATIONS.items():
            data_path = stack.enter_context(TemporaryDirectory())
            model = EXAMPLE_MLP if options.example else SUITE_MLP
            process, port = start(data_path, flags, collector.endpoint, model)
            stack.callback(_stop, process)
            servers[name] = (process, port)
        for round_number in range(options.rounds):
            for name, (process, port) in servers.items():
                figures = measure(port, process.pid, options.concurrency, options.seconds, options.example)
                results[name].append(figures)
                rate, p50, p99, cpu = figures
                print(f"round {round_number + 1} {name}: {rate:,.0f}/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
                      f"{cpu:,.0f} µs CPU/request", flush=True)  # fmt: skip
        counts = capture_counts(servers["capture (--capture mlp=1)"][1])
    rows = ["| configuration | requests/s | p50 ms | p99 ms | server CPU µs/request | throughput | CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    neither = results["neither"]
    for name, figures in results.items():
        rate, p50, p99, cpu = (statistics.median(f[i] for f in figures) for i in range(4))
        # Each round's figure against "neither" in the same round: the machine's speed drifts
        # between rounds, far less within one.
        throughput = statistics.median(f[0] / n[0] for f, n in zip(figures, neither, strict=True))
        cpu_ratio = statistics.median(f[3] / n[3] for f, n in zip(figures, neither, strict=True))
        rows.append(f"| {name} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:,.0f} | "
                    f"{throughput - 1:+.0%} | {cpu_ratio - 1:+.0%} |")  # fmt: skip
    print("\n".join(rows))
    model = "examples/mlp.py" if options.example else "the suite MLP"
    print(f"({model}; medians of {options.rounds} rounds, the ratios of each round's figures to "
          f"neither's in the same round; captures: {counts}; the collector took "
          f"{collector.exports} OTLP exports)")  # fmt: skip


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    process.wait(timeout=30)


if __name__ == "__main__":
    main()
