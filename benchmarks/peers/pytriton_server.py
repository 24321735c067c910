"""Triton Inference Server through PyTriton, serving the benchmark MLP over V2 HTTP and gRPC.

    benchmarks/.venv-pytriton/bin/python benchmarks/peers/pytriton_server.py \
        --http-port 8000 --grpc-port 8001 --metrics-port 8002 [--batch 32]

Model `mlp`: input `x` FP32 [-1, 256], output `y` FP32 [-1, 10]. `--batch 32` is what PyTriton's
documentation shows: `@batch` with Triton's dynamic batcher (up to 32 rows, waiting at most
`--delay-us` for more); `--batch 0` disables batching, so every request runs on its own. Runs in
its own virtual environment (nvidia-pytriton and numpy, no modelpod); `mlp_numpy` comes from
`benchmarks/` on PYTHONPATH.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from mlp_numpy import SIZES, NumpyMLP
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--batch", type=int, default=32, help="max_batch_size (0: no batching)")
    parser.add_argument("--delay-us", type=int, default=2000, help="the dynamic batcher's queue delay")
    options = parser.parse_args()
    net = NumpyMLP()

    @batch  # type: ignore[untyped-decorator]
    def infer(x: np.ndarray[Any, Any]) -> dict[str, np.ndarray[Any, Any]]:
        return {"y": net.forward(x)}

    def infer_unbatched(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"y": net.forward(request["x"])} for request in requests]

    if options.batch > 0:
        config = ModelConfig(
            max_batch_size=options.batch,
            batcher=DynamicBatcher(max_queue_delay_microseconds=options.delay_us),
        )
        shapes: tuple[tuple[int, ...], ...] = ((SIZES[0],), (SIZES[-1],))  # Triton adds the batch axis
        function: Any = infer
    else:
        config = ModelConfig(batching=False)
        shapes = ((-1, SIZES[0]), (-1, SIZES[-1]))
        function = infer_unbatched
    triton_config = TritonConfig(
        http_address="127.0.0.1",
        http_port=options.http_port,
        grpc_address="127.0.0.1",
        grpc_port=options.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=options.metrics_port,
    )
    with Triton(config=triton_config) as triton:
        triton.bind(
            model_name="mlp",
            infer_func=function,
            inputs=[Tensor(name="x", dtype=np.float32, shape=shapes[0])],
            outputs=[Tensor(name="y", dtype=np.float32, shape=shapes[1])],
            config=config,
        )
        triton.serve()


if __name__ == "__main__":
    main()
