"""Large tensors through the Open Inference Protocol's binary tensor extension, over HTTP.

Sends one FP32 tensor (64 MiB by default) to a model that returns it, as binary data both ways
(`Inference-Header-Content-Length`), a few requests one after another, and reports GB/s end to
end: request plus response bytes over the wall time, encoding and decoding included.

The client is the standard library's `http.client`, which sends the tensor from the array's memory
and receives the answer into one buffer of the declared length: measured here, httpx spends about
2.5 times the server's CPU on the same 128 MiB (its parser copies every chunk), so with it the
number was the client's speed, not the server's.
"""

from __future__ import annotations

import http.client
import time
from urllib.parse import urlsplit

import numpy as np
from measurement import Measurement

from modelpod.protocol import v2

MIB = 1 << 20


def read_into(response: http.client.HTTPResponse) -> bytearray:
    """The body, read straight into one buffer of its declared length (the decoded arrays are
    views of it)."""
    length = int(response.getheader("content-length") or 0)
    body = bytearray(length)
    view, received = memoryview(body), 0
    while received < length:
        count = response.readinto(view[received:])
        if not count:
            raise RuntimeError(f"the answer ended after {received} of {length} bytes")
        received += count
    return body


def run_binary(url: str, mib: int = 64, requests: int = 10, timeout_s: float = 60.0) -> Measurement:
    columns = 1 << 14  # 16,384 FP32 per row: 64 KiB rows
    tensor = (
        np.random.default_rng(0).standard_normal((mib * MIB // (4 * columns), columns)).astype(np.float32)
    )
    errors = 0
    latencies: list[float] = []
    moved = 0
    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=timeout_s)
    try:

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
            connection.request("POST", where.path, body=iter(parts), headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
            body = read_into(response)
            answer = v2.decode_http_response(
                body, v2.parse_header_length(response.getheader(v2.HEADER_LENGTH))
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
            except (OSError, http.client.HTTPException, RuntimeError):
                errors += 1
                connection.close()  # a fresh connection for the next request
                continue
            latencies.append(time.perf_counter() - began)
        elapsed = time.perf_counter() - started
    finally:
        connection.close()
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist() if latencies else (None, None)
    return Measurement(moved / elapsed / 1e9, p50, p99, errors, unit="GB/s", requests=len(latencies))
