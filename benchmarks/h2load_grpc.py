"""gRPC load from `h2load` (nghttp2's C load generator): one pre-encoded unary call, posted again and again.

A gRPC unary call is an HTTP/2 POST of one length-prefixed message with `content-type:
application/grpc` and `te: trailers`; `h2load` sends such a body as fast as the server answers,
without the CPU a Python gRPC client would take from the server on the same machine. It does not
read gRPC's status trailer, so the call is checked once through grpcio before the load, and the
bytes received under load are counted against that answer's size: a failed call (trailers only)
brings no data.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path
from tempfile import TemporaryDirectory

import grpc
import numpy as np
from measurement import Measurement

NATIVE_CALL = "/modelpod.native.ModelService/Call"
V2_INFER = "/inference.GRPCInferenceService/ModelInfer"


def available() -> bool:
    return shutil.which("h2load") is not None


def frame(message: bytes) -> bytes:
    """gRPC's framing: a zero byte (not compressed), the length big-endian, the message."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def check_call(target: str, method: str, message: bytes, timeout_s: float = 30.0) -> bytes:
    """One call through grpcio: fails loudly on a wrong target, method or message; returns the answer."""
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, None, None)  # no serializers: bytes in, bytes out
        answer: bytes = call(message, timeout=timeout_s)
    return answer


def run_h2load(
    target: str,
    method: str,
    message: bytes,
    concurrency: int,
    seconds: float,
    warmup_seconds: float = 1.0,
    streams_per_connection: int = 1,
) -> Measurement:
    """`concurrency` streams (one connection each by default) for `seconds` after the warm-up."""
    expected = len(frame(check_call(target, method, message)))
    connections = max(concurrency // streams_per_connection, 1)
    with TemporaryDirectory(prefix="modelpod-h2load-") as folder:
        body, log = Path(folder) / "body", Path(folder) / "requests.tsv"
        body.write_bytes(frame(message))
        command = ["h2load", "-t1", f"-c{connections}", f"-m{streams_per_connection}"]
        command += [f"-D{max(round(seconds), 1)}", f"--warm-up-time={max(round(warmup_seconds), 0)}"]
        command += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        command += [f"--log-file={log}", f"http://{target}{method}"]
        limit = seconds + warmup_seconds + 30  # h2load stops itself; this only guards against a hang
        output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=limit).stdout
        latencies_ms = _latencies_ms(log)
    return parse(output, expected, latencies_ms)


def _latencies_ms(log: Path) -> np.ndarray:
    """The third column of h2load's request log: microseconds from start to end of response."""
    rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    return np.asarray([int(row[2]) / 1000 for row in rows if len(row) >= 3], dtype=np.float64)


def parse(output: str, expected_bytes: int, latencies_ms: np.ndarray) -> Measurement:
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", output)
    rate = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", output)
    data = re.search(r"\((\d+)\) data", output)
    if not (done and rate and data):
        raise RuntimeError(f"cannot read h2load's output:\n{output}")
    completed, succeeded, failed = (int(n) for n in done.groups())
    answered = int(data.group(1)) / expected_bytes if expected_bytes else 0.0
    # a call that failed brings no data; a few bytes' difference in answers is not a failure
    unanswered = 0 if answered >= 0.98 * succeeded else succeeded - round(answered)
    errors = failed + (completed - succeeded - failed) + unanswered
    if completed == 0 or len(latencies_ms) == 0:
        return Measurement(0.0, None, None, errors)
    p50, p99 = np.percentile(latencies_ms, [50, 99]).tolist()
    throughput = float(rate.group(1)) * (1 - unanswered / completed)
    return Measurement(throughput, p50, p99, errors, requests=completed)
