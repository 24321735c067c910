"""The gRPC edge of a real `modelpod serve` process, spoken with grpcio and our generated stubs.

The native `ModelService.Call` (msgpack keyword arguments), hostile `ModelInfer` messages, the
stream, and concurrent calls. One server serves the whole module.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ROOT, ServerProcess, launch, servable

TENSORS = ROOT / "tests" / "servable_tensors.py"
SECRET = "do-not-leak"
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2,
            "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}  # fmt: skip
CONTENTS = ["bool_contents", "int_contents", "int64_contents", "uint_contents",
            "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (
        servable("Echo"),
        servable("Custom"),
        servable("Bytes"),
        servable("Broken"),
        servable("Doubler"),
        "iris=" + str(ROOT / "examples" / "iris.py:IrisClassifier"),
        f"{TENSORS}:Identity",
        f"{TENSORS}:Mirror",
    )
    process = launch(models, tmp_path_factory.mktemp("grpc-appdata"))
    yield process
    process.stop(timeout=15)


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield channel


@pytest.fixture(scope="module")
def models(channel: grpc.Channel) -> native_pb2_grpc.ModelServiceStub:
    return native_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


def call(stub: Any, model: str, method: str = "predict", version: str = "", **arguments: Any) -> Any:
    request = native_pb2.CallRequest(
        model=model, version=version, method=method, payload=native.pack(arguments)
    )
    return native.unpack(stub.Call(request, timeout=30).payload)


def call_error(stub: Any, request: native_pb2.CallRequest, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Call(request, timeout=30)
    error = caught.value
    assert error.code() == code, error.details()
    return error


def outcome(rpc: Any) -> tuple[grpc.StatusCode, str]:
    """The status an RPC ends with, and its message."""
    try:
        rpc()
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def doubler_request(x: np.ndarray, request_id: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="doubler", id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.astype("<f4").tobytes())
    return request


def doubled(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    assert (output.name, output.datatype) == ("y", "FP32")
    array = np.frombuffer(response.raw_output_contents[0], "<f4")
    return array.reshape(list(output.shape))


def assert_serving(inference: Any) -> None:
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    np.testing.assert_array_equal(doubled(inference.ModelInfer(doubler_request(x), timeout=30)), x * 2)


# --- the native service -------------------------------------------------------------------------


def test_predict_with_keyword_arguments(models: Any) -> None:
    assert call(models, "echo", text="ab", repeat=2) == {"text": "abab", "version": "1", "config": {}}


def test_numpy_arrays_round_trip_exactly(models: Any) -> None:
    arrays = {
        "f64": np.array([[0.1, np.nan], [np.inf, -0.0]]),
        "big_endian": np.arange(6, dtype=">i4").reshape(2, 3),
        "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
        "f16": np.array([1.5, -2.25], dtype=np.float16),
        "flags": np.array([True, False]),
        "empty": np.zeros((0, 4), np.float32),
        "scalar": np.array(7, dtype=np.int8),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4)),
        "text": np.array([["a", "é"], ["", "\u2603"]], dtype=object),
        "blobs": np.array([b"\x00\xff", b""], dtype=object),
        "complex": np.array([1 + 2j, -1j], dtype=np.complex128),
    }
    result = call(models, "mirror", **arrays, plain=[1, "two", None, {"three": 3.0}])
    assert result["plain"] == [1, "two", None, {"three": 3.0}]
    for name, sent in arrays.items():
        received = result[name]
        assert isinstance(received, np.ndarray), name
        assert received.dtype == sent.dtype, name
        assert received.shape == sent.shape, name
        np.testing.assert_array_equal(received, sent, err_msg=name)


def test_binary_data_round_trips(models: Any) -> None:
    data = bytes(range(256)) * 1000
    assert call(models, "bytes", binary_data=data) == data[::-1]


def test_initialize_version_then_predict_train_and_log(models: Any) -> None:
    info = call(models, "echo", "initialize", "3", greeting="hello")
    assert info["version"] == "3"
    assert info["config"] == {"greeting": "hello"}
    answer = call(models, "echo", version="3", text="x")
    assert answer == {"text": "x", "version": "3", "config": {"greeting": "hello"}}
    assert call(models, "echo", text="x")["version"] == "1"  # the default is untouched

    job = call(models, "echo", "train", "3", steps=2)
    assert (job["model"], job["version"], job["arguments"]) == ("echo", "3", {"steps": 2})
    while job["state"] == "running":
        job = call(models, "echo", "training", "3")
    assert job["result"] == {"steps": 2}
    log = call(models, "echo", "log", "3")
    assert [entry["step"] for entry in log] == [1, 2]
    assert log[-1]["metrics"]["loss"] == 0.5
    assert call(models, "echo", "log") == []  # version 1 was never trained


def test_unknown_version_is_not_found(models: Any) -> None:
    request = native_pb2.CallRequest(model="echo", version="7", method="predict",
                                     payload=native.pack({"text": "x"}))  # fmt: skip
    error = call_error(models, request, grpc.StatusCode.NOT_FOUND)
    assert "'7'" in error.details()


def test_models_own_response(models: Any) -> None:
    assert call(models, "custom", n=5) == {"n": 5}  # a 201 with a body: the body
    request = native_pb2.CallRequest(model="custom", method="predict", payload=native.pack({"n": -1}))
    error = call_error(models, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert error.details() == "n must not be negative"


@pytest.mark.parametrize(
    ("request_", "code", "named"),
    [
        (native_pb2.CallRequest(model="nope", method="predict"), "NOT_FOUND", "'nope'"),
        (native_pb2.CallRequest(model="echo", method="explode"), "NOT_FOUND", "'explode'"),
        (native_pb2.CallRequest(model="echo", method=""), "NOT_FOUND", "predict"),
        (native_pb2.CallRequest(model="custom", method="predict"), "INVALID_ARGUMENT", "'n'"),
        (
            native_pb2.CallRequest(model="custom", method="predict", payload=native.pack({"n": 1, "m": 2})),
            "INVALID_ARGUMENT",
            "'m'",
        ),
        (
            native_pb2.CallRequest(model="echo", method="predict", payload=b"\xc1"),
            "INVALID_ARGUMENT",
            "msgpack",
        ),
        (
            native_pb2.CallRequest(model="echo", method="predict", payload=b"\x92\x01"),
            "INVALID_ARGUMENT",
            "msgpack",
        ),
        (
            native_pb2.CallRequest(model="echo", method="predict", payload=native.pack([1, 2])),
            "INVALID_ARGUMENT",
            "keyword arguments",
        ),
        (
            native_pb2.CallRequest(model="echo", method="predict", payload=b"\xc7\x01\x09\x00"),
            "INVALID_ARGUMENT",
            "extension",
        ),
        (
            native_pb2.CallRequest(model="echo", version="../x", method="predict"),
            "INVALID_ARGUMENT",
            "'../x'",
        ),
    ],
    ids=[
        "model",
        "method",
        "no-method",
        "missing",
        "extra",
        "malformed",
        "truncated",
        "not-a-map",
        "unknown-ext",
        "bad-version",
    ],
)
def test_bad_calls(
    models: Any, inference: Any, request_: native_pb2.CallRequest, code: str, named: str
) -> None:
    error = call_error(models, request_, getattr(grpc.StatusCode, code))
    assert named in error.details()
    assert call(models, "echo", text="still here")["text"] == "still here"


def test_model_error_is_internal_with_an_error_id(models: Any, server: ServerProcess) -> None:
    request = native_pb2.CallRequest(model="broken", method="predict", payload=native.pack({"x": 1}))
    error = call_error(models, request, grpc.StatusCode.INTERNAL)
    metadata = dict(error.trailing_metadata() or ())
    assert "error-id" in metadata
    assert metadata["error-id"] in error.details()
    assert SECRET not in error.details()
    assert "Traceback" not in error.details()
    server.wait_for_line(metadata["error-id"], timeout=10)
    assert call(models, "echo", text="x")["text"] == "x"


# --- the Open Inference Protocol service -----------------------------------------------------------


def test_model_infer_error_id_in_trailing_metadata(inference: Any) -> None:
    request = pb.ModelInferRequest(model_name="broken")
    request.inputs.add(name="x", datatype="INT64", shape=[1], contents=pb.InferTensorContents(
        int64_contents=[1]))  # fmt: skip
    with pytest.raises(grpc.RpcError) as caught:
        inference.ModelInfer(request, timeout=30)
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    error_id = dict(error.trailing_metadata() or ())["error-id"]
    assert ERROR_ID.search(error.details()).group(1) == error_id  # type: ignore[union-attr]
    assert SECRET not in error.details()


def test_typed_contents_are_accepted(inference: Any) -> None:
    request = pb.ModelInferRequest(model_name="doubler")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 2],
                       contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))  # fmt: skip
    np.testing.assert_array_equal(doubled(inference.ModelInfer(request, timeout=30)),
                                  [[2, 4], [6, 8]])  # fmt: skip


def test_stream_names_the_failed_request(inference: Any) -> None:
    """Each request gets one response, in order; an error response carries the request's id."""
    x = np.ones((1, 2), np.float32)
    bad = pb.ModelInferRequest(model_name="broken", id="bad")
    bad.inputs.add(name="x", datatype="INT64", shape=[1],
                   contents=pb.InferTensorContents(int64_contents=[0]))  # fmt: skip
    unknown = pb.ModelInferRequest(model_name="nope", id="unknown")
    requests = [doubler_request(x, "one"), bad, unknown, doubler_request(x * 2, "two")]
    responses = list(inference.ModelStreamInfer(iter(requests), timeout=30))
    assert [r.infer_response.id for r in responses] == ["one", "bad", "unknown", "two"]
    assert [bool(r.error_message) for r in responses] == [False, True, True, False]
    assert ERROR_ID.search(responses[1].error_message)
    assert SECRET not in responses[1].error_message
    assert responses[1].infer_response.model_name == "broken"
    assert "'nope'" in responses[2].error_message
    np.testing.assert_array_equal(doubled(responses[3].infer_response), x * 4)


def test_scalar_input_to_keyword_model_is_invalid(inference: Any) -> None:
    """A keyword-argument model takes one row per request: a 0-d tensor has no rows."""
    request = pb.ModelInferRequest(model_name="iris")
    request.inputs.add(name="features", datatype="FP32", shape=[])
    request.raw_input_contents.append(np.float32(1).tobytes())
    code, details = outcome(lambda: inference.ModelInfer(request, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "'features'" in details
    assert_serving(inference)


def test_model_config_in_tritons_shape(inference: Any) -> None:
    config = inference.ModelConfig(pb.ModelConfigRequest(name="doubler"), timeout=30).config
    assert (config.name, config.platform, config.max_batch_size) == ("doubler", "modelpod", 0)
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("x", "TYPE_FP32", [-1, -1])
    ]
    code, details = outcome(lambda: inference.ModelConfig(pb.ModelConfigRequest(name="nope"), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND, details


def test_concurrent_model_infer(inference: Any) -> None:
    inputs = [np.full((4, 8), i, np.float32) + np.arange(8, dtype=np.float32) for i in range(32)]

    def one(x: np.ndarray) -> np.ndarray:
        return doubled(inference.ModelInfer(doubler_request(x), timeout=60))

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, inputs))
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_array_equal(y, x * 2)


# --- hostile ModelInfer messages ---------------------------------------------------------------------

INPUT = {"doubler": "x", "iris": "features"}
wild_dims = st.one_of(st.integers(0, 4), st.sampled_from([-1, 2**31, 2**32 + 1, 2**62]))
names = st.sampled_from(["x", "z", "", "INT32", "BYTES", "FP32", "features", "x"])
wild_datatypes = st.sampled_from([*DATATYPES, "BF16", "FOO", "", "fp32"])


@st.composite
def raw_for(draw: st.DrawFn, datatype: str, shape: list[int], exact: bool) -> bytes:
    """Raw contents: the right size for the shape (always when `exact`), else any bytes."""
    count = int(np.prod(shape)) if all(0 <= d <= 4 for d in shape) else 1
    if datatype == "BYTES" and (exact or draw(st.booleans())):
        items = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        return b"".join(len(item).to_bytes(4, "little") + item for item in items)
    size = count * ITEMSIZE.get(datatype, 4)
    if datatype == "BOOL" and (exact or draw(st.booleans())):
        return bytes(draw(st.lists(st.integers(0, 1), min_size=size, max_size=size)))
    if exact or draw(st.integers(0, 3)):
        return draw(st.binary(min_size=size, max_size=size))
    return draw(st.binary(max_size=40))


def contents_for(draw: st.DrawFn) -> pb.InferTensorContents:
    field = draw(st.sampled_from(CONTENTS))
    count = draw(st.integers(0, 6))
    if field == "bool_contents":
        values: list[Any] = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    elif field == "bytes_contents":
        values = draw(st.lists(st.binary(max_size=5), min_size=count, max_size=count))
    elif field.startswith("fp"):
        values = draw(st.lists(st.floats(width=32), min_size=count, max_size=count))
    elif field.startswith("uint"):
        top = 2**32 - 1 if field == "uint_contents" else 2**64 - 1
        values = draw(st.lists(st.integers(0, top), min_size=count, max_size=count))
    else:
        low = -(2**31) if field == "int_contents" else -(2**63)
        values = draw(st.lists(st.integers(low, -low - 1), min_size=count, max_size=count))
    return pb.InferTensorContents(**{field: values})


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Half well-formed messages whose tensors reach the model (any datatype, shape, values),
    half messages broken in the ways a decoder must survive."""
    wellformed = draw(st.booleans())
    models = ["doubler", "identity", "iris"] if wellformed else ["doubler", "identity", "nope", ""]
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(models)),
        model_version=draw(st.sampled_from(["", "1"] if wellformed else ["", "9", "../x"])),
        id=draw(st.sampled_from(["", "r1"])),
    )
    raw_mode = "raw" if wellformed else draw(st.sampled_from(["raw", "contents", "mixed"]))
    for _ in range(draw(st.integers(1 if wellformed else 0, 3))):
        datatype = draw(st.sampled_from(DATATYPES) if wellformed else wild_datatypes)
        shape = draw(st.lists(st.integers(0, 4) if wellformed else wild_dims, max_size=3))
        name = datatype if request.model_name == "identity" else INPUT.get(request.model_name, "x")
        if not wellformed or request.inputs:
            name = draw(names)
        tensor = request.inputs.add(name=name, datatype=datatype)
        tensor.shape.extend(shape)
        if raw_mode == "contents" or (raw_mode == "mixed" and draw(st.booleans())):
            tensor.contents.CopyFrom(contents_for(draw))
        if raw_mode != "contents":
            request.raw_input_contents.append(draw(raw_for(datatype, shape, wellformed)))
        if wellformed:
            continue
        parameter = draw(st.sampled_from(["", "binary_data_size", "shared_memory_region", "empty"]))
        if parameter == "empty":
            tensor.parameters["other"].CopyFrom(pb.InferParameter())
        elif parameter:
            tensor.parameters[parameter].int64_param = draw(st.integers(-1, 64))
    if not wellformed and draw(st.integers(0, 5)) == 0:
        request.raw_input_contents.append(b"\x00")  # one more raw entry than tensors
    if not wellformed:
        for output in draw(st.lists(st.sampled_from(["y", "nope", "INT32"]), max_size=2)):
            request.outputs.add(name=output)
    return request


@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(message=infer_requests())
def test_hostile_model_infer_is_refused_cleanly(inference: Any, message: pb.ModelInferRequest) -> None:
    """Whatever the message holds, the answer is a result or a client error, never a crash."""
    code, details = outcome(lambda: inference.ModelInfer(message, timeout=30))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (
        code,
        details,
        message,
    )


def test_server_survives_hostile_messages(inference: Any, server: ServerProcess) -> None:
    assert server.process.poll() is None
    assert_serving(inference)
    assert not [line for line in server.lines if "Unexpected" in line]
