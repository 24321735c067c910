"""Every request body the suite sends, built once: the same 256-float vector on every path.

HTTP bodies go to `wrk` as they are; gRPC messages are serialized protobufs that `h2load` sends
framed (`h2load_grpc.frame`). The V2 messages are the Open Inference Protocol's, which modelpod,
MLServer and Triton all speak, so one body serves every server on a path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from inprocess import SENTENCE
from mlp_numpy import sample_row

from modelpod.protocol import native, v2
from modelpod.protocol._generated import native_pb2

ROW = sample_row()
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class HttpBody:
    body: bytes
    headers: dict[str, str]


def native_json(workload: str) -> HttpBody:
    """The body of modelpod's native route and of FastAPI's and LitServe's routes."""
    if workload in ("MLP", "Echo"):
        return HttpBody(json.dumps({"x": [ROW]}).encode(), JSON)
    if workload == "MiniLM":
        return HttpBody(json.dumps({"text": SENTENCE}).encode(), JSON)
    raise ValueError(f"no native body for {workload!r}")


def v2_json() -> HttpBody:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, len(ROW)], "data": ROW}
    return HttpBody(json.dumps({"inputs": [tensor]}).encode(), JSON)


def v2_binary() -> HttpBody:
    """The binary tensor extension both ways: `x` as raw bytes, `y` asked for as raw bytes."""
    row = np.asarray([ROW], dtype=np.float32)
    request = v2.InferRequest(inputs={"x": row}, outputs=[v2.RequestedOutput("y", binary_data=True)])
    body, length = v2.encode_http_request(request)
    headers = {"Content-Type": "application/octet-stream", v2.HEADER_LENGTH: str(length)}
    return HttpBody(body, headers)


def grpc_native(model: str) -> bytes:
    """modelpod's `ModelService/Call` with the arguments in msgpack."""
    payload = native.pack({"x": np.asarray([ROW], dtype=np.float32)})
    return native_pb2.CallRequest(model=model, method="predict", payload=payload).SerializeToString()


def grpc_v2(model: str = "mlp") -> bytes:
    """`ModelInfer` with the tensor in `raw_input_contents`, as Triton's and modelpod's clients send it."""
    row = np.asarray([ROW], dtype=np.float32)
    message: bytes = v2.encode_grpc_request(v2.InferRequest(inputs={"x": row}), model).SerializeToString()
    return message
