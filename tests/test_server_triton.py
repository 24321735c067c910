"""NVIDIA's tritonclient against a real `modelpod serve` process, over HTTP and gRPC.

One server hosts every model these tests need; tests that change its state (unloading a
model, creating a version) put it back or use what nobody else looks at. Each test runs once
per transport where both transports offer the same thing.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import ROOT, ServerProcess, example, launch, servable

TENSORS = ROOT / "tests" / "servable_tensors.py"
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
GRPC_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL", 503: "UNAVAILABLE"}
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")
SECRET = "do-not-leak"
IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], np.float32)
IRIS_LABELS = [b"setosa", b"virginica", b"versicolor"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (
        servable("Echo"),
        servable("Doubler"),
        servable("Broken"),
        servable("Big"),
        f"iris={example('iris.py:IrisClassifier')}",
        f"{TENSORS}:Identity",
        f"{TENSORS}:Unencodable",
    )
    process = launch(models, tmp_path_factory.mktemp("triton-appdata"))
    yield process
    process.stop(timeout=15)


@dataclass
class Triton:
    """One tritonclient flavour: its module, a client, and the few calls that differ."""

    kind: str
    lib: ModuleType
    client: Any

    def input(self, name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
        tensor = self.lib.InferInput(name, list(array.shape), datatype)
        if self.kind == "http":
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        return tensor

    def output(self, name: str, binary: bool = True) -> Any:
        if self.kind == "http":
            return self.lib.InferRequestedOutput(name, binary_data=binary)
        return self.lib.InferRequestedOutput(name)

    def response_id(self, result: Any) -> str:
        response = result.get_response()
        return str(response["id"] if self.kind == "http" else response.id)

    def output_names(self, result: Any) -> list[str]:
        response = result.get_response()
        if self.kind == "http":
            return [output["name"] for output in response["outputs"]]
        return [output.name for output in response.outputs]

    def status_of(self, http_status: int) -> str:
        """How tritonclient reports a status: "404" over HTTP, "StatusCode.NOT_FOUND" over gRPC."""
        if self.kind == "http":
            return str(http_status)
        return f"StatusCode.{GRPC_CODES[http_status]}"


@pytest.fixture(scope="module")
def http_client(server: ServerProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}", network_timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server: ServerProcess) -> Iterator[Any]:
    # tritonclient.grpc allows messages up to 2 GiB each way unless given other channel_args.
    client = grpcclient.InferenceServerClient(server.grpc_address)
    yield client
    client.close()


@pytest.fixture(params=["http", "grpc"])
def triton(request: pytest.FixtureRequest, http_client: Any, grpc_client: Any) -> Triton:
    if request.param == "http":
        return Triton("http", httpclient, http_client)
    return Triton("grpc", grpcclient, grpc_client)


def expect_error(triton: Triton, http_status: int, call: Callable[[], Any]) -> str:
    """Run `call`, which must fail with `http_status` (or its gRPC code); returns the message."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    error = caught.value
    assert error.status() == triton.status_of(http_status), error
    return str(error.message())


def sample(datatype: str, text_only: bool = False) -> np.ndarray:
    """A [2, 3] tensor with the awkward values of its datatype: extremes, NaN, empty strings."""
    if datatype == "BYTES":
        items = ["", "a", "é", "x" * 1000, " ", "\u2603"] if text_only else [
            b"", b"a", b"\xff\x00\xfe", "é".encode(), b"x" * 1000, b"\x00"]  # fmt: skip
        items = [item.encode() if isinstance(item, str) else item for item in items]
        return np.array(items, dtype=np.object_).reshape(2, 3)
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind == "f":
        info = np.finfo(dtype)
        return np.array([[0.0, -1.5, np.inf], [-np.inf, np.nan, info.max]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, 42, info.max - 1]], dtype=dtype)


def assert_same(actual: Any, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(actual, expected)


def doubler_works(triton: Triton) -> None:
    """The server still answers a normal request correctly."""
    x = np.array([[1.0, -2.5], [3.0, 0.0]], np.float32)
    result = triton.client.infer("doubler", [triton.input("x", x, "FP32")])
    assert_same(result.as_numpy("y"), x * 2)


# --- health and metadata -------------------------------------------------------------------------


def test_live_ready_and_server_metadata(triton: Triton) -> None:
    assert triton.client.is_server_live()
    assert triton.client.is_server_ready()
    metadata = triton.client.get_server_metadata()
    if triton.kind == "http":
        name, extensions = metadata["name"], metadata["extensions"]
    else:
        name, extensions = metadata.name, list(metadata.extensions)
    assert name == "modelpod"
    assert {"binary_tensor_data", "model_repository"} <= set(extensions)


def test_model_ready_and_metadata(triton: Triton) -> None:
    assert triton.client.is_model_ready("doubler")
    assert triton.client.is_model_ready("doubler", "1")
    metadata = triton.client.get_model_metadata("doubler")
    if triton.kind == "grpc":
        from google.protobuf.json_format import MessageToDict

        metadata = MessageToDict(metadata, preserving_proto_field_name=True)
        for tensor in [*metadata["inputs"], *metadata["outputs"]]:
            tensor["shape"] = [int(d) for d in tensor["shape"]]  # int64 is a string in proto JSON
    assert metadata["name"] == "doubler"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}]


def test_unknown_model_is_not_found(triton: Triton) -> None:
    message = expect_error(triton, 404, lambda: triton.client.get_model_metadata("nope"))
    assert "'nope'" in message
    x = np.ones((1, 1), np.float32)
    message = expect_error(triton, 404, lambda: triton.client.infer("nope", [triton.input("x", x, "FP32")]))
    assert "'nope'" in message
    doubler_works(triton)


# --- inference -----------------------------------------------------------------------------------


def test_doubler_fp32(triton: Triton) -> None:
    x = np.array([[1.5, -2.0, 0.0], [1e-3, 7.0, -0.25]], np.float32)
    result = triton.client.infer("doubler", [triton.input("x", x, "FP32")])
    assert_same(result.as_numpy("y"), x * 2)


@pytest.mark.parametrize("datatype", DATATYPES)
@pytest.mark.parametrize("encoding", ["grpc", "http-binary", "http-json"])
def test_every_datatype_round_trips(encoding: str, datatype: str, http_client: Any, grpc_client: Any) -> None:
    if encoding == "grpc":
        triton, binary = Triton("grpc", grpcclient, grpc_client), True
    else:
        triton, binary = Triton("http", httpclient, http_client), encoding == "http-binary"
    array = sample(datatype, text_only=not binary)
    result = triton.client.infer(
        "identity",
        [triton.input(datatype, array, datatype, binary=binary)],
        outputs=[triton.output(datatype, binary=binary)],
    )
    received = result.as_numpy(datatype)
    if datatype == "BYTES" and not binary:  # tritonclient reads JSON BYTES as str
        received = np.vectorize(str.encode, otypes=[np.object_])(received)
    assert_same(received, array)
    if triton.kind == "http":
        output = result.get_output(datatype)
        assert output["datatype"] == datatype
        assert ("binary_data_size" in output.get("parameters", {})) == binary
        assert ("data" in output) != binary


def test_empty_tensor_round_trips(triton: Triton) -> None:
    array = np.zeros((0, 3), np.int32)
    result = triton.client.infer("identity", [triton.input("INT32", array, "INT32")])
    if triton.kind == "http":  # tritonclient.http reads an empty binary tensor as float64
        assert result.get_output("INT32")["datatype"] == "INT32"
        assert result.as_numpy("INT32").shape == (0, 3)
    else:
        assert_same(result.as_numpy("INT32"), array)


def test_request_id_is_echoed(triton: Triton) -> None:
    x = np.ones((1, 2), np.float32)
    result = triton.client.infer("doubler", [triton.input("x", x, "FP32")], request_id="req-42")
    assert triton.response_id(result) == "req-42"


def test_only_the_requested_output_comes_back(triton: Triton) -> None:
    a, b = sample("INT32"), sample("FP64")
    inputs = [triton.input("INT32", a, "INT32"), triton.input("FP64", b, "FP64")]
    everything = triton.client.infer("identity", inputs)
    assert sorted(triton.output_names(everything)) == ["FP64", "INT32"]
    result = triton.client.infer("identity", inputs, outputs=[triton.output("FP64")])
    assert triton.output_names(result) == ["FP64"]
    assert_same(result.as_numpy("FP64"), b)
    assert result.as_numpy("INT32") is None


def test_unknown_output_is_named(triton: Triton) -> None:
    x = np.ones((1, 2), np.float32)
    message = expect_error(
        triton,
        400,
        lambda: triton.client.infer(
            "doubler", [triton.input("x", x, "FP32")], outputs=[triton.output("nope")]
        ),
    )
    assert "'nope'" in message
    doubler_works(triton)


def test_iris_features_to_labels(triton: Triton) -> None:
    """A keyword-argument model: each row of `features` is one request, each gets a label."""
    features = triton.input("features", IRIS_ROWS, "FP32")
    result = triton.client.infer("iris", [features], outputs=[triton.output("label")])
    assert triton.output_names(result) == ["label"]
    labels = result.as_numpy("label")
    assert labels.shape == (3,)
    assert labels.tolist() == IRIS_LABELS


def test_iris_metadata_names_the_outputs_it_produces(triton: Triton) -> None:
    """A client that builds its requested outputs from the metadata must get them."""
    metadata = triton.client.get_model_metadata("iris")
    outputs = metadata["outputs"] if triton.kind == "http" else metadata.outputs
    names = [o["name"] if triton.kind == "http" else o.name for o in outputs]
    features = triton.input("features", IRIS_ROWS, "FP32")
    result = triton.client.infer("iris", [features], outputs=[triton.output(n) for n in names])
    assert triton.output_names(result) == names
    assert "label" in names


# --- input errors --------------------------------------------------------------------------------


def test_wrong_input_name_is_named(triton: Triton) -> None:
    x = np.ones((1, 2), np.float32)
    message = expect_error(
        triton, 400, lambda: triton.client.infer("doubler", [triton.input("z", x, "FP32")])
    )
    assert "'z'" in message
    doubler_works(triton)


@pytest.mark.parametrize("datatype", ["INT32", "FP64", "BYTES"])
def test_wrong_datatype_is_refused(triton: Triton, datatype: str) -> None:
    """Doubler declares FP32; Triton refuses any other datatype for the input, and so must we."""
    x = sample(datatype)
    message = expect_error(
        triton, 400, lambda: triton.client.infer("doubler", [triton.input("x", x, datatype)])
    )
    assert "'x'" in message
    assert "FP32" in message
    doubler_works(triton)


def test_wrong_shape_is_refused(triton: Triton) -> None:
    x = np.ones(4, np.float32)
    message = expect_error(
        triton, 400, lambda: triton.client.infer("doubler", [triton.input("x", x, "FP32")])
    )
    assert "'x'" in message
    assert "[4]" in message
    doubler_works(triton)


def test_model_error_has_an_id_and_no_secret(triton: Triton, server: ServerProcess) -> None:
    x = np.zeros(1, np.int64)
    message = expect_error(
        triton, 500, lambda: triton.client.infer("broken", [triton.input("x", x, "INT64")])
    )
    assert SECRET not in message
    assert "Traceback" not in message
    match = ERROR_ID.search(message)
    assert match is not None, message
    server.wait_for_line(match.group(1), timeout=10)  # the same id is in the server log
    doubler_works(triton)


def test_unencodable_output_is_an_internal_error(triton: Triton, server: ServerProcess) -> None:
    x = np.ones((1, 1), np.float32)
    message = expect_error(
        triton, 500, lambda: triton.client.infer("unencodable", [triton.input("x", x, "FP32")])
    )
    match = ERROR_ID.search(message)
    assert match is not None, message
    server.wait_for_line(match.group(1), timeout=10)
    doubler_works(triton)


# --- versions and the repository extension -------------------------------------------------------


@pytest.fixture(scope="module")
def echo_version_2(server: ServerProcess) -> str:
    """Version 2 of echo, created with the native HTTP route."""
    response = httpx.post(f"{server.http_url}/models/echo/versions/2/initialize", json={"tag": "two"})
    assert response.status_code == 200, response.text
    return "2"


def test_version_created_natively_serves_over_v2(triton: Triton, echo_version_2: str) -> None:
    text = np.array([b"hi"], dtype=np.object_)
    result = triton.client.infer("echo", [triton.input("text", text, "BYTES")], model_version=echo_version_2)
    assert result.as_numpy("version").tolist() == [b"2"]
    assert result.as_numpy("text").tolist() == [b"hi"]
    response = result.get_response()
    version = response["model_version"] if triton.kind == "http" else response.model_version
    assert version == "2"
    default = triton.client.infer("echo", [triton.input("text", text, "BYTES")])
    assert default.as_numpy("version").tolist() == [b"1"]

    metadata = triton.client.get_model_metadata("echo", "2")
    versions = metadata["versions"] if triton.kind == "http" else list(metadata.versions)
    assert versions == ["2"]
    everything = triton.client.get_model_metadata("echo")
    versions = everything["versions"] if triton.kind == "http" else list(everything.versions)
    assert versions == ["1", "2"]
    assert triton.client.is_model_ready("echo", "2")


def test_unknown_version_is_not_found(triton: Triton) -> None:
    text = np.array([b"hi"], dtype=np.object_)
    message = expect_error(
        triton,
        404,
        lambda: triton.client.infer("echo", [triton.input("text", text, "BYTES")], model_version="9"),
    )
    assert "'9'" in message
    message = expect_error(triton, 404, lambda: triton.client.get_model_metadata("echo", "9"))
    assert "'9'" in message
    doubler_works(triton)


def repository_index(triton: Triton) -> dict[tuple[str, str], str]:
    index = triton.client.get_model_repository_index()
    if triton.kind == "http":
        return {(m["name"], m["version"]): m["state"] for m in index}
    return {(m.name, m.version): m.state for m in index.models}


def test_unload_and_load(triton: Triton) -> None:
    text = np.array([b"hi"], dtype=np.object_)
    index = repository_index(triton)
    assert index[("echo", "1")] == "READY"
    assert index[("doubler", "1")] == "READY"
    triton.client.unload_model("echo")
    try:
        assert not triton.client.is_model_ready("echo")
        assert repository_index(triton)[("echo", "1")] == "UNAVAILABLE"
        message = expect_error(
            triton, 503, lambda: triton.client.infer("echo", [triton.input("text", text, "BYTES")])
        )
        assert "'echo'" in message
        assert "unloaded" in message
        doubler_works(triton)  # the other models are untouched
    finally:
        triton.client.load_model("echo")
    assert triton.client.is_model_ready("echo")
    assert repository_index(triton)[("echo", "1")] == "READY"
    result = triton.client.infer("echo", [triton.input("text", text, "BYTES")])
    assert result.as_numpy("text").tolist() == [b"hi"]


def test_load_unknown_model_is_not_found(triton: Triton) -> None:
    message = expect_error(triton, 404, lambda: triton.client.load_model("nope"))
    assert "'nope'" in message


# --- streaming -----------------------------------------------------------------------------------


def test_stream_answers_each_request(grpc_client: Any) -> None:
    """Each request on the stream gets its answer, in order; a failing one fails alone."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    triton = Triton("grpc", grpcclient, grpc_client)
    x = np.array([[1.0, 2.0]], np.float32)
    requests: list[tuple[str, list[Any]]] = [
        ("doubler", [triton.input("x", x, "FP32")]),
        ("broken", [triton.input("x", np.zeros(1, np.int64), "INT64")]),
        ("doubler", [triton.input("x", x * 3, "FP32")]),
        ("doubler", [triton.input("x", np.ones(3, np.float32), "FP32")]),  # wrong shape
        ("unencodable", [triton.input("x", x, "FP32")]),
        ("nope", [triton.input("x", x, "FP32")]),
        ("doubler", [triton.input("x", x * 5, "FP32")]),
    ]
    grpc_client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index, (model, inputs) in enumerate(requests):
            grpc_client.async_stream_infer(model, inputs, request_id=f"r{index}")
        received = [answers.get(timeout=30) for _ in requests]
    finally:
        grpc_client.stop_stream()
    results = [result for result, _ in received]
    errors = [error for _, error in received]
    for index in (0, 2, 6):
        assert errors[index] is None, errors[index]
        assert results[index].get_response().id == f"r{index}"
    assert_same(results[0].as_numpy("y"), x * 2)
    assert_same(results[2].as_numpy("y"), x * 6)
    assert_same(results[6].as_numpy("y"), x * 10)
    for index in (1, 3, 4, 5):
        assert results[index] is None
        assert isinstance(errors[index], InferenceServerException)
    assert ERROR_ID.search(str(errors[1].message()))
    assert SECRET not in str(errors[1].message())
    assert "'x'" in str(errors[3].message())
    assert ERROR_ID.search(str(errors[4].message()))
    assert "'nope'" in str(errors[5].message())
    doubler_works(triton)


# --- large tensors -------------------------------------------------------------------------------

BIG = 256 * 2**20


def big_array() -> np.ndarray:
    """256 MiB whose bytes repeat with a prime period, so a shifted or truncated copy differs."""
    return np.resize(np.arange(251, dtype=np.uint8), BIG)


def check_big(result: Any, sent: np.ndarray) -> None:
    received = result.as_numpy("y")
    assert received.shape == sent.shape
    assert received.dtype == np.uint8
    assert np.array_equal(received, sent)


def test_large_tensor_over_grpc(grpc_client: Any) -> None:
    triton = Triton("grpc", grpcclient, grpc_client)
    sent = big_array()
    result = grpc_client.infer("big", [triton.input("x", sent, "UINT8")])
    check_big(result, sent)


def test_large_tensor_over_http_binary(http_client: Any) -> None:
    triton = Triton("http", httpclient, http_client)
    sent = big_array()
    result = http_client.infer(
        "big", [triton.input("x", sent, "UINT8")], outputs=[triton.output("y", binary=True)]
    )
    check_big(result, sent)


def test_server_still_serves_after_everything(triton: Triton, server: ServerProcess) -> None:
    assert server.process.poll() is None
    assert triton.client.is_server_ready()
    doubler_works(triton)
