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
from modelpod.protocol.body import BodyBuffer

MIB = 1 << 20


def read_into(response: httpx.Response) -> bytearray:
    """The body, copied once into one buffer (the decoded arrays are views of it)."""
    body = BodyBuffer()
    for chunk in response.iter_raw():
        body.add(chunk)
    return body.finish()


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
            parts, length = v2.encode_http_request_parts(request)  # sent from the array's memory
            sent = sum(memoryview(part).nbytes for part in parts)
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(sent),
                v2.HEADER_LENGTH: str(length),
            }
            with client.stream("POST", url, content=iter(parts), headers=headers) as response:
                response.raise_for_status()
                body = read_into(response)
            answer = v2.decode_http_response(
                body, v2.parse_header_length(response.headers.get(v2.HEADER_LENGTH))
            )
            if answer.outputs["y"].shape != tensor.shape:
                raise RuntimeError(f"the echo came back as {answer.outputs['y'].shape}, not {tensor.shape}")
            return sent + len(body)

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
