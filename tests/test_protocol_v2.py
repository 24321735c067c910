"""Open Inference Protocol codecs: round trips through every encoding, and every refusal."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from modelpod.errors import InvalidInput
from modelpod.protocol import v2
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.types import DATATYPES, TensorSpec

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str) -> np.ndarray:
    """A 2x3 tensor of the datatype, with its extreme values where it has them."""
    if datatype == "BYTES":
        return np.array([[b"", b"a", "é".encode()], [b"\x00\xff", b"xyz", b"\n"]], dtype=object)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind == "f":
        return np.array([[0.5, -1.25, np.nan], [np.inf, -np.inf, 3.0]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max, 0], [1, 2, 3]], dtype=dtype)


def assert_same(actual: Any, expected: np.ndarray) -> None:
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def http_roundtrip_request(array: np.ndarray, binary: bool) -> np.ndarray:
    body, length = v2.encode_http_request(v2.InferRequest({"x": array}), binary_data=binary)
    return v2.decode_http_request(body, length).inputs["x"]


def http_roundtrip_response(array: np.ndarray, binary: bool) -> np.ndarray:
    request = v2.InferRequest({}, parameters={"binary_data_output": binary})
    body, length = v2.encode_http_response(v2.InferResponse("m", {"y": array}), request)
    result = v2.decode_http_response(body, length).outputs["y"]
    assert isinstance(result, np.ndarray)
    return result


def grpc_roundtrip_request(array: np.ndarray) -> np.ndarray:
    message = v2.encode_grpc_request(v2.InferRequest({"x": array}), "m")
    wire = pb.ModelInferRequest.FromString(message.SerializeToString())
    return v2.decode_grpc_request(wire).inputs["x"]


def grpc_roundtrip_response(array: np.ndarray) -> np.ndarray:
    message = v2.encode_grpc_response(v2.InferResponse("m", {"y": array}))
    wire = pb.ModelInferResponse.FromString(message.SerializeToString())
    result = v2.decode_grpc_response(wire).outputs["y"]
    assert isinstance(result, np.ndarray)
    return result


ROUNDTRIPS = {
    "http-json-request": lambda a: http_roundtrip_request(a, binary=False),
    "http-binary-request": lambda a: http_roundtrip_request(a, binary=True),
    "http-json-response": lambda a: http_roundtrip_response(a, binary=False),
    "http-binary-response": lambda a: http_roundtrip_response(a, binary=True),
    "grpc-request": grpc_roundtrip_request,
    "grpc-response": grpc_roundtrip_response,
}


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("path", list(ROUNDTRIPS))
def test_every_datatype_round_trips(datatype: str, path: str) -> None:
    array = sample(datatype)
    assert_same(ROUNDTRIPS[path](array), array)


@pytest.mark.parametrize("path", list(ROUNDTRIPS))
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1, 1, 1, 1)])
def test_scalar_and_empty_shapes_round_trip(path: str, shape: tuple[int, ...]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    assert_same(ROUNDTRIPS[path](array), array)


def test_decoded_arrays_are_writable() -> None:
    for path in ROUNDTRIPS.values():
        assert path(np.ones(3, dtype=np.float32)).flags.writeable


# --- hypothesis: any dtype, any shape, every encoding ------------------------------------------

numeric_arrays = st.sampled_from(NUMERIC).flatmap(
    lambda name: hnp.arrays(DATATYPES[name], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0))
)
bytes_arrays = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0).flatmap(
    lambda shape: hnp.arrays(np.object_, shape, elements=st.binary(max_size=12))
)
text_arrays = hnp.array_shapes(min_dims=1, max_dims=2, min_side=0).flatmap(
    lambda shape: hnp.arrays(np.object_, shape, elements=st.text(max_size=8).map(str.encode))
)


@settings(max_examples=150, deadline=None)
@given(
    array=st.one_of(numeric_arrays, bytes_arrays, text_arrays),
    path=st.sampled_from(list(ROUNDTRIPS)),
)
def test_any_array_round_trips(array: np.ndarray, path: str) -> None:
    assert_same(ROUNDTRIPS[path](array), array)


# --- JSON specifics -----------------------------------------------------------------------------


def request_body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def tensor(data: Any, datatype: str = "FP32", shape: Any = None, name: str = "x") -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype,
        "shape": [len(data)] if shape is None else shape,
        "data": data,
    }


def test_nested_and_flat_data_are_read_row_major() -> None:
    nested = v2.decode_http_request(request_body(tensor([[1, 2, 3], [4, 5, 6]], "INT32", [2, 3])))
    flat = v2.decode_http_request(request_body(tensor([1, 2, 3, 4, 5, 6], "INT32", [2, 3])))
    expected = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    assert_same(nested.inputs["x"], expected)
    assert_same(flat.inputs["x"], expected)


def nested_body(depth: int, value: bytes) -> bytes:
    data = b"[" * depth + value + b"]" * depth
    return b'{"inputs":[{"name":"x","datatype":"FP64","shape":[1],"data":' + data + b"}]}"


def test_deeply_nested_data_is_flattened_without_recursion() -> None:
    result = v2.decode_http_request(nested_body(1000, b"1.5"))  # above Python's recursion limit
    assert_same(result.inputs["x"], np.array([1.5]))


@pytest.mark.parametrize("value", [b"1.5", b"NaN"])
def test_absurdly_nested_json_is_refused(value: bytes) -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        v2.decode_http_request(nested_body(100_000, value))


def test_request_fields_are_decoded() -> None:
    body = request_body(
        tensor([1.0]),
        tensor(["a", "é"], "BYTES", name="s"),
        id="req-1",
        parameters={"priority": 2, "flag": True, "note": "hi", "ratio": 0.5},
        outputs=[{"name": "y", "parameters": {"binary_data": True, "top_k": 3}}, {"name": "z"}],
    )
    request = v2.decode_http_request(body)
    assert list(request.inputs) == ["x", "s"]
    assert request.id == "req-1"
    assert request.parameters == {"priority": 2, "flag": True, "note": "hi", "ratio": 0.5}
    assert request.outputs == [
        v2.RequestedOutput("y", True, {"top_k": 3}),
        v2.RequestedOutput("z", None, {}),
    ]
    assert_same(request.inputs["s"], np.array([b"a", "é".encode()], dtype=object))


def test_special_float_spellings_are_accepted() -> None:
    strings = v2.decode_http_request(request_body(tensor(["NaN", "Infinity", "-Infinity", 1])))
    tokens = v2.decode_http_request(
        b'{"inputs":[{"name":"x","datatype":"FP32","shape":[3],"data":[NaN,Infinity,-Infinity]}]}'
    )
    expected = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)
    assert_same(strings.inputs["x"][:3], expected)
    assert_same(tokens.inputs["x"], expected)


def test_non_finite_floats_are_written_as_strings() -> None:
    body, _ = v2.encode_http_response(v2.InferResponse("m", {"y": np.array([np.nan, -np.inf, 1.5])}))
    assert orjson.loads(body)["outputs"][0]["data"] == ["NaN", "-Infinity", 1.5]


def test_response_header_fields() -> None:
    response = v2.InferResponse("m", {"y": np.array([1], dtype=np.int8)}, "3", "id-9", {"k": "v"})
    body, length = v2.encode_http_response(response)
    assert length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "id-9",
        "parameters": {"k": "v"},
        "outputs": [{"name": "y", "datatype": "INT8", "shape": [1], "data": [1]}],
    }
    decoded = v2.decode_http_response(body)
    assert (decoded.model_name, decoded.model_version, decoded.id) == ("m", "3", "id-9")
    assert decoded.parameters == {"k": "v"}
    assert_same(decoded.outputs["y"], response.outputs["y"])


def test_binary_output_choice_follows_request() -> None:
    outputs = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.float32), "c": np.ones(1, np.int64)}
    request = v2.InferRequest(
        {},
        parameters={"binary_data_output": True},
        outputs=[v2.RequestedOutput("a", False), v2.RequestedOutput("b", None)],
    )
    body, length = v2.encode_http_response(v2.InferResponse("m", outputs), request)
    assert length is not None
    header = orjson.loads(body[:length])["outputs"]
    assert "data" in header[0]
    assert header[1]["parameters"] == {"binary_data_size": 8}
    assert header[2]["parameters"] == {"binary_data_size": 8}
    assert len(body) == length + 16


def test_json_is_the_default_for_outputs() -> None:
    body, length = v2.encode_http_response(v2.InferResponse("m", {"y": np.ones(2)}), v2.InferRequest({}))
    assert length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, 1.0]


def test_bytes_that_are_not_utf8_go_binary_even_in_json_mode() -> None:
    array = np.array([b"ok", b"\xff\xfe"], dtype=object)
    body, length = v2.encode_http_response(v2.InferResponse("m", {"y": array}))
    assert length is not None
    assert orjson.loads(body[:length])["outputs"][0]["parameters"]["binary_data_size"] == 12
    assert_same(v2.decode_http_response(body, length).outputs["y"], array)


def test_str_and_numpy_string_outputs_encode_as_bytes() -> None:
    for array in (
        np.array(["héllo", "x"]),
        np.array([b"a", b"bc"]),
        np.array(["a", b"b"], dtype=object),
    ):
        result = http_roundtrip_response(array, binary=True)
        assert all(isinstance(item, bytes) for item in result)


def test_unencodable_outputs_raise_type_error() -> None:
    with pytest.raises(TypeError, match="complex128"):
        v2.encode_http_response(v2.InferResponse("m", {"y": np.ones(2, dtype=complex)}))
    with pytest.raises(TypeError, match="BYTES element of type int"):
        v2.encode_grpc_response(v2.InferResponse("m", {"y": np.array(["a", 3], dtype=object)}))


def test_big_endian_arrays_are_encoded_by_value() -> None:
    array = np.arange(4, dtype=">i4")
    assert_same(http_roundtrip_response(array, binary=True), array.astype("<i4"))


def test_select_outputs() -> None:
    outputs = {"a": 1, "b": 2}
    assert v2.select_outputs(outputs, []) == outputs
    assert list(v2.select_outputs(outputs, [v2.RequestedOutput("b"), v2.RequestedOutput("a")])) == [
        "b",
        "a",
    ]
    with pytest.raises(InvalidInput, match="unknown output 'c'"):
        v2.select_outputs(outputs, [v2.RequestedOutput("c")])


def test_parse_header_length() -> None:
    assert v2.parse_header_length(None) is None
    assert v2.parse_header_length("12") == 12
    for bad in ("", "-1", "1.5", "x"):
        with pytest.raises(InvalidInput, match="Inference-Header-Content-Length"):
            v2.parse_header_length(bad)


def test_error_json() -> None:
    assert orjson.loads(v2.error_json("boom")) == {"error": "boom"}


def test_metadata_helpers() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3))], [TensorSpec("y", "BYTES", (1,))]
    doc = v2.model_metadata_json("m", ["1", "2"], "python", *specs)
    assert doc["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    message = v2.model_metadata_grpc("m", ["1", "2"], "python", *specs)
    assert list(message.versions) == ["1", "2"]
    assert list(message.inputs[0].shape) == [-1, 3]
    assert message.outputs[0].datatype == "BYTES"
    assert v2.server_metadata_json("modelpod", "0.1", ["binary_tensor_data"])["extensions"] == [
        "binary_tensor_data"
    ]


# --- refusals (HTTP) ----------------------------------------------------------------------------


def binary_body(header: dict[str, Any], data: bytes) -> tuple[bytes, int]:
    text = orjson.dumps(header)
    return text + data, len(text)


def binary_input(size: Any, datatype: str = "FP32", shape: Any = (1,)) -> dict[str, Any]:
    return {
        "name": "x",
        "datatype": datatype,
        "shape": list(shape),
        "parameters": {"binary_data_size": size},
    }


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


HTTP_REFUSALS: list[tuple[str, bytes, int | None, str]] = [
    ("not json", b"{nope", None, "not valid JSON"),
    ("not utf8", b'{"inputs": "\xff"}', None, "not valid JSON"),
    ("nan token but still broken", b'{"inputs": [NaN', None, "not valid JSON"),
    ("not an object", b"[1, 2]", None, "must be a JSON object"),
    ("missing inputs", b"{}", None, "missing 'inputs'"),
    ("inputs not a list", b'{"inputs": {}}', None, "'inputs' must be a list"),
    ("input not an object", b'{"inputs": [3]}', None, "inputs[0] must be a JSON object"),
    ("no name", request_body({"datatype": "FP32", "shape": [1], "data": [1]}), None, "'name'"),
    ("unknown datatype", request_body(tensor([1], "FP8")), None, "unknown datatype 'FP8'"),
    (
        "missing datatype",
        request_body({"name": "x", "shape": [1], "data": [1]}),
        None,
        "unknown datatype None",
    ),
    ("shape not a list", request_body(tensor([1], shape=3)), None, "'shape' must be a list"),
    ("negative dim", request_body(tensor([1], shape=[-1])), None, "negative dimension"),
    ("float dim", request_body(tensor([1], shape=[1.0])), None, "non-integer dimension"),
    ("bool dim", request_body(tensor([1], shape=[True])), None, "non-integer dimension"),
    ("absurd shape", request_body(tensor([1], shape=[1 << 40, 1 << 40])), None, "larger than"),
    ("absurd dim with zero", request_body(tensor([], shape=[0, 1 << 62])), None, "larger than"),
    ("too few values", request_body(tensor([1, 2], shape=[3])), None, "2 values in 'data'"),
    ("too many nested", request_body(tensor([[1, 2], [3]], shape=[2])), None, "3 values in 'data'"),
    (
        "data not a list",
        request_body(tensor("abc", "BYTES", shape=[1])),
        None,
        "'data' must be a list",
    ),
    ("string in FP32", request_body(tensor([1.0, "x"])), None, "the only strings allowed"),
    ("null in FP32", request_body(tensor([1.0, None])), None, "cannot hold a JSON null"),
    ("object in FP32", request_body(tensor([{}])), None, "cannot hold a JSON object"),
    ("bool in FP32", request_body(tensor([True])), None, "cannot hold a JSON boolean"),
    (
        "number in BOOL",
        request_body(tensor([1, 0], "BOOL")),
        None,
        "BOOL data cannot hold a JSON integer",
    ),
    ("float in INT32", request_body(tensor([1.5], "INT32")), None, "cannot hold a JSON number"),
    ("bool in INT32", request_body(tensor([True], "INT32")), None, "cannot hold a JSON boolean"),
    ("int8 overflow", request_body(tensor([128], "INT8")), None, "out of range for INT8"),
    ("negative uint", request_body(tensor([-1], "UINT64")), None, "out of range for UINT64"),
    ("huge int in FP64", request_body(tensor([10**400], "FP64")), None, "not valid JSON"),
    (
        "int beyond uint64",
        request_body(tensor([2**64], "INT64")),
        None,
        "cannot hold a JSON number",
    ),
    (
        "number in BYTES",
        request_body(tensor([1], "BYTES")),
        None,
        "BYTES data cannot hold a JSON integer",
    ),
    (
        "lone surrogate",
        b'{"inputs":[{"name":"x","datatype":"BYTES","shape":[1],"data":["\\ud800"]}]}',
        None,
        "JSON",
    ),
    (
        "no data",
        request_body({"name": "x", "datatype": "FP32", "shape": [1]}),
        None,
        "neither 'data'",
    ),
    (
        "duplicate input",
        request_body(tensor([1]), tensor([2])),
        None,
        "input 'x' appears more than once",
    ),
    ("id not a string", request_body(tensor([1]), id=5), None, "'id' must be a string"),
    (
        "parameters not object",
        request_body(tensor([1]), parameters=[1]),
        None,
        "'parameters' must be",
    ),
    ("nested parameter", request_body(tensor([1]), parameters={"a": [1]}), None, "parameter 'a'"),
    (
        "binary_data_output not bool",
        request_body(tensor([1]), parameters={"binary_data_output": 1}),
        None,
        "binary_data_output",
    ),
    ("outputs not a list", request_body(tensor([1]), outputs={}), None, "'outputs' must be a list"),
    ("output not object", request_body(tensor([1]), outputs=["y"]), None, "outputs[0] must be"),
    (
        "output binary_data not bool",
        request_body(tensor([1]), outputs=[{"name": "y", "parameters": {"binary_data": "yes"}}]),
        None,
        "'binary_data' must be a boolean",
    ),
    (
        "duplicate output",
        request_body(tensor([1]), outputs=[{"name": "y"}, {"name": "y"}]),
        None,
        "output 'y' appears more than once",
    ),
    (
        "shared memory",
        request_body({**tensor([1]), "parameters": {"shared_memory_region": "r"}}),
        None,
        "shared memory",
    ),
    ("header longer than body", b'{"inputs": []}', 99, "is 99 but the body has 14 bytes"),
    ("negative header", b'{"inputs": []}', -1, "is -1"),
    ("zero header", b'{"inputs": []}', 0, "not valid JSON"),
    (
        "binary size too big",
        *binary_body({"inputs": [binary_input(8)]}, b"\0" * 4),
        "binary_data_size is 8 but only 4",
    ),
    (
        "binary size negative",
        *binary_body({"inputs": [binary_input(-4)]}, b"\0" * 4),
        "binary_data_size must be",
    ),
    (
        "binary size a string",
        *binary_body({"inputs": [binary_input("4")]}, b"\0" * 4),
        "binary_data_size must be",
    ),
    (
        "binary size wrong for shape",
        *binary_body({"inputs": [binary_input(8)]}, b"\0" * 8),
        "8 bytes of data for FP32 shape [1], expected 4",
    ),
    (
        "leftover binary",
        *binary_body({"inputs": [binary_input(4)]}, b"\0" * 6),
        "2 bytes of binary data",
    ),
    (
        "data and binary",
        *binary_body({"inputs": [{**binary_input(4), "data": [1]}]}, b"\0" * 4),
        "both 'data'",
    ),
    (
        "bad bool byte",
        *binary_body({"inputs": [binary_input(1, "BOOL")]}, b"\x02"),
        "BOOL data must be",
    ),
    (
        "bytes truncated prefix",
        *binary_body({"inputs": [binary_input(2, "BYTES")]}, b"\x01\x00"),
        "ends inside a length prefix",
    ),
    (
        "bytes element too long",
        *binary_body({"inputs": [binary_input(6, "BYTES")]}, b"\x09\0\0\0ab"),
        "claims 9 bytes but 2 remain",
    ),
    (
        "bytes too few",
        *binary_body({"inputs": [binary_input(5, "BYTES", (2,))]}, bytes_elements(b"a")),
        "1 BYTES elements for a shape of 2",
    ),
    (
        "bytes too many",
        *binary_body({"inputs": [binary_input(10, "BYTES")]}, bytes_elements(b"a", b"b")),
        "more than the 1 elements",
    ),
]


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [case[1:] for case in HTTP_REFUSALS],
    ids=[case[0] for case in HTTP_REFUSALS],
)
def test_malformed_http_requests_are_refused(body: bytes, length: int | None, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        v2.decode_http_request(body, length)
    assert message in str(caught.value)


def test_refusals_name_the_input() -> None:
    with pytest.raises(InvalidInput, match="input 'pixels'"):
        v2.decode_http_request(request_body(tensor(["a"], name="pixels")))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"outputs": []}', "'model_name' must be a string"),
        (b'{"model_name": "m"}', "missing 'outputs'"),
        (
            b'{"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}]}',
            "output 'y'",
        ),
    ],
)
def test_malformed_http_responses_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        v2.decode_http_response(body)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64), length=st.none() | st.integers(-2, 80))
def test_random_bytes_never_escape_as_other_errors(body: bytes, length: int | None) -> None:
    with contextlib.suppress(InvalidInput):
        v2.decode_http_request(body, length)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(st.just("x"), json_values),
    datatype=st.one_of(st.sampled_from(list(DATATYPES)), json_values),
    shape=st.one_of(st.lists(st.integers(-2, 4), max_size=3), json_values),
    data=json_values,
    parameters=json_values,
)
def test_random_json_tensors_never_escape_as_other_errors(
    name: Any, datatype: Any, shape: Any, data: Any, parameters: Any
) -> None:
    item = {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "data": data,
        "parameters": parameters,
    }
    with contextlib.suppress(InvalidInput):
        v2.decode_http_request(json.dumps({"inputs": [item]}).encode())


# --- gRPC specifics -----------------------------------------------------------------------------


def grpc_request(datatype: str, shape: list[int], **contents: Any) -> Any:
    message = pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="x", datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return message


@pytest.mark.parametrize(
    ("datatype", "field", "values"),
    [
        ("BOOL", "bool_contents", [True, False]),
        ("INT8", "int_contents", [-128, 127]),
        ("INT16", "int_contents", [-3, 3]),
        ("INT32", "int_contents", [-(2**31), 2**31 - 1]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1]),
        ("UINT8", "uint_contents", [0, 255]),
        ("UINT16", "uint_contents", [0, 65535]),
        ("UINT32", "uint_contents", [0, 2**32 - 1]),
        ("UINT64", "uint64_contents", [0, 2**64 - 1]),
        ("FP32", "fp32_contents", [0.5, -np.inf]),
        ("FP64", "fp64_contents", [np.nan, 1e300]),
        ("BYTES", "bytes_contents", [b"a", b"\xff"]),
    ],
)
def test_typed_grpc_contents_are_decoded(datatype: str, field: str, values: list[Any]) -> None:
    request = v2.decode_grpc_request(grpc_request(datatype, [2], **{field: values}))
    expected = (
        np.empty(2, dtype=object) if datatype == "BYTES" else np.array(values, dtype=DATATYPES[datatype])
    )
    if datatype == "BYTES":
        expected[:] = values
    assert_same(request.inputs["x"], expected)


def test_grpc_request_fields_are_decoded() -> None:
    message = grpc_request("INT32", [1], int_contents=[7])
    message.id = "r1"
    v2.set_grpc_parameters(message.parameters, {"a": True, "b": -5, "c": 2**64 - 1, "d": 0.25, "e": "s"})
    output = message.outputs.add(name="y")
    v2.set_grpc_parameters(output.parameters, {"k": 1})
    request = v2.decode_grpc_request(message)
    assert request.id == "r1"
    assert request.parameters == {"a": True, "b": -5, "c": 2**64 - 1, "d": 0.25, "e": "s"}
    assert request.outputs == [v2.RequestedOutput("y", None, {"k": 1})]


def test_grpc_parameters_pick_the_right_oneof() -> None:
    choices: dict[Any, str] = {
        True: "bool_param",
        3: "int64_param",
        2**63: "uint64_param",
        1.5: "double_param",
        "x": "string_param",
    }
    for value, choice in choices.items():
        parameter = v2.to_grpc_parameter(value)
        assert parameter.WhichOneof("parameter_choice") == choice
        assert v2.from_grpc_parameter(parameter) == value
    with pytest.raises(ValueError, match="64 bits"):
        v2.to_grpc_parameter(2**64)
    with pytest.raises(TypeError, match="list"):
        v2.to_grpc_parameter([1])  # type: ignore[arg-type]


def with_raw(message: Any, *raw: bytes) -> Any:
    message.raw_input_contents.extend(raw)
    return message


def unset_parameter() -> Any:
    message = grpc_request("INT32", [1], int_contents=[1])
    message.parameters["p"].CopyFrom(pb.InferParameter())
    return message


def duplicate_grpc_inputs() -> Any:
    message = grpc_request("INT32", [1], int_contents=[1])
    message.inputs.add(
        name="x", datatype="INT32", shape=[1], contents=pb.InferTensorContents(int_contents=[2])
    )
    return message


def duplicate_grpc_outputs() -> Any:
    message = grpc_request("INT32", [1], int_contents=[1])
    message.outputs.add(name="y")
    message.outputs.add(name="y")
    return message


def nameless_input() -> Any:
    message = pb.ModelInferRequest()
    message.inputs.add(datatype="INT32", shape=[0])
    return message


GRPC_REFUSALS: list[tuple[str, Any, str]] = [
    ("unknown datatype", grpc_request("FP8", [1]), "unknown datatype 'FP8'"),
    ("negative dim", grpc_request("INT32", [-1]), "negative dimension"),
    ("absurd shape", grpc_request("INT32", [1 << 40, 1 << 40]), "larger than"),
    (
        "count mismatch",
        grpc_request("INT32", [3], int_contents=[1]),
        "1 values in contents.int_contents",
    ),
    (
        "wrong field",
        grpc_request("INT32", [1], fp32_contents=[1.0]),
        "belongs in contents.int_contents, not fp32_contents",
    ),
    ("fp16 typed", grpc_request("FP16", [1]), "FP16 data can only be sent as raw contents"),
    ("int8 overflow", grpc_request("INT8", [1], int_contents=[300]), "out of range for INT8"),
    (
        "raw count",
        with_raw(grpc_request("INT32", [1]), b"\0" * 4, b"\0" * 4),
        "raw_input_contents has 2 entries for 1",
    ),
    (
        "raw and contents",
        with_raw(grpc_request("INT32", [1], int_contents=[1]), b"\0" * 4),
        "both in raw contents",
    ),
    (
        "raw size",
        with_raw(grpc_request("INT32", [2]), b"\0" * 4),
        "4 bytes of data for INT32 shape [2], expected 8",
    ),
    ("raw bytes prefix", with_raw(grpc_request("BYTES", [1]), b"\x05\0\0\0ab"), "claims 5 bytes"),
    ("unset parameter", unset_parameter(), "request: parameter 'p' has no value"),
    ("duplicate input", duplicate_grpc_inputs(), "input 'x' appears more than once"),
    ("duplicate output", duplicate_grpc_outputs(), "output 'y' appears more than once"),
    ("nameless input", nameless_input(), "inputs[0]: 'name'"),
]


@pytest.mark.parametrize(
    ("message", "error"),
    [case[1:] for case in GRPC_REFUSALS],
    ids=[case[0] for case in GRPC_REFUSALS],
)
def test_malformed_grpc_requests_are_refused(message: Any, error: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        v2.decode_grpc_request(message)
    assert error in str(caught.value)


def test_grpc_response_uses_raw_output_contents() -> None:
    outputs = {"a": np.arange(3, dtype=np.int16), "b": np.array([b"x"], dtype=object)}
    message = v2.encode_grpc_response(v2.InferResponse("m", outputs, "2", "id", {"p": 1}))
    assert [o.name for o in message.outputs] == ["a", "b"]
    assert list(message.raw_output_contents) == [
        np.arange(3, dtype="<i2").tobytes(),
        b"\x01\0\0\0x",
    ]
    assert (message.model_version, message.id, message.parameters["p"].int64_param) == (
        "2",
        "id",
        1,
    )
    assert not message.outputs[0].HasField("contents")
