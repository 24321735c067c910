"""Hostile input against a real server: every malformed request gets a 4xx (gRPC INVALID_ARGUMENT or
NOT_FOUND) that says what is wrong, the server keeps serving, and no request reaches outside the
data path; artifacts from a store are loaded only when they are what was recorded, and pickled
code only with consent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelpod import Model, Store
from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ROOT, ServerProcess, StartServer, launch

FAULTS = ROOT / "tests" / "servable_faults.py"
HEADER_LENGTH = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (f"{FAULTS}:Careful", f"{FAULTS}:Affine")
    process = launch(models, tmp_path_factory.mktemp("hostile") / "appdata")
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


def tensor(name: str, datatype: str, shape: list[Any], data: Any = None, **parameters: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        entry["data"] = data
    if parameters:
        entry["parameters"] = parameters
    return entry


def infer_body(*tensors: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


A = tensor("a", "FP32", [1, 3], [1, 2, 3])
B = tensor("b", "FP32", [1, 2], [0, 0])


def assert_serving(http: httpx.Client) -> None:
    answer = http.post("/v2/models/affine/infer", content=infer_body(A, B)).json()
    assert answer["outputs"][0]["data"] == [16.0, 22.0]
    assert http.post("/models/careful/predict", json={"text": "ok", "times": 2}).json()["text"] == "okok"


# -- the Open Inference Protocol over HTTP ----------------------------------------------------------

BINARY_A = np.arange(3, dtype="<f4").reshape(1, 3).tobytes()
BINARY_HEADER = json.dumps({"inputs": [tensor("a", "FP32", [1, 3], binary_data_size=12), B]}).encode()
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"\xff\xfe\x00{}", {}, "not valid JSON"),
        (b'{"inputs": ' + DEEP + b"}", {}, "not valid JSON"),
        (infer_body(tensor("a", "FP32", [1, 1], [[[[[[[1]]]]]]])), {}, "expected [-1, 3]"),
        (
            infer_body(tensor("a", "FP32", [1, 3], [float("nan"), 0, 0]), B).replace(
                b"NaN", b"[" * 5000 + b"NaN"
            ),
            {},
            "not valid JSON",
        ),
        (infer_body(tensor("a", "FP32", [2**32, 2**32], [1]), B), {}, "larger than 4294967296 elements"),
        (infer_body(tensor("a", "FP32", [2**62, 2**62, 2**62], [1]), B), {}, "larger than"),
        (infer_body(tensor("a", "FP32", [-1, 3], [1, 2, 3]), B), {}, "negative dimension"),
        (infer_body(tensor("a", "FP32", [1.5, 3], [1, 2, 3]), B), {}, "non-integer dimension"),
        (
            infer_body(tensor("a", "INT32", [1, 3], [1, 2, 3]), B).replace(b"1, 2, 3", b"NaN, 2, 3"),
            {},
            "INT32 data cannot hold a JSON number",
        ),
        (
            infer_body(tensor("a", "INT64", [1, 3], [1, 2, 3]), B).replace(b"1, 2, 3", b"Infinity, 2, 3"),
            {},
            "INT64 data cannot hold a JSON number",
        ),
        (infer_body(tensor("a", "FP32", [1, 3], ["NaN", "nan", 0]), B), {}, "the only strings allowed"),
        (infer_body(tensor("a", "UINT8", [1, 3], [1, 2, 300]), B), {}, "out of range for UINT8"),
        (infer_body(tensor("a", "FP32", [1, 3], [1, 2]), B), {}, "2 values in 'data' for shape [1, 3]"),
        (infer_body(A, A, B), {}, "appears more than once"),
        (infer_body(A, B, parameters={"priority": float("inf")}), {}, "priority must be an integer"),
        (infer_body(A, B, parameters={"timeout": float("nan")}), {}, "timeout must be a non-negative number"),
        (infer_body(A, B, parameters={"timeout": -5}), {}, "timeout must be a non-negative number"),
        (infer_body(A, B), {HEADER_LENGTH: "99999"}, "but the body has"),
        (infer_body(A, B), {HEADER_LENGTH: "-3"}, "must be a non-negative integer"),
        (infer_body(A, B), {HEADER_LENGTH: "ten"}, "must be a non-negative integer"),
        (
            BINARY_HEADER + BINARY_A[:8],
            {HEADER_LENGTH: str(len(BINARY_HEADER))},
            "binary_data_size is 12 but only 8 bytes",
        ),
        (
            BINARY_HEADER + BINARY_A + b"extra",
            {HEADER_LENGTH: str(len(BINARY_HEADER))},
            "5 bytes of binary data follow the JSON but no tensor claims them",
        ),
        (BINARY_HEADER + BINARY_A, {HEADER_LENGTH: str(len(BINARY_HEADER) - 3)}, "not valid JSON"),
        (infer_body(tensor("a", "FP32", [1, 3], binary_data_size=-12), B), {}, "binary_data_size must be"),
        (infer_body(tensor("a", "FP32", [1, 3], binary_data_size=2**70), B), {}, "binary_data_size"),
        (
            infer_body(tensor("a", "BYTES", [1], binary_data_size=4)) + b"\xff\xff\xff\x7f",
            {HEADER_LENGTH: str(len(infer_body(tensor("a", "BYTES", [1], binary_data_size=4))))},
            "claims 2147483647 bytes but 0 remain",
        ),
        (
            infer_body(tensor("a", "BOOL", [1], binary_data_size=1)) + b"\x07",
            {HEADER_LENGTH: str(len(infer_body(tensor("a", "BOOL", [1], binary_data_size=1))))},
            "BOOL data must be bytes of 0 or 1",
        ),
        (
            infer_body(tensor("a", "FP32", [1, 3], [1, 2, 3], shared_memory_region="x"), B),
            {},
            "shared memory is not supported",
        ),
        (infer_body(tensor("a", "FP64", [1, 3], [1, 2, 3]), B), {}, "is FP64, but the model declares FP32"),
        (infer_body(tensor("a", "FP32", [1, 4], [1, 2, 3, 4]), B), {}, "expected [-1, 3]"),
        (infer_body(A, tensor("b", "FP32", [3, 2], [0] * 6)), {}, "a has 1 rows but b has 3"),
        (b'{"inputs": {"a": 1}}', {}, "'inputs' must be a list"),
        (b'{"inputs": [], "outputs": [{"name": "y"}, {"name": "y"}]}', {}, "appears more than once"),
        (b"[]", {}, "must be a JSON object"),
    ],
)
def test_malformed_inference_requests_get_400_with_a_message(
    http: httpx.Client, body: bytes, headers: dict[str, str], message: str
) -> None:
    response = http.post("/v2/models/affine/infer", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert_serving(http)


# -- the model's own methods over HTTP ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"\xff\xfe{}", "application/json", "not valid JSON"),
        (b'{"text": ' + DEEP + b"}", "application/json", "not valid JSON"),
        (b'{"text": NaN}', "application/json", "not valid JSON"),
        (b'{"text": "a", "times": Infinity}', "application/json", "not valid JSON"),
        (b'{"text": "a", "times": 1e400}', "application/json", "not valid JSON"),
        (b'{"text": "\\ud800"}', "application/json", "not valid JSON"),
        (b"\x81\x01\xa1a", "application/msgpack", "named by strings"),
        (b"\x81\xc0\xc0", "application/msgpack", "named by strings"),
        (b"\x91" * 100_000 + b"\xc0", "application/msgpack", "nested too deeply"),
        (b"\xc1", "application/msgpack", "a byte that starts no msgpack value"),
        (b"\xdd\xff\xff\xff\xff", "application/msgpack", "malformed msgpack payload"),
        (b"\x81\xa4text\xc7\x05\x63hello", "application/msgpack", "unknown msgpack extension type 99"),
        (b'{"text": 5}', "application/json", "text must be a string"),
        (b'{"text": "a", "times": 1000000000000}', "application/json", "times must be an integer"),
        (b'{"colour": "red"}', "application/json", "unexpected keyword argument 'colour'"),
    ],
)
def test_malformed_method_calls_get_400_with_a_message(
    http: httpx.Client, body: bytes, content_type: str, message: str
) -> None:
    response = http.post("/models/careful/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert_serving(http)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"x-priority": "inf"}, "priority must be an integer"),
        ({"x-priority": "1e999"}, "priority must be an integer"),
        ({"request-timeout": "nan"}, "timeout must be a non-negative number"),
        ({"request-timeout": "-1"}, "timeout must be a non-negative number"),
        ({"request-timeout": "soon"}, "timeout a number"),
    ],
)
def test_malformed_request_headers_get_400(http: httpx.Client, headers: dict[str, str], message: str) -> None:
    response = http.post("/models/careful/predict", json={"text": "a"}, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


# -- no request reaches outside the data path ----------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/models/careful/versions/..%2F..%2Fescaped/initialize",
        "/models/careful/versions/%2Ftmp%2Fescaped/initialize",
        "/models/careful/versions/../../escaped/initialize",
        "/models/careful/versions/..%5Cescaped/initialize",
        "/models/careful/versions/.hidden/initialize",
        "/models/..%2F..%2Fescaped/initialize",
        "/models/%2Ftmp%2Fescaped/versions/1/initialize",
        "/v2/models/careful/versions/..%2F..%2Fescaped/ready",
        "/v2/repository/models/..%2Fescaped/load",
    ],
)
def test_names_and_versions_from_requests_never_escape_the_data_path(
    http: httpx.Client, server: ServerProcess, path: str
) -> None:
    response = http.request("GET" if path.endswith("/ready") else "POST", path, json={"x": 1})
    assert response.status_code in (400, 404), response.text
    assert "error" in response.json()
    root = server.data_path.parent
    assert not (root / "escaped").exists()
    assert not Path("/tmp/escaped").exists()
    assert {p.name for p in root.iterdir()} <= {"appdata"}


def test_a_version_that_links_out_of_the_data_path_is_refused(
    http: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model_info.json").write_text(json.dumps({"config": {"secret": "outside"}}))
    (server.data_path / "careful").mkdir(parents=True, exist_ok=True)
    (server.data_path / "careful" / "linked").symlink_to(outside, target_is_directory=True)
    for method in ("predict", "initialize", "log"):
        response = http.post(f"/models/careful/versions/linked/{method}", json={"text": "a"})
        assert response.status_code == 400, (method, response.text)
        assert "is a link out of the model's folder" in response.json()["error"]
    assert http.get("/v2/models/careful/versions/linked/ready").status_code == 400
    assert json.loads((outside / "model_info.json").read_text()) == {"config": {"secret": "outside"}}
    assert sorted(p.name for p in outside.iterdir()) == ["model_info.json"]
    assert_serving(http)


# -- gRPC ---------------------------------------------------------------------------------------------


def grpc_outcome(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def affine_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="affine")
    for name, columns in (("a", 3), ("b", 2)):
        request.inputs.add(name=name, datatype="FP32", shape=[1, columns])
        request.raw_input_contents.append(np.ones((1, columns), "<f4").tobytes())
    return request


def broken(change: str) -> pb.ModelInferRequest:
    request = affine_request()
    if change == "huge shape":
        request.inputs[0].shape[:] = [2**40, 2**40]
    elif change == "negative dimension":
        request.inputs[0].shape[:] = [-1, 3]
    elif change == "short raw contents":
        request.raw_input_contents[0] = b"\x00" * 5
    elif change == "raw and typed contents":
        request.inputs[0].contents.fp32_contents.extend([1, 2, 3])
    elif change == "extra raw contents":
        request.raw_input_contents.append(b"\x00")
    elif change == "infinite priority":
        request.parameters["priority"].double_param = float("inf")
    elif change == "priority in words":
        request.parameters["priority"].string_param = "urgent"
    elif change == "empty parameter":
        request.parameters["priority"].CopyFrom(pb.InferParameter())
    return request


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("huge shape", "larger than 4294967296 elements"),
        ("negative dimension", "negative dimension"),
        ("short raw contents", "5 bytes of data for FP32 shape [1, 3], expected 12"),
        ("raw and typed contents", "both in raw contents and in 'contents'"),
        ("extra raw contents", "raw_input_contents has 3 entries for 2 tensors"),
        ("infinite priority", "priority must be an integer"),
        ("priority in words", "priority must be an integer"),
        ("empty parameter", "has no value"),
    ],
)
def test_malformed_grpc_inference_is_invalid_argument(
    channel: grpc.Channel, change: str, message: str
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    code, details = grpc_outcome(lambda: stub.ModelInfer(broken(change), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert message in details
    assert len(stub.ModelInfer(affine_request(), timeout=30).outputs) == 1


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/modelpod.native.ModelService/Call",
    ],
)
def test_bytes_that_are_not_the_message_are_invalid_argument(channel: grpc.Channel, method: str) -> None:
    raw = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
    for garbage in (b"\xff\xff\xff", b"\x12\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", b"\x0a\x10short"):
        code, details = grpc_outcome(lambda garbage=garbage: raw(garbage, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "message cannot be parsed" in details


def test_a_stream_answers_a_message_that_does_not_parse_and_goes_on(channel: grpc.Channel) -> None:
    stream = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=bytes,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    messages = [b"\xff\xff\xff", affine_request().SerializeToString()]
    first, second = list(stream(iter(messages), timeout=30))
    assert "the ModelInferRequest message cannot be parsed" in first.error_message
    assert not second.error_message
    assert second.infer_response.model_name == "affine"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x81\x01\xa1a", "named by strings"),
        (b"\x92\x01\x02", "must be an object of keyword arguments"),
        (b"\x91" * 100_000 + b"\xc0", "nested too deeply"),
        (b"\xc1", "a byte that starts no msgpack value"),
        (native.pack({"text": "a", "times": 10**12}), "times must be an integer"),
    ],
)
def test_malformed_native_calls_are_invalid_argument(
    channel: grpc.Channel, payload: bytes, message: str
) -> None:
    stub = native_pb2_grpc.ModelServiceStub(channel)
    request = native_pb2.CallRequest(model="careful", method="predict", payload=payload)
    code, details = grpc_outcome(lambda: stub.Call(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert message in details


# -- artifacts from a store --------------------------------------------------------------------------


def serve_store(store: Store, identifier: str) -> subprocess.CompletedProcess[str]:
    """Try to serve `identifier` from the store, for a server that must refuse to: what it said."""
    served = store.data_path / "served"
    command = [sys.executable, "-m", "modelpod", "serve", "--store", store.url, "--model", identifier,
               "--http-port", "0", "--grpc-port", "0", "--data-path", str(served)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def test_a_pickled_model_is_served_only_with_allow_pickle(start_server: StartServer, tmp_path: Path) -> None:
    class Local(Model):  # defined in a function: no import path leads to it, so it is kept pickled
        def predict(self, x: int) -> int:
            return x + 1

    store = Store(data_path=tmp_path)
    assert store.apply(Local(name="local", data_path=tmp_path / "work")).pickled
    refused = serve_store(store, "local")
    assert refused.returncode != 0
    assert "holds a pickled class" in refused.stderr
    assert "--allow-pickle" in refused.stderr
    args = ("--store", store.url, "--model", "local", "--allow-pickle")
    served = start_server(args=args, data_path=tmp_path / "served")
    assert httpx.post(f"{served.http_url}/models/local/predict", json={"x": 1}, timeout=30).json() == 2


def test_a_tampered_artifact_is_refused_by_the_server(tmp_path: Path) -> None:
    from servable_faults import Careful

    store = Store(data_path=tmp_path)
    model = Careful(name="careful", data_path=tmp_path / "work")
    (model.model_dir / "weights.bin").write_bytes(b"\x00" * 64)
    store.apply(model)
    (store.artifact_path / "careful" / "1" / "weights.bin").write_bytes(b"\x01" * 64)
    refused = serve_store(store, "careful")
    assert refused.returncode != 0
    assert "checksum mismatch" in refused.stderr
    assert not (tmp_path / "served" / "careful" / "1" / "weights.bin").exists()
