"""Open Inference Protocol over HTTP: JSON bodies with the binary tensor data extension."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from modelpod.errors import InvalidInput
from modelpod.protocol.cost import DecodeBudget
from modelpod.protocol.v2_messages import (
    InferRequest,
    InferResponse,
    ParameterValue,
    RequestedOutput,
    _refuse_duplicates,
)
from modelpod.protocol.v2_tensors import (
    Array,
    _array_and_datatype,
    _binary_size,
    _charge,
    _datatype,
    _from_json,
    _from_raw,
    _json_data,
    _raw_view,
    _shape,
    _tensor_name,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The HTTP header that says where the JSON ends and binary tensor data begins."""


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header as an int (None when absent)."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {value!r}")
    return int(value)


def decode_http_request(
    body: bytes | bytearray, header_length: int | None = None, budget: DecodeBudget | None = None
) -> InferRequest:
    """Decode an inference request body (JSON, optionally followed by binary tensor data); tensors
    past the `budget` are refused before their data is read."""
    header, chunks = _split_body(body, header_length)
    doc = _load_object(header, "request")
    inputs = _decode_tensors(doc, "input", chunks, budget)
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
    parts, length = encode_http_response_parts(response, request)
    return b"".join(parts), length


def encode_http_response_parts(
    response: InferResponse, request: InferRequest | None = None
) -> tuple[list[bytes | memoryview], int | None]:
    """`encode_http_response` as the pieces of the body, in order, without joining them: a server
    can send large binary outputs straight from the arrays' memory."""
    binary = _binary_choice(request)
    header: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        header["model_version"] = response.model_version
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    header["outputs"], chunks = _encode_tensors("output", response.outputs, binary)
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return [text, *chunks], (len(text) if chunks else None)


def encode_http_request(request: InferRequest, binary_data: bool = True) -> tuple[bytes, int | None]:
    """Encode a request as a client sends it; inputs go as binary data unless told otherwise."""
    parts, length = encode_http_request_parts(request, binary_data)
    return b"".join(parts), length


def encode_http_request_parts(
    request: InferRequest, binary_data: bool = True
) -> tuple[list[bytes | memoryview], int | None]:
    """`encode_http_request` as the pieces of the body, in order, for a client that sends them
    without joining them (large inputs then go straight from the arrays' memory)."""
    header: dict[str, Any] = {}
    if request.id is not None:
        header["id"] = request.id
    if request.parameters:
        header["parameters"] = request.parameters
    header["inputs"], chunks = _encode_tensors("input", request.inputs, lambda _: binary_data)
    if request.outputs:
        header["outputs"] = [_requested_output_json(output) for output in request.outputs]
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return [text, *chunks], (len(text) if chunks else None)


def decode_http_response(body: bytes | bytearray, header_length: int | None = None) -> InferResponse:
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


def _split_body(body: bytes | bytearray, header_length: int | None) -> tuple[memoryview, _Chunks]:
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


def _binary_choice(request: InferRequest | None) -> Callable[[str], bool]:
    if request is None:
        return lambda _: False
    default = request.parameters.get("binary_data_output") is True
    chosen = {o.name: o.binary_data for o in request.outputs if o.binary_data is not None}
    return lambda name: chosen.get(name, default)


def _decode_tensors(
    doc: Mapping[str, Any], kind: str, chunks: _Chunks, budget: DecodeBudget | None = None
) -> dict[str, Array]:
    items = doc.get(f"{kind}s")
    if items is None:
        raise InvalidInput(f"missing '{kind}s'")
    if not isinstance(items, list):
        raise InvalidInput(f"'{kind}s' must be a list")
    tensors: dict[str, Array] = {}
    for index, item in enumerate(items):
        name, array = _decode_tensor(kind, index, item, chunks, budget)
        if name in tensors:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        tensors[name] = array
    return tensors


def _decode_tensor(
    kind: str, index: int, item: Any, chunks: _Chunks, budget: DecodeBudget | None
) -> tuple[str, Array]:
    if not isinstance(item, dict):
        raise InvalidInput(f"{kind}s[{index}] must be a JSON object")
    name = _tensor_name(kind, index, item.get("name"))
    where = f"{kind} {name!r}"
    datatype = _datatype(where, item.get("datatype"))
    shape = _shape(where, item.get("shape"))
    size = _binary_size(where, _parameters(where, item.get("parameters")))
    _charge(budget, name, datatype, shape)
    if size is None:
        if "data" not in item:
            raise InvalidInput(f"{where}: has neither 'data' nor a binary_data_size parameter")
        return name, _from_json(where, datatype, shape, item["data"])
    if "data" in item:
        raise InvalidInput(f"{where}: has both 'data' and a binary_data_size parameter")
    return name, _from_raw(where, datatype, shape, chunks.take(where, size))


def _encode_tensors(
    kind: str, tensors: Mapping[str, Any], binary: Callable[[str], bool]
) -> tuple[list[dict[str, Any]], list[bytes | memoryview]]:
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for name, value in tensors.items():
        entry, raw = _encode_tensor(f"{kind} {name!r}", name, value, binary(name))
        entries.append(entry)
        if raw is not None:
            chunks.append(raw)
    return entries, chunks


def _encode_tensor(
    where: str, name: str, value: Any, binary: bool
) -> tuple[dict[str, Any], bytes | memoryview | None]:
    array, datatype = _array_and_datatype(where, value)
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    data = None if binary else _json_data(where, datatype, array)
    if data is not None:
        entry["data"] = data
        return entry, None
    raw = _raw_view(where, datatype, array)
    entry["parameters"] = {"binary_data_size": raw.nbytes if isinstance(raw, memoryview) else len(raw)}
    return entry, raw
