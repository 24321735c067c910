"""Open Inference Protocol over gRPC: `ModelInferRequest`/`ModelInferResponse` codecs and parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from modelpod.errors import InvalidInput
from modelpod.protocol._generated import grpc_service_pb2 as pb
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
    _check_int_range,
    _datatype,
    _from_raw,
    _object_array,
    _shape,
    _tensor_name,
    _to_raw,
)
from modelpod.types import DATATYPES

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


def decode_grpc_request(message: pb.ModelInferRequest, budget: DecodeBudget | None = None) -> InferRequest:
    """Decode a `ModelInferRequest`; data may be in `raw_input_contents` or typed `contents`. Tensors
    past the `budget` are refused before their data is read."""
    raw = _raw_contents("raw_input_contents", message.raw_input_contents, len(message.inputs))
    inputs = _decode_grpc_tensors("input", message.inputs, raw, budget)
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


def _decode_grpc_tensors(
    kind: str, tensors: Iterable[Any], raw: list[bytes | None], budget: DecodeBudget | None = None
) -> dict[str, Array]:
    decoded: dict[str, Array] = {}
    for index, (tensor, data) in enumerate(zip(tensors, raw, strict=True)):
        name = _tensor_name(kind, index, tensor.name)
        if name in decoded:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        decoded[name] = _decode_grpc_tensor(name, f"{kind} {name!r}", tensor, data, budget)
    return decoded


def _decode_grpc_tensor(
    name: str, where: str, tensor: Any, raw: bytes | None, budget: DecodeBudget | None
) -> Array:
    datatype = _datatype(where, tensor.datatype)
    shape = _shape(where, list(tensor.shape))
    _binary_size(where, get_grpc_parameters(tensor.parameters, where))
    _charge(budget, name, datatype, shape)
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
