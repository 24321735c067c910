"""Wire compatibility with NVIDIA's tritonclient, over both HTTP bodies and gRPC messages.

tritonclient builds requests and reads responses here exactly as it does against a server;
only the transport is left out.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tritonclient.grpc import service_pb2 as triton_pb

from modelpod.protocol import v2
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
PARTIAL = {"ModelConfig", "ModelInput", "ModelOutput"}  # a declared subset of Triton's fields


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], dtype=object)
    if datatype == "BOOL":
        return np.array([[True, False], [False, True]])
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    return np.array([[0, 1], [2, 3]], dtype=dtype)


def text_sample() -> np.ndarray:
    """BYTES that JSON can carry (tritonclient refuses non-UTF-8 in JSON)."""
    return np.array([["a", "b"], ["", "é"]], dtype=object)


def as_bytes(array: np.ndarray) -> np.ndarray:
    if array.dtype != object:
        return array
    result: np.ndarray = np.vectorize(lambda s: s if isinstance(s, bytes) else s.encode(), otypes=[object])(
        array
    )
    return result


def assert_same(actual: Any, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    np.testing.assert_array_equal(as_bytes(actual), as_bytes(expected))


# --- the .proto matches Triton's ----------------------------------------------------------------


def field_facts(field: FieldDescriptor) -> tuple[Any, ...]:
    kind = field.message_type or field.enum_type
    return (field.number, field.type, field.is_repeated, kind.full_name if kind else None,
            field.containing_oneof.name if field.containing_oneof else None)  # fmt: skip


def compare_message(ours: Descriptor, theirs: Descriptor) -> None:
    assert ours.full_name == theirs.full_name
    their_fields = {f.name: f for f in theirs.fields}
    for field in ours.fields:
        assert field.name in their_fields, f"{ours.full_name}.{field.name} is not Triton's"
        assert field_facts(field) == field_facts(their_fields[field.name]), field.full_name
    if ours.name not in PARTIAL:
        assert {f.name for f in ours.fields} == set(their_fields), ours.full_name
    for nested in ours.nested_types:
        compare_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in ours.enum_types:
        their_values = {v.name: v.number for v in theirs.enum_types_by_name[enum.name].values}
        assert {v.name: v.number for v in enum.values} == their_values


def triton_descriptor(name: str) -> Any:
    return triton_pb.DESCRIPTOR.pool.FindMessageTypeByName(f"inference.{name}")


@pytest.mark.parametrize("name", sorted(pb.DESCRIPTOR.message_types_by_name))
def test_every_message_matches_triton(name: str) -> None:
    compare_message(pb.DESCRIPTOR.message_types_by_name[name], triton_descriptor(name))


def test_data_type_enum_matches_triton() -> None:
    theirs = triton_pb.DESCRIPTOR.pool.FindEnumTypeByName("inference.DataType")
    ours = pb.DESCRIPTOR.enum_types_by_name["DataType"]
    assert {v.name: v.number for v in ours.values} == {v.name: v.number for v in theirs.values}


def test_every_method_matches_triton() -> None:
    ours = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    expected = {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
                "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"}  # fmt: skip
    assert {m.name for m in ours.methods} == expected
    for method in ours.methods:
        theirs_method = theirs.methods_by_name[method.name]
        assert method.input_type.full_name == theirs_method.input_type.full_name
        assert method.output_type.full_name == theirs_method.output_type.full_name
        assert method.client_streaming == theirs_method.client_streaming
        assert method.server_streaming == theirs_method.server_streaming


def test_grpc_stubs_use_triton_method_paths() -> None:
    handler = pb_grpc.add_GRPCInferenceServiceServicer_to_server
    assert handler.__module__ == "modelpod.protocol._generated.grpc_service_pb2_grpc"
    source = open(pb_grpc.__file__).read()  # noqa: SIM115
    assert "'/inference.GRPCInferenceService/ModelInfer'" in source
    assert "'/inference.GRPCInferenceService/ModelStreamInfer'" in source


def test_native_service_shape() -> None:
    service = native_pb2.DESCRIPTOR.services_by_name["ModelService"]
    assert service.full_name == "modelpod.native.ModelService"
    assert not service.methods_by_name["Call"].server_streaming
    assert service.methods_by_name["CallStream"].server_streaming
    request = native_pb2.CallRequest(model="m", version="2", method="predict", payload=b"\x80")
    request.query_params["a"] = "b"
    assert native_pb2.CallRequest.FromString(request.SerializeToString()) == request
    assert [f.number for f in native_pb2.CallRequest.DESCRIPTOR.fields] == [1, 2, 3, 4, 5]
    assert hasattr(native_pb2_grpc, "ModelServiceStub")


IMPORTS = {
    "triton first": "import tritonclient.grpc\nfrom modelpod.protocol import v2\n",
    "ours first": "from modelpod.protocol import v2\nimport tritonclient.grpc\n",
}
CHECK = (
    "from tritonclient.grpc import service_pb2 as t\n"
    "from modelpod.protocol._generated import grpc_service_pb2 as o\n"
    "m = t.ModelInferRequest.FromString(o.ModelInferRequest(model_name='m').SerializeToString())\n"
    "assert m.model_name == 'm'\n"
)


@pytest.mark.parametrize("order", list(IMPORTS))
def test_both_protos_import_in_one_process(order: str) -> None:
    """Both define `inference.*`; ours lives in a private descriptor pool so they don't clash."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", IMPORTS[order] + CHECK],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_our_descriptors_are_not_in_the_default_pool() -> None:
    assert pb.DESCRIPTOR.pool is not triton_pb.DESCRIPTOR.pool


# --- gRPC messages ------------------------------------------------------------------------------


def triton_grpc_request(arrays: dict[str, np.ndarray]) -> Any:
    from tritonclient.grpc._utils import _get_inference_request

    inputs = []
    for name, array in arrays.items():
        item = grpcclient.InferInput(name, list(array.shape), datatype_of(array))
        inputs.append(item.set_data_from_numpy(array))
    outputs = [grpcclient.InferRequestedOutput("y")]
    return _get_inference_request(
        model_name="m", inputs=inputs, model_version="1", request_id="r1", outputs=outputs,
        sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
        parameters={"custom": "yes"},
    )  # fmt: skip


def datatype_of(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else httpclient.np_to_triton_dtype(array.dtype)


@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_grpc_request_decodes(datatype: str) -> None:
    array = sample(datatype)
    theirs = triton_grpc_request({"x": array, "z": np.arange(3, dtype=np.int32)})
    request = v2.decode_grpc_request(pb.ModelInferRequest.FromString(theirs.SerializeToString()))
    assert_same(request.inputs["x"], array)
    assert_same(request.inputs["z"], np.arange(3, dtype=np.int32))
    assert request.id == "r1"
    assert request.parameters == {"custom": "yes"}
    assert [o.name for o in request.outputs] == ["y"]


@pytest.mark.parametrize("datatype", DATATYPES)
def test_our_grpc_response_reads_in_tritonclient(datatype: str) -> None:
    array = sample(datatype)
    ours = v2.encode_grpc_response(v2.InferResponse("m", {"y": array, "w": np.ones(2)}, "1", "r1"))
    theirs = triton_pb.ModelInferResponse.FromString(ours.SerializeToString())
    assert theirs.SerializeToString() == ours.SerializeToString()
    for message in (ours, theirs):
        result = grpcclient.InferResult(message)
        assert_same(result.as_numpy("y"), array)
        assert_same(result.as_numpy("w"), np.ones(2))


def test_our_grpc_request_parses_identically_in_triton() -> None:
    request = v2.InferRequest(
        {"x": np.arange(4, dtype=np.float32), "s": sample("BYTES")},
        id="r",
        parameters={"b": True, "i": -3, "u": 2**64 - 1, "d": 0.5, "s": "x"},
        outputs=[v2.RequestedOutput("y", parameters={"k": 2})],
    )
    ours = v2.encode_grpc_request(request, "m", "3")
    theirs = triton_pb.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.SerializeToString(deterministic=True) == ours.SerializeToString(deterministic=True)
    assert theirs.parameters["u"].uint64_param == 2**64 - 1
    assert list(theirs.raw_input_contents) == list(ours.raw_input_contents)


def test_other_messages_parse_identically_in_triton() -> None:
    stats = pb.ModelStatisticsResponse()
    model = stats.model_stats.add(name="m", version="1", inference_count=5, execution_count=2)
    model.inference_stats.success.count = 5
    model.inference_stats.queue.ns = 1234
    model.batch_stats.add(batch_size=4).compute_infer.ns = 99
    config = pb.ModelConfigResponse()
    config.config.name = "m"
    config.config.max_batch_size = 8
    config.config.input.add(name="x", data_type=pb.TYPE_FP32, dims=[-1, 3])
    index = pb.RepositoryIndexResponse()
    index.models.add(name="m", version="1", state="READY")
    for message in (stats, config, index, v2.model_metadata_grpc("m", ["1"], "python", [], [])):
        name = message.DESCRIPTOR.name
        theirs = getattr(triton_pb, name).FromString(message.SerializeToString())
        assert theirs.SerializeToString(deterministic=True) == message.SerializeToString(deterministic=True)
    assert triton_pb.ModelConfigResponse.FromString(config.SerializeToString()).config.input[0].dims == [
        -1,
        3,
    ]


# --- HTTP bodies --------------------------------------------------------------------------------


def triton_http_body(array: np.ndarray, binary: bool, outputs: Any = None) -> tuple[bytes, int | None]:
    item = httpclient.InferInput("x", list(array.shape), datatype_of(array))
    item.set_data_from_numpy(array, binary_data=binary)
    body, length = httpclient.InferenceServerClient.generate_request_body(
        [item], outputs=outputs, request_id="r1", parameters={"custom": 1}
    )
    return (body.encode() if isinstance(body, str) else body), length


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_tritonclient_http_request_decodes(datatype: str, binary: bool) -> None:
    array = sample(datatype) if binary or datatype != "BYTES" else text_sample()
    body, length = triton_http_body(array, binary)
    assert (length is not None) == binary
    request = v2.decode_http_request(body, length)
    assert_same(request.inputs["x"], as_bytes(array))
    assert request.id == "r1"
    assert request.parameters == {"custom": 1, "binary_data_output": True}


def test_tritonclient_http_special_floats_decode() -> None:
    array = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    request = v2.decode_http_request(*triton_http_body(array, binary=False))
    assert_same(request.inputs["x"], array)


def test_tritonclient_requested_outputs_decode() -> None:
    outputs = [
        httpclient.InferRequestedOutput("a", binary_data=True),
        httpclient.InferRequestedOutput("b", binary_data=False),
    ]
    request = v2.decode_http_request(*triton_http_body(np.ones(1, np.float32), True, outputs))
    assert [(o.name, o.binary_data) for o in request.outputs] == [("a", True), ("b", False)]
    assert "binary_data_output" not in request.parameters


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_our_http_response_reads_in_tritonclient(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    request = v2.InferRequest({}, parameters={"binary_data_output": binary})
    response = v2.InferResponse("m", {"y": array, "w": np.arange(3.0)}, "1", "r1")
    body, length = v2.encode_http_response(response, request)
    result = httpclient.InferResult.from_response_body(body, header_length=length)
    assert_same(result.as_numpy("y"), array)
    assert_same(result.as_numpy("w"), np.arange(3.0))
    assert result.get_response()["id"] == "r1"


def test_special_floats_in_json_read_in_tritonclient() -> None:
    array = np.array([np.nan, np.inf, -np.inf, 2.0], dtype=np.float32)
    body, length = v2.encode_http_response(v2.InferResponse("m", {"y": array}))
    assert length is None
    assert_same(httpclient.InferResult.from_response_body(body).as_numpy("y"), array)


def test_requested_binary_outputs_read_in_tritonclient() -> None:
    body, length = triton_http_body(
        np.ones(1, np.float32),
        True,
        [
            httpclient.InferRequestedOutput("a"),
            httpclient.InferRequestedOutput("b", binary_data=False),
        ],
    )
    request = v2.decode_http_request(body, length)
    outputs: dict[str, np.ndarray] = {
        "a": np.arange(4, dtype=np.int64),
        "b": np.arange(2, dtype=np.uint8),
    }
    body, length = v2.encode_http_response(v2.InferResponse("m", outputs), request)
    result = httpclient.InferResult.from_response_body(body, header_length=length)
    assert result.get_output("a")["parameters"]["binary_data_size"] == 32
    assert result.get_output("b")["data"] == [0, 1]
    assert_same(result.as_numpy("a"), outputs["a"])
    assert_same(result.as_numpy("b"), outputs["b"])
