"""Large tensors through the Open Inference Protocol's binary tensor extension, over HTTP.

Sends one FP32 tensor (64 MiB by default) to a model that returns it, as binary data both ways
(`Inference-Header-Content-Length`), a few requests one after another, and reports GB/s end to
end: request plus response bytes over the wall time, encoding and decoding included.
"""

from __future__ import annotations

import time

import httpx
import numpy as np
from measurement import Measurement

from modelpod.protocol import v2

MIB = 1 << 20


def run_binary(url: str, mib: int = 64, requests: int = 10, timeout_s: float = 60.0) -> Measurement:
    columns = 1 << 14  # 16,384 FP32 per row: 64 KiB rows
    tensor = (
        np.random.default_rng(0).standard_normal((mib * MIB // (4 * columns), columns)).astype(np.float32)
    )
    errors = 0
    latencies: list[float] = []
    moved = 0
    with httpx.Client(timeout=timeout_s) as client:

        def once() -> int:
            request = v2.InferRequest(
                inputs={"x": tensor}, outputs=[v2.RequestedOutput("y", binary_data=True)]
            )
            body, length = v2.encode_http_request(request)
            headers = {"Content-Type": "application/octet-stream", v2.HEADER_LENGTH: str(length)}
            response = client.post(url, content=body, headers=headers)
            response.raise_for_status()
            answer = v2.decode_http_response(
                response.content, v2.parse_header_length(response.headers.get(v2.HEADER_LENGTH))
            )
            if answer.outputs["y"].shape != tensor.shape:
                raise RuntimeError(f"the echo came back as {answer.outputs['y'].shape}, not {tensor.shape}")
            return len(body) + len(response.content)

        once()  # warm-up: first-use allocations on both sides
        started = time.perf_counter()
        for _ in range(requests):
            began = time.perf_counter()
            try:
                moved += once()
            except (httpx.HTTPError, RuntimeError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if latencies else (None, None)
    return Measurement(moved / elapsed / 1e9, p50, p99, errors, unit="GB/s", requests=len(latencies))
