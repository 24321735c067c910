"""The same model served by `modelpod serve` and by the Ray Serve backend, on this machine.

    python benchmarks/ray_compare.py [--seconds 5] [--output benchmarks/ray_results.md]

The batched numpy MLP of the main suite (`benchmarks/models.py:MLP`, one 256-vector per request,
batches of up to 32 rows, 2 ms delay), loaded over HTTP JSON by `wrk` at 1 and 64 connections:
- `modelpod serve`, one process;
- `modelpod.ray.deploy(MLP)` with 1 and 2 replicas, on a local Ray cluster with this machine's CPUs
  shared out between the replicas;
- the same MLP as a plain Ray Serve deployment batched by Ray's `@serve.batch` (same batch size
  and delay), which says what modelpod's batcher and app cost inside a replica, against Ray's own;
- `modelpod.ray.deploy(MLP)` again in Ray Serve's high-throughput mode (RAY_SERVE_ENABLE_HA_PROXY=1,
  RAY_SERVE_THROUGHPUT_OPTIMIZED=1: HAProxy in front, each replica serving HTTP itself).
Prints one markdown table and writes it to `--output`. Needs `wrk` and `modelpod[ray]`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx
import numpy as np
import servers
import wrk_load
from measurement import Measurement
from mlp_numpy import NumpyMLP, sample_row
from models import MLP, MLP_BATCH_DELAY_MS, MLP_BATCH_SIZE

HERE = Path(__file__).resolve().parent
BODY = json.dumps({"x": [sample_row()]}).encode()
ROUTE = "/models/mlp/predict"
CONCURRENCY = (1, 64)
MODELPOD_SERVE = "modelpod serve"


@dataclass(frozen=True)
class Point:
    server: str
    replicas: str
    concurrency: int
    result: Measurement


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(url: str, server: str, replicas: str, seconds: float) -> list[Point]:
    _check(url)
    points = []
    for concurrency in CONCURRENCY:
        try:
            result = wrk_load.run_wrk(url, BODY, concurrency, seconds)
        except Exception as error:  # one failed point is reported; the others still run
            log(f"  {server} c{concurrency}: FAILED: {error}")
            result = Measurement(0.0, None, None, errors=1)
        log(f"  {server} ({replicas}) c{concurrency}: {result.throughput:,.0f} req/s, p99 {result.p99_ms} ms")
        if result.errors:
            answer = httpx.post(url, content=BODY, headers={"content-type": "application/json"}, timeout=30)
            log(f"  {result.errors} errors; a request now gets {answer.status_code}: {answer.text[:300]}")
        points.append(Point(server, replicas, concurrency, result))
    return points


def modelpod_serve(work: Path, seconds: float) -> list[Point]:
    log(f"--- {MODELPOD_SERVE}")
    server = servers.modelpod(work / "logs", work / "serve-data", ["benchmarks/models.py:MLP"])
    with servers.running(server, "/v2/health/ready"):
        return measure(server.url + ROUTE, MODELPOD_SERVE, "1 process", seconds)


def on_ray(work: Path, seconds: float, fast: bool = False) -> list[Point]:
    """modelpod.ray with 1 and 2 replicas on a fresh local cluster; with `fast`, in Ray Serve's
    high-throughput mode (HAProxy in front, replicas serving HTTP themselves); without, also the
    plain Ray Serve MLP batched by Ray."""
    import ray
    from ray import serve

    import modelpod.ray

    cpus = os.cpu_count() or 2
    port = servers.free_port()
    mode = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if fast else {}
    saved = dict(os.environ)
    os.environ.update(mode)  # read by Ray's processes as they start
    # Replicas import the native baseline's numpy MLP by name, as this process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    server = "modelpod on Ray" + (" (HAProxy, direct ingress)" if fast else "")
    points: list[Point] = []
    try:
        serve.start(http_options={"host": servers.HOST, "port": port})
        for replicas in (1, 2):
            log(f"--- {server}, {replicas} replica(s)")
            deployment = modelpod.ray.deploy(MLP, name="bench", num_replicas=replicas, http_port=port,
                                             ray_actor_options={"num_cpus": cpus / replicas},
                                             data_path=work / "ray-data")  # fmt: skip
            try:
                label = f"{replicas} replica{'s' if replicas > 1 else ''}"
                points += measure(deployment.url + ROUTE, server, label, seconds)
            finally:
                deployment.undeploy()
        if not fast:
            log("--- plain Ray Serve with @serve.batch, 1 replica")
            serve.run(native_ray_mlp(cpus), name="native", route_prefix="/native")
            url = f"http://{servers.HOST}:{port}/native"
            points += measure(url, "Ray Serve + @serve.batch", "1 replica", seconds)
            serve.delete("native")
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
    return points


def on_ray_fast(work: Path, seconds: float) -> list[Point]:
    return on_ray(work, seconds, fast=True)


def native_ray_mlp(cpus: float) -> Any:
    """The MLP as Ray Serve's documentation writes a batched model: a deployment whose `__call__`
    reads the JSON and awaits a method batched by `@serve.batch`."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment(ray_actor_options={"num_cpus": cpus}, max_ongoing_requests=256)
    class NativeMLP:
        def __init__(self) -> None:
            self.net = NumpyMLP()

        @serve.batch(max_batch_size=MLP_BATCH_SIZE, batch_wait_timeout_s=MLP_BATCH_DELAY_MS / 1000)
        async def forward(self, rows: list[list[float]]) -> list[list[float]]:
            out: list[list[float]] = self.net.forward(np.asarray(rows, dtype=np.float32)).tolist()
            return out

        async def __call__(self, request: Request) -> list[list[float]]:
            body = await request.json()
            return [await self.forward(body["x"][0])]  # what modelpod answers: the (1, 10) array

    return NativeMLP.bind()


def _check(url: str) -> None:
    """One request before the load: the server answers, and answers the MLP's 10 numbers."""
    answer = httpx.post(url, content=BODY, headers={"content-type": "application/json"}, timeout=30)
    answer.raise_for_status()
    assert len(answer.json()[0]) == 10, answer.text


def render(points: list[Point]) -> str:
    baseline = {p.concurrency: p.result.throughput for p in points if p.server == MODELPOD_SERVE}
    lines = [
        "| server | replicas | load | throughput | p50 ms | p99 ms | errors | x modelpod serve |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        base = baseline.get(p.concurrency) or 0.0
        ratio = f"{p.result.throughput / base:.2f}x" if base > 0 else "—"
        cells = [p.server, p.replicas, f"c{p.concurrency}", f"{p.result.throughput:,.0f} req/s",
                 _ms(p.result.p50_ms), _ms(p.result.p99_ms), str(p.result.errors), ratio]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load point, after 1 s of warm-up")
    parser.add_argument("--output", type=Path, default=HERE / "ray_results.md")
    arguments = parser.parse_args()
    if not wrk_load.available():
        log("wrk is needed: apt-get install wrk")
        return 2
    started, load_before = time.monotonic(), os.getloadavg()[0]
    with TemporaryDirectory(prefix="modelpod-ray-bench-") as folder:
        work = Path(folder)
        (work / "logs").mkdir()
        runs: list[Callable[[Path, float], list[Point]]] = [modelpod_serve, on_ray, on_ray_fast]
        points = [point for run in runs for point in run(work, arguments.seconds)]
    import ray

    heading = (
        f"Run on {datetime.date.today()} on {platform.node() or 'this machine'}: {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Ray {ray.__version__}; wrk shares the CPUs with the servers, "
        f"{arguments.seconds:g} s per point after 1 s of warm-up ({time.monotonic() - started:.0f} s in all);"
        f" load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after."
    )
    table = f"{heading}\n\n{render(points)}\n"
    print(table)
    arguments.output.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
