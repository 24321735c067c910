"""What the suite measures: each server under test, how to start it, and its load points.

A `Part` is one server process (or the in-process ceiling) and the points measured on it; the
suite starts it, measures each point that `--only` keeps, and stops it. Every server gets the
same 256-float vector (`payloads`), HTTP load from `wrk`, gRPC load from `h2load`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h2load_grpc
import payloads
import servers
import table as t
import wrk_load
from binary_load import run_binary
from measurement import Measurement

Load = Callable[[servers.Server, float], Measurement]  # (the running server, seconds) -> result
LITSERVE_BATCH_TIMEOUT_S = 0.005
WORKLOAD_KEYS = {"MLP": "mlp", "Echo": "echo", "MiniLM": "minilm", "64 MiB tensor": "tensor"}


@dataclass(frozen=True)
class Point:
    server: str
    workload: str
    transport: str
    concurrency: int
    load: Load


@dataclass(frozen=True)
class Part:
    name: str  # what --skip names
    start: Callable[[Path, set[str]], servers.Server]  # (work folder, workload keys) -> server
    ready_path: str
    points: list[Point]


def wrk(path: str, body: payloads.HttpBody, c: int) -> Load:
    return lambda server, seconds: wrk_load.run_wrk(server.url + path, body.body, c, seconds, body.headers)


def h2load(method: str, message: bytes, c: int) -> Load:
    def load(server: servers.Server, seconds: float) -> Measurement:
        target = f"{servers.HOST}:{server.grpc_port}"
        return h2load_grpc.run_h2load(target, method, message, c, seconds)

    return load


def big_tensor(server: servers.Server, seconds: float) -> Measurement:
    return run_binary(server.url + "/v2/models/tensor_echo/infer", 64, 10)


def modelpod_part() -> Part:
    mlp, native = payloads.native_json("MLP"), "/models/mlp/predict"
    pod, keyword = t.MODELPOD, t.MODELPOD_KEYWORD
    points = [
        Point(pod, "MLP", t.HTTP_JSON, 1, wrk(native, mlp, 1)),
        Point(pod, "MLP", t.HTTP_JSON, 64, wrk(native, mlp, 64)),
        Point(keyword, "MLP", t.HTTP_JSON, 64, wrk("/models/mlp_keyword/predict", mlp, 64)),
        Point(pod, "MLP", t.V2_JSON, 64, wrk("/v2/models/mlp/infer", payloads.v2_json(), 64)),
        Point(pod, "MLP", t.V2_BINARY, 64, wrk("/v2/models/mlp/infer", payloads.v2_binary(), 64)),
        Point(
            pod, "MLP", t.GRPC_NATIVE, 64, h2load(h2load_grpc.NATIVE_CALL, payloads.grpc_native("mlp"), 64)
        ),
        Point(pod, "MLP", t.GRPC_V2, 64, h2load(h2load_grpc.V2_INFER, payloads.grpc_v2(), 64)),
        Point(pod, "Echo", t.HTTP_JSON, 64, wrk("/models/echo/predict", payloads.native_json("Echo"), 64)),
        Point(
            t.MODELPOD_ASYNC,
            "Echo",
            t.HTTP_JSON,
            64,
            wrk("/models/async_echo/predict", payloads.native_json("Echo"), 64),
        ),
        Point(
            pod, "MiniLM", t.HTTP_JSON, 32, wrk("/models/minilm/predict", payloads.native_json("MiniLM"), 32)
        ),
        Point(pod, "64 MiB tensor", t.V2_BINARY, 1, big_tensor),
    ]

    def start(work: Path, keys: set[str]) -> servers.Server:
        names = ["MLP", "KeywordMLP", "Echo", "AsyncEcho", "TensorEcho"] + (
            ["MiniLM"] if "minilm" in keys else []
        )
        models = [f"benchmarks/models.py:{name}" for name in names]
        return servers.modelpod(work / "logs", work / "modelpod-data", models)

    return Part("modelpod", start, "/v2/health/ready", points)


def fastapi_part(handlers: str) -> Part:
    server = t.FASTAPI_SYNC if handlers == "sync" else t.FASTAPI_ASYNC
    mlp = payloads.native_json("MLP")
    points = [
        Point(server, "MLP", t.HTTP_JSON, 1, wrk("/mlp", mlp, 1)),
        Point(server, "MLP", t.HTTP_JSON, 64, wrk("/mlp", mlp, 64)),
        Point(server, "Echo", t.HTTP_JSON, 64, wrk("/echo", payloads.native_json("Echo"), 64)),
        Point(server, "MiniLM", t.HTTP_JSON, 32, wrk("/minilm", payloads.native_json("MiniLM"), 32)),
    ]

    def start(work: Path, keys: set[str]) -> servers.Server:
        return servers.fastapi(work / "logs", handlers, with_minilm="minilm" in keys)

    return Part(f"fastapi-{handlers}", start, "/health", points)


def litserve_part(batch: int) -> Part:
    server = t.LITSERVE_BATCH if batch > 1 else t.LITSERVE
    mlp = payloads.native_json("MLP")
    points = [Point(server, "MLP", t.HTTP_JSON, c, wrk("/predict", mlp, c)) for c in (1, 64)]

    def start(work: Path, keys: set[str]) -> servers.Server:
        return servers.litserve(work / "logs", batch, LITSERVE_BATCH_TIMEOUT_S)

    return Part("litserve", start, "/health", points)


def v2_peer_part(name: str, batch: int) -> Part:
    """MLServer or Triton: the V2 routes over HTTP (JSON; binary for Triton) and gRPC."""
    if name == "mlserver":
        server, launch = (t.MLSERVER_BATCH if batch else t.MLSERVER), servers.mlserver
    else:
        server, launch = (t.TRITON_BATCH if batch else t.TRITON), servers.pytriton
    infer = "/v2/models/mlp/infer"
    points = [
        Point(server, "MLP", t.V2_JSON, 64, wrk(infer, payloads.v2_json(), 64)),
        Point(server, "MLP", t.GRPC_V2, 64, h2load(h2load_grpc.V2_INFER, payloads.grpc_v2(), 64)),
    ]
    if name == "triton":  # MLServer has no binary tensor extension
        points.insert(1, Point(server, "MLP", t.V2_BINARY, 64, wrk(infer, payloads.v2_binary(), 64)))

    def start(work: Path, keys: set[str]) -> servers.Server:
        return launch(work / "logs", batch)

    return Part(name, start, "/v2/models/mlp/ready", points)


def parts() -> list[Part]:
    """Every server, in the order they run (modelpod first, then its peers)."""
    return [
        modelpod_part(),
        fastapi_part("sync"),
        fastapi_part("async"),
        litserve_part(1),
        litserve_part(32),
        v2_peer_part("mlserver", 0),
        v2_peer_part("mlserver", 32),
        v2_peer_part("triton", 0),
        v2_peer_part("triton", 32),
    ]
