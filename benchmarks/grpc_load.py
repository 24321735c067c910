"""gRPC load from grpcio's asyncio client, in its own process (the orchestrator runs it as one).

    python benchmarks/grpc_load.py --target 127.0.0.1:50051 --workload mlp --call native \
        --concurrency 64 --seconds 6

`--call native` is `modelpod.native.ModelService/Call` with msgpack arguments; `--call v2` is the
Open Inference Protocol's `ModelInfer`. Prints one JSON `Measurement` on stdout. The client is
Python too, so at high concurrency it needs about as much CPU as the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np
from measurement import Measurement, from_latencies
from mlp_numpy import sample_row

from modelpod.protocol import native, v2
from modelpod.protocol._generated import grpc_service_pb2_grpc, native_pb2, native_pb2_grpc

Call = Callable[[], Awaitable[object]]


def make_call(channel: grpc.aio.Channel, workload: str, kind: str) -> Call:
    if workload == "mlp":
        inputs: dict[str, object] = {"x": np.asarray([sample_row()], dtype=np.float32)}
    elif workload == "echo":
        inputs = {"text": "modelpod"}
    else:
        raise ValueError(f"no gRPC request for workload {workload!r}")
    if kind == "native":
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(model=workload, method="predict", payload=native.pack(inputs))
        return lambda: stub.Call(request)
    if kind == "v2":
        if workload != "mlp":
            raise ValueError("the V2 gRPC call is defined for the tensor model (mlp) only")
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        row = np.asarray([sample_row()], dtype=np.float32)
        infer = v2.encode_grpc_request(v2.InferRequest(inputs={"x": row}), workload)
        return lambda: inference.ModelInfer(infer)
    raise ValueError(f"unknown call {kind!r}")


async def measure(
    target: str, workload: str, kind: str, concurrency: int, seconds: float, warmup: float
) -> Measurement:
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = make_call(channel, workload, kind)
        await call()  # fail fast on a wrong target or model
        warm_until = time.perf_counter() + warmup
        stop_at = warm_until + seconds

        async def worker() -> None:
            nonlocal errors
            while (started := time.perf_counter()) < stop_at:
                try:
                    await call()
                except grpc.aio.AioRpcError:
                    if started >= warm_until:
                        errors += 1
                    continue
                if started >= warm_until:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return from_latencies(latencies, seconds, errors)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--workload", choices=["mlp", "echo"], default="mlp")
    parser.add_argument("--call", choices=["native", "v2"], default="native")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    options = parser.parse_args()
    result = asyncio.run(
        measure(
            options.target,
            options.workload,
            options.call,
            options.concurrency,
            options.seconds,
            options.warmup,
        )
    )
    print(json.dumps(result.as_json()))


if __name__ == "__main__":
    main()
