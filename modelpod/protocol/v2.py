"""Open Inference Protocol (KServe V2) codecs: JSON over HTTP, binary tensor data, and gRPC.

Decoders read untrusted bytes or messages and raise `InvalidInput`, naming the field, for
anything malformed. Encoders take values from our own code and raise `TypeError` (or
`ValueError` for an out-of-range parameter) when a value has no protocol form: a bug in the
caller, not a bad request.

Conventions, all as Triton does them, so that NVIDIA's tritonclient interoperates:

* BYTES tensors are numpy object arrays of `bytes`; binary BYTES data is each element as a
  4-byte little-endian length followed by its bytes; JSON BYTES data is UTF-8 strings.
* A BYTES tensor that is not valid UTF-8 is sent as binary data even where JSON was asked
  for, because a JSON string cannot hold it; clients that honour `binary_data_size`
  (tritonclient does) read it unchanged. Base64 was rejected: a reader cannot tell it apart
  from text.
* NaN and infinities are valid FP values. JSON has no literal for them, so they are written
  as the strings "NaN", "Infinity" and "-Infinity" (numpy parses these back); on input those
  strings and the bare tokens Python and rapidjson write are both accepted.
* Decoded arrays are writable copies, so a model may change them in place.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modelpod.errors import InvalidInput
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.types import DATATYPES, TensorSpec, datatype_of

Array = npt.NDArray[Any]
ParameterValue = bool | int | float | str

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header that says where the JSON ends and binary tensor data begins."""

MAX_ELEMENTS = 1 << 32
"""Shapes claiming more elements than this are refused before anything is allocated."""

_U32 = struct.Struct("<I")
_LITTLE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64_MAX = (1 << 64) - 1
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@dataclass
class RequestedOutput:
    """An output the client asked for; `binary_data` None means "whatever the request says"."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A decoded inference request; `outputs` empty means every output the model has."""

    inputs: dict[str, Array]
    id: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass
class InferResponse:
    """What a model answered; outputs are arrays (or anything `np.asarray` accepts)."""

    model_name: str
    outputs: dict[str, Any]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# HTTP: JSON with the binary tensor data extension
# ---------------------------------------------------------------------------------------------


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header as an int (None when absent)."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    return int(value)


def decode_http_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body (JSON, optionally followed by binary tensor data)."""
    header, chunks = _split_body(body, header_length)
    doc = _load_object(header, "request")
    inputs = _decode_tensors(doc, "input", chunks)
    chunks.finish()
    parameters = _parameters("request", doc.get("parameters"))
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput("request parameter 'binary_data_output' must be a boolean")
    return InferRequest(
        inputs=inputs,
        id=_optional_str(doc, "id"),
        parameters=parameters,
        outputs=_requested_outputs(doc.get("outputs")),
    )


def encode_http_response(
    response: InferResponse, request: InferRequest | None = None
) -> tuple[bytes, int | None]:
    """Encode a response; the header length is returned when binary data follows the JSON.

    Each output is binary when its requested `binary_data` parameter says so, else when the
    request's `binary_data_output` parameter is true; JSON otherwise.
    """
    binary = _binary_choice(request)
    header: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        header["model_version"] = response.model_version
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"], chunks = _encode_tensors("output", response.outputs, binary)
    return _join_body(header, chunks)


def encode_http_request(request: InferRequest, binary_data: bool = True) -> tuple[bytes, int | None]:
    """Encode a request as a client sends it; inputs go as binary data unless told otherwise."""
    header: dict[str, Any] = {}
    if request.id is not None:
        header["id"] = request.id
    if request.parameters:
        header["parameters"] = request.parameters
    header["inputs"], chunks = _encode_tensors("input", request.inputs, lambda _: binary_data)
    if request.outputs:
        header["outputs"] = [_requested_output_json(output) for output in request.outputs]
    return _join_body(header, chunks)


def decode_http_response(body: bytes, header_length: int | None = None) -> InferResponse:
    """Decode a response body as a client receives it."""
    header, chunks = _split_body(body, header_length)
    doc = _load_object(header, "response")
    outputs = _decode_tensors(doc, "output", chunks)
    chunks.finish()
    model_name = doc.get("model_name")
    if not isinstance(model_name, str):
        raise InvalidInput("response field 'model_name' must be a string")
    return InferResponse(
        model_name=model_name,
        outputs=dict(outputs),
        model_version=_optional_str(doc, "model_version"),
        id=_optional_str(doc, "id"),
        parameters=_parameters("response", doc.get("parameters")),
    )


def select_outputs(outputs: Mapping[str, Any], requested: Sequence[RequestedOutput]) -> dict[str, Any]:
    """The outputs a request asked for, in the order asked; all of them when none were named."""
    if not requested:
        return dict(outputs)
    unknown = [output.name for output in requested if output.name not in outputs]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; the model produces {sorted(outputs)}")
    return {output.name: outputs[output.name] for output in requested}


def error_json(message: str) -> bytes:
    """An error body in the form Triton uses and tritonclient reads."""
    return orjson.dumps({"error": message})


class _Chunks:
    """The binary section of a body, handed out in order to the tensors that claim it."""

    def __init__(self, data: memoryview) -> None:
        self._data = data
        self._offset = 0

    def take(self, where: str, size: int) -> memoryview:
        remaining = len(self._data) - self._offset
        if size > remaining:
            raise InvalidInput(
                f"{where}: binary_data_size is {size} but only {remaining} bytes"
                " of binary data are left in the body"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk

    def finish(self) -> None:
        left = len(self._data) - self._offset
        if left:
            raise InvalidInput(f"{left} bytes of binary data follow the JSON but no tensor claims them")


def _split_body(body: bytes, header_length: int | None) -> tuple[memoryview, _Chunks]:
    view = memoryview(body)
    if header_length is None:
        return view, _Chunks(view[len(view) :])
    if header_length < 0 or header_length > len(view):
        raise InvalidInput(f"{HEADER_LENGTH} is {header_length} but the body has {len(view)} bytes")
    return view[:header_length], _Chunks(view[header_length:])


def _load_object(text: memoryview, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        doc = _load_with_nan_tokens(text, what, error)
    if not isinstance(doc, dict):
        raise InvalidInput(f"the {what} body must be a JSON object")
    return doc


def _load_with_nan_tokens(text: memoryview, what: str, error: Exception) -> Any:
    """orjson refuses the bare NaN/Infinity tokens that tritonclient writes; json takes them."""
    raw = bytes(text)
    if b"NaN" not in raw and b"Infinity" not in raw:
        raise InvalidInput(f"the {what} body is not valid JSON: {error}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise InvalidInput(f"the {what} body is not valid JSON: {error}") from None


def _join_body(header: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, int | None]:
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"field {key!r} must be a string")
    return value


def _parameters(where: str, value: Any) -> dict[str, ParameterValue]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: 'parameters' must be a JSON object")
    for key, item in value.items():
        if not isinstance(item, bool | int | float | str):
            raise InvalidInput(f"{where}: parameter {key!r} must be a string, number or boolean")
    return value


def _requested_outputs(value: Any) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    outputs = [_requested_output(index, item) for index, item in enumerate(value)]
    _refuse_duplicates("output", [output.name for output in outputs])
    return outputs


def _requested_output(index: int, item: Any) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidInput(f"outputs[{index}] must be a JSON object")
    name = _tensor_name("output", index, item.get("name"))
    parameters = _parameters(f"output {name!r}", item.get("parameters"))
    binary = parameters.pop("binary_data", None)
    if binary is not None and not isinstance(binary, bool):
        raise InvalidInput(f"output {name!r}: parameter 'binary_data' must be a boolean")
    return RequestedOutput(name=name, binary_data=binary, parameters=parameters)


def _requested_output_json(output: RequestedOutput) -> dict[str, Any]:
    parameters = dict(output.parameters)
    if output.binary_data is not None:
        parameters["binary_data"] = output.binary_data
    entry: dict[str, Any] = {"name": output.name}
    if parameters:
        entry["parameters"] = parameters
    return entry


def _refuse_duplicates(kind: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        seen.add(name)


def _binary_choice(request: InferRequest | None) -> Callable[[str], bool]:
    if request is None:
        return lambda _: False
    default = request.parameters.get("binary_data_output") is True
    chosen = {o.name: o.binary_data for o in request.outputs if o.binary_data is not None}
    return lambda name: chosen.get(name, default)


def _decode_tensors(doc: Mapping[str, Any], kind: str, chunks: _Chunks) -> dict[str, Array]:
    items = doc.get(f"{kind}s")
    if items is None:
        raise InvalidInput(f"missing '{kind}s'")
    if not isinstance(items, list):
        raise InvalidInput(f"'{kind}s' must be a list")
    tensors: dict[str, Array] = {}
    for index, item in enumerate(items):
        name, array = _decode_tensor(kind, index, item, chunks)
        if name in tensors:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        tensors[name] = array
    return tensors


def _decode_tensor(kind: str, index: int, item: Any, chunks: _Chunks) -> tuple[str, Array]:
    if not isinstance(item, dict):
        raise InvalidInput(f"{kind}s[{index}] must be a JSON object")
    name = _tensor_name(kind, index, item.get("name"))
    where = f"{kind} {name!r}"
    datatype = _datatype(where, item.get("datatype"))
    shape = _shape(where, item.get("shape"))
    size = _binary_size(where, _parameters(where, item.get("parameters")))
    if size is None:
        if "data" not in item:
            raise InvalidInput(f"{where}: has neither 'data' nor a binary_data_size parameter")
        return name, _from_json(where, datatype, shape, item["data"])
    if "data" in item:
        raise InvalidInput(f"{where}: has both 'data' and a binary_data_size parameter")
    return name, _from_raw(where, datatype, shape, chunks.take(where, size))


def _tensor_name(kind: str, index: int, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{kind}s[{index}]: 'name' must be a non-empty string")
    return name


def _binary_size(where: str, parameters: Mapping[str, Any]) -> int | None:
    if "shared_memory_region" in parameters:
        raise InvalidInput(f"{where}: shared memory is not supported")
    size = parameters.get("binary_data_size")
    if size is not None and (type(size) is not int or size < 0):
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
    return size


def _encode_tensors(
    kind: str, tensors: Mapping[str, Any], binary: Callable[[str], bool]
) -> tuple[list[dict[str, Any]], list[bytes]]:
    entries, chunks = [], []
    for name, value in tensors.items():
        entry, raw = _encode_tensor(f"{kind} {name!r}", name, value, binary(name))
        entries.append(entry)
        if raw is not None:
            chunks.append(raw)
    return entries, chunks


def _encode_tensor(where: str, name: str, value: Any, binary: bool) -> tuple[dict[str, Any], bytes | None]:
    array, datatype = _array_and_datatype(where, value)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    data = None if binary else _json_data(where, datatype, array)
    if data is not None:
        entry["data"] = data
        return entry, None
    raw = _to_raw(where, datatype, array)
    entry["parameters"] = {"binary_data_size": len(raw)}
    return entry, raw


# ---------------------------------------------------------------------------------------------
# Tensors: validation, raw bytes and JSON data
# ---------------------------------------------------------------------------------------------


def _datatype(where: str, value: Any) -> str:
    if not isinstance(value, str) or value not in DATATYPES:
        raise InvalidInput(f"{where}: unknown datatype {value!r}; use one of {', '.join(DATATYPES)}")
    return value


def _shape(where: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"{where}: 'shape' must be a list of integers")
    count = 1
    for dim in value:
        if type(dim) is not int:
            raise InvalidInput(f"{where}: shape {list(value)} holds a non-integer dimension")
        if dim < 0:
            raise InvalidInput(f"{where}: shape {list(value)} has a negative dimension")
        count *= dim
        if dim > MAX_ELEMENTS or count > MAX_ELEMENTS:
            raise InvalidInput(f"{where}: shape {list(value)} is larger than {MAX_ELEMENTS} elements")
    return tuple(value)


def _from_raw(where: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> Array:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _unpack_bytes(where, raw, count).reshape(shape)
    dtype = _LITTLE[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}: {len(raw)} bytes of data for {datatype} shape {list(shape)},"
            f" expected {count * dtype.itemsize}"
        )
    if datatype == "BOOL" and count and np.frombuffer(raw, np.uint8).max() > 1:
        raise InvalidInput(f"{where}: BOOL data must be bytes of 0 or 1")
    array = np.frombuffer(raw, dtype=dtype).astype(DATATYPES[datatype], copy=True)
    return array.reshape(shape)


def _unpack_bytes(where: str, raw: bytes | memoryview, count: int) -> Array:
    view, offset = memoryview(raw), 0
    items: list[bytes] = []
    while offset < len(view):
        if len(items) == count:
            raise InvalidInput(f"{where}: BYTES data holds more than the {count} elements of its shape")
        if len(view) - offset < 4:
            raise InvalidInput(f"{where}: BYTES data ends inside a length prefix at byte {offset}")
        (size,) = _U32.unpack_from(view, offset)
        offset += 4
        if size > len(view) - offset:
            raise InvalidInput(
                f"{where}: BYTES element {len(items)} claims {size} bytes but {len(view) - offset} remain"
            )
        items.append(bytes(view[offset : offset + size]))
        offset += size
    if len(items) != count:
        raise InvalidInput(f"{where}: {len(items)} BYTES elements for a shape of {count}")
    return _object_array(items)


def _object_array(items: Sequence[bytes]) -> Array:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


def _from_json(where: str, datatype: str, shape: tuple[int, ...], data: Any) -> Array:
    if not isinstance(data, list):
        raise InvalidInput(f"{where}: 'data' must be a list")
    flat = _flatten(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidInput(f"{where}: {len(flat)} values in 'data' for shape {list(shape)} ({count})")
    if datatype == "BYTES":
        return _json_bytes(where, flat).reshape(shape)
    return _json_numbers(where, datatype, flat).reshape(shape)


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of nested lists, without recursion (JSON may nest deeply)."""
    if list not in set(map(type, data)):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _json_bytes(where: str, flat: list[Any]) -> Array:
    _check_json_types(where, "BYTES", flat, {str})
    try:
        return _object_array([item.encode("utf-8") for item in flat])
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: BYTES data holds a string that is not valid Unicode") from None


def _json_numbers(where: str, datatype: str, flat: list[Any]) -> Array:
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        _check_json_types(where, datatype, flat, {bool})
    elif datatype in _FLOATS:
        _check_json_types(where, datatype, flat, {int, float, str})
        flat = [_special_float(where, item) if isinstance(item, str) else item for item in flat]
    else:
        _check_json_types(where, datatype, flat, {int})
        _check_int_range(where, datatype, flat)
    try:
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"{where}: a value is out of range for {datatype}") from None


def _check_json_types(where: str, datatype: str, flat: list[Any], allowed: set[type]) -> None:
    wrong = set(map(type, flat)) - allowed
    if wrong:
        found = _JSON_TYPES.get(next(iter(wrong)), "null")
        raise InvalidInput(f"{where}: {datatype} data cannot hold a JSON {found}")


def _check_int_range(where: str, datatype: str, flat: list[int]) -> None:
    info = np.iinfo(DATATYPES[datatype])
    if flat and (min(flat) < info.min or max(flat) > info.max):
        raise InvalidInput(f"{where}: a value is out of range for {datatype}")


def _special_float(where: str, item: str) -> float:
    try:
        return _SPECIAL_FLOATS[item]
    except KeyError:
        raise InvalidInput(
            f"{where}: the only strings allowed in FP data are {', '.join(_SPECIAL_FLOATS)}"
        ) from None


def _array_and_datatype(where: str, value: Any) -> tuple[Array, str]:
    array = np.asarray(value)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return array, datatype_of(array)
    except TypeError:
        raise TypeError(f"{where}: numpy dtype {array.dtype} has no protocol datatype") from None


def _to_raw(where: str, datatype: str, array: Array) -> bytes:
    if datatype == "BYTES":
        return b"".join(_U32.pack(len(item)) + item for item in _bytes_items(where, array))
    return np.ascontiguousarray(array, dtype=_LITTLE[datatype]).tobytes()


def _bytes_items(where: str, array: Array) -> list[bytes]:
    return [_as_bytes(where, item) for item in array.reshape(-1).tolist()]


def _as_bytes(where: str, item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytearray | memoryview):
        return bytes(item)
    raise TypeError(f"{where}: BYTES element of type {type(item).__name__}; use bytes or str")


def _json_data(where: str, datatype: str, array: Array) -> Any:
    """JSON-ready data for a tensor, or None when only binary data can carry it."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if datatype == "BYTES":
        try:
            return [item.decode("utf-8") for item in _bytes_items(where, flat)]
        except UnicodeDecodeError:
            return None
    if datatype in _FLOATS and not np.isfinite(flat).all():
        return [_float_json(item) for item in flat.tolist()]
    return flat


def _float_json(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


# ---------------------------------------------------------------------------------------------
# gRPC
# ---------------------------------------------------------------------------------------------


def decode_grpc_request(message: pb.ModelInferRequest) -> InferRequest:
    """Decode a `ModelInferRequest`; data may be in `raw_input_contents` or typed `contents`."""
    raw = _raw_contents("raw_input_contents", message.raw_input_contents, len(message.inputs))
    inputs = _decode_grpc_tensors("input", message.inputs, raw)
    outputs = [
        RequestedOutput(o.name, None, get_grpc_parameters(o.parameters, f"output {o.name!r}"))
        for o in message.outputs
    ]
    _refuse_duplicates("output", [output.name for output in outputs])
    return InferRequest(
        inputs=inputs,
        id=message.id or None,
        parameters=get_grpc_parameters(message.parameters, "request"),
        outputs=outputs,
    )


def encode_grpc_response(response: InferResponse) -> pb.ModelInferResponse:
    """Encode a `ModelInferResponse` with the data in `raw_output_contents`, as Triton does."""
    message = pb.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version or "",
        id=response.id or "",
    )
    set_grpc_parameters(message.parameters, response.parameters)
    for name, value in response.outputs.items():
        where = f"output {name!r}"
        array, datatype = _array_and_datatype(where, value)
        message.outputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_output_contents.append(_to_raw(where, datatype, array))
    return message


def encode_grpc_request(
    request: InferRequest, model_name: str, model_version: str = ""
) -> pb.ModelInferRequest:
    """Encode a `ModelInferRequest` as a client sends it (data in `raw_input_contents`)."""
    message = pb.ModelInferRequest(model_name=model_name, model_version=model_version, id=request.id or "")
    set_grpc_parameters(message.parameters, request.parameters)
    for name, value in request.inputs.items():
        where = f"input {name!r}"
        array, datatype = _array_and_datatype(where, value)
        message.inputs.add(name=name, datatype=datatype, shape=array.shape)
        message.raw_input_contents.append(_to_raw(where, datatype, array))
    for output in request.outputs:
        entry = message.outputs.add(name=output.name)
        set_grpc_parameters(entry.parameters, output.parameters)
    return message


def decode_grpc_response(message: pb.ModelInferResponse) -> InferResponse:
    """Decode a `ModelInferResponse` as a client receives it."""
    raw = _raw_contents("raw_output_contents", message.raw_output_contents, len(message.outputs))
    return InferResponse(
        model_name=message.model_name,
        outputs=dict(_decode_grpc_tensors("output", message.outputs, raw)),
        model_version=message.model_version or None,
        id=message.id or None,
        parameters=get_grpc_parameters(message.parameters, "response"),
    )


def to_grpc_parameter(value: ParameterValue) -> pb.InferParameter:
    """An `InferParameter` holding a Python scalar (ints pick int64 or, if too large, uint64)."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return pb.InferParameter(int64_param=value)
        if 0 <= value <= _UINT64_MAX:
            return pb.InferParameter(uint64_param=value)
        raise ValueError(f"parameter value {value} does not fit in 64 bits")
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    if isinstance(value, str):
        return pb.InferParameter(string_param=value)
    raise TypeError(f"parameter values must be bool, int, float or str, not {type(value).__name__}")


def from_grpc_parameter(parameter: pb.InferParameter, where: str = "parameter") -> ParameterValue:
    """The Python scalar an `InferParameter` holds."""
    choice = parameter.WhichOneof("parameter_choice")
    if choice is None:
        raise InvalidInput(f"{where} has no value")
    value: ParameterValue = getattr(parameter, choice)
    return value


def set_grpc_parameters(target: Any, parameters: Mapping[str, ParameterValue]) -> None:
    """Fill a protobuf `map<string, InferParameter>` field from a dict."""
    for key, value in parameters.items():
        target[key].CopyFrom(to_grpc_parameter(value))


def get_grpc_parameters(source: Mapping[str, Any], where: str) -> dict[str, ParameterValue]:
    """A dict from a protobuf `map<string, InferParameter>` field."""
    return {key: from_grpc_parameter(p, f"{where}: parameter {key!r}") for key, p in source.items()}


def _raw_contents(field_name: str, raw: Sequence[bytes], tensors: int) -> list[bytes | None]:
    if not raw:
        return [None] * tensors
    if len(raw) != tensors:
        raise InvalidInput(f"{field_name} has {len(raw)} entries for {tensors} tensors")
    return list(raw)


def _decode_grpc_tensors(kind: str, tensors: Iterable[Any], raw: list[bytes | None]) -> dict[str, Array]:
    decoded: dict[str, Array] = {}
    for index, (tensor, data) in enumerate(zip(tensors, raw, strict=True)):
        name = _tensor_name(kind, index, tensor.name)
        if name in decoded:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        decoded[name] = _decode_grpc_tensor(f"{kind} {name!r}", tensor, data)
    return decoded


def _decode_grpc_tensor(where: str, tensor: Any, raw: bytes | None) -> Array:
    datatype = _datatype(where, tensor.datatype)
    shape = _shape(where, list(tensor.shape))
    _binary_size(where, get_grpc_parameters(tensor.parameters, where))
    if raw is None:
        return _from_contents(where, datatype, shape, tensor.contents)
    if tensor.contents.ListFields():
        raise InvalidInput(f"{where}: has data both in raw contents and in 'contents'")
    return _from_raw(where, datatype, shape, raw)


def _from_contents(where: str, datatype: str, shape: tuple[int, ...], contents: Any) -> Array:
    name = _CONTENTS.get(datatype)
    if name is None:
        raise InvalidInput(f"{where}: {datatype} data can only be sent as raw contents")
    stray = [f.name for f, _ in contents.ListFields() if f.name != name]
    if stray:
        raise InvalidInput(f"{where}: {datatype} data belongs in contents.{name}, not {stray[0]}")
    values = list(getattr(contents, name))
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidInput(f"{where}: {len(values)} values in contents.{name} for shape {list(shape)}")
    if datatype == "BYTES":
        return _object_array(values).reshape(shape)
    if datatype.startswith(("INT", "UINT")):
        _check_int_range(where, datatype, values)
    return np.array(values, dtype=DATATYPES[datatype]).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


def server_metadata_json(name: str, version: str, extensions: Sequence[str] = ()) -> dict[str, Any]:
    """The body of `GET /v2`."""
    return {"name": name, "version": version, "extensions": list(extensions)}


def model_metadata_json(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> dict[str, Any]:
    """The body of `GET /v2/models/{name}`."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": platform,
        "inputs": [spec.as_dict() for spec in inputs],
        "outputs": [spec.as_dict() for spec in outputs],
    }


def model_metadata_grpc(
    name: str,
    versions: Sequence[str],
    platform: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> pb.ModelMetadataResponse:
    """The `ModelMetadataResponse` for the same facts as `model_metadata_json`."""
    return pb.ModelMetadataResponse(**model_metadata_json(name, versions, platform, inputs, outputs))
