"""Throughput and latency of `modelpod serve` for the MLP example, per protocol and concurrency.

    python benchmarks/bench_server.py [--seconds 3] [--concurrency 1 64]

Starts a server process on free loopback ports and prints a table (markdown, ready for the
README). HTTP load comes from `wrk` when it is installed (a Python HTTP client saturates before
the server does), else from httpx; gRPC load from grpcio's asyncio client. Client and server
share this machine's cores, so the numbers are a floor for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
import httpx
import numpy as np
import orjson

from modelpod.protocol import native, v2
from modelpod.protocol._generated import grpc_service_pb2_grpc, native_pb2, native_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
ROW = np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 16)
Call = Callable[[], Awaitable[None]]
Result = tuple[float, float, float]  # requests per second, p50 ms, p99 ms


def start_server(data_path: str) -> tuple[subprocess.Popen[str], int, int]:
    ports_and_data = [
        "--http-port",
        "0",
        "--grpc-port",
        "0",
        "--data-path",
        data_path,
        "--log-level",
        "warning",
    ]
    command = [
        sys.executable,
        "-m",
        "modelpod",
        "serve",
        str(ROOT / "examples" / "mlp.py:MLP"),
        *ports_and_data,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ports: dict[str, int] = {}
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"(HTTP|gRPC) listening on \S*?:(\d+)", line)
        if match:
            ports[match.group(1)] = int(match.group(2))
        if line.strip() == "modelpod: ready":
            return process, ports["HTTP"], ports["gRPC"]
    raise RuntimeError("the server exited before it was ready")


def http_requests() -> dict[str, tuple[str, bytes, dict[str, str]]]:
    """Each HTTP scenario as (path, body, headers)."""
    json_body = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16], "data": ROW.ravel().tolist()}]
    }
    request = v2.InferRequest(inputs={"x": ROW}, outputs=[v2.RequestedOutput("y", binary_data=True)])
    binary_body, length = v2.encode_http_request(request)
    as_json = {"content-type": "application/json"}
    as_binary = {v2.HEADER_LENGTH: str(length), "content-type": "application/octet-stream"}
    return {
        "HTTP native (JSON)": ("/models/mlp/predict", orjson.dumps({"x": ROW.tolist()}), as_json),
        "HTTP V2 (JSON)": ("/v2/models/mlp/infer", orjson.dumps(json_body), as_json),
        "HTTP V2 (binary)": ("/v2/models/mlp/infer", binary_body, as_binary),
    }


def grpc_calls(channel: grpc.aio.Channel) -> dict[str, Call]:
    inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    model = native_pb2_grpc.ModelServiceStub(channel)
    infer_request = v2.encode_grpc_request(v2.InferRequest(inputs={"x": ROW}), "mlp")
    call_request = native_pb2.CallRequest(model="mlp", method="predict", payload=native.pack({"x": ROW}))

    async def v2_infer() -> None:
        await inference.ModelInfer(infer_request)

    async def native_call() -> None:
        await model.Call(call_request)

    return {"gRPC V2": v2_infer, "gRPC native (msgpack)": native_call}


async def measure(call: Call, concurrency: int, seconds: float) -> Result:
    """Measured over `seconds` after half a second of warm-up."""
    latencies: list[float] = []
    warm_until = time.perf_counter() + 0.5
    stop_at = warm_until + seconds

    async def worker() -> None:
        while (started := time.perf_counter()) < stop_at:
            await call()
            if started >= warm_until:
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return len(latencies) / seconds, float(p50), float(p99)


async def measure_httpx(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> Result:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def call() -> None:
            (await client.post(url, content=body, headers=headers)).raise_for_status()

        return await measure(call, concurrency, seconds)


_WRK_SCRIPT = """wrk.method = "POST"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
"""
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def measure_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float) -> Result:
    with TemporaryDirectory() as folder:
        (Path(folder) / "body").write_bytes(body)
        header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
        script = Path(folder) / "post.lua"
        script.write_text(_WRK_SCRIPT.format(body=Path(folder) / "body", headers=header_lines))
        duration = f"-d{max(round(seconds), 1)}s"
        command = ["wrk", "-t1", f"-c{concurrency}", duration, "--latency", "-s", str(script), url]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"the server answered errors:\n{output}")

    def number(pattern: str) -> float:
        match = re.search(pattern, output)
        if match is None:
            raise RuntimeError(f"cannot read {pattern!r} from wrk's output:\n{output}")
        return float(match.group(1)) * (_UNITS[match.group(2)] if match.lastindex == 2 else 1)

    return (
        number(r"Requests/sec:\s+([\d.]+)"),
        number(r"\s50%\s+([\d.]+)(us|ms|s)"),
        number(r"\s99%\s+([\d.]+)(us|ms|s)"),
    )


async def run(http_port: int, grpc_port: int, concurrencies: list[int], seconds: float) -> list[str]:
    rows = [
        "| protocol | load from | concurrency | requests/s | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    tool = "wrk" if shutil.which("wrk") else "httpx"

    def add(name: str, load: str, concurrency: int, result: Result) -> None:
        rows.append(
            f"| {name} | {load} | {concurrency} | {result[0]:,.0f} | {result[1]:.2f} | {result[2]:.2f} |"
        )
        print(rows[-1], flush=True)

    for name, (path, body, headers) in http_requests().items():
        url = f"http://127.0.0.1:{http_port}{path}"
        for concurrency in concurrencies:
            if tool == "wrk":
                add(name, tool, concurrency, measure_wrk(url, body, headers, concurrency, seconds))
            else:
                add(name, tool, concurrency, await measure_httpx(url, body, headers, concurrency, seconds))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        for name, call in grpc_calls(channel).items():
            for concurrency in concurrencies:
                add(name, "grpcio", concurrency, await measure(call, concurrency, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    options = parser.parse_args()
    with TemporaryDirectory() as data_path:
        process, http_port, grpc_port = start_server(data_path)
        try:
            rows = asyncio.run(run(http_port, grpc_port, options.concurrency, options.seconds))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
