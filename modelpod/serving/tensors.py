"""Run a model on Open Inference Protocol tensors.

A tensor model (one that declares `inputs`) gets the arrays as they came, batch first. A model of
keyword arguments gets one call per row: row i of every input tensor becomes one request, and the
results are stacked back into output tensors. One exception keeps a model that does not batch from
being called once per value: when every input is 1-D and none of its parameters is hinted as one
value (`str`, `bytes`, `int`, `float`, `bool`), a model without batching gets one call with the
whole arrays (a list, or the array itself for an `np.ndarray` hint). The same rule holds over
HTTP JSON, HTTP binary and gRPC, since they all come here.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelpod.errors import InvalidInput, ModelError
from modelpod.runtime.inputs import DeclaredTensors
from modelpod.runtime.model import Model
from modelpod.types import TensorSpec, datatype_of

Arrays = dict[str, np.ndarray[Any, Any]]


SCALAR_HINTS = (str, bytes, int, float, bool)
"""Parameter hints that take one value per call: a 1-D tensor to such a parameter is a batch of them."""


def batches(model: Model) -> bool:
    """Whether a model takes many requests at once (it has `predict_batch`, or declares batching)."""
    return model.has_batch() or model.batch_config().enabled


def call_plan(model: Model, inputs: Arrays, batching: bool) -> tuple[int, frozenset[str]]:
    """How many model calls `requests_of` would make (from the shapes alone, checked as it checks
    them), and which inputs reach the model as Python values (lists, numbers, strings), not arrays."""
    if model.is_tensor_model():
        return 1, frozenset()
    rows = _row_count(inputs)
    hints = _hints(model.signature_target())
    boxed = frozenset(name for name in inputs if hints.get(name) is not np.ndarray)
    return (1 if _whole(inputs, hints, batching) else rows), boxed


def certain_rows(model: Model, name: str, shape: Sequence[int], batching: bool) -> int | None:
    """The calls one input's shape means to a keyword model whatever the other inputs are (see
    `_whole`); None for a tensor model, or where the other inputs decide."""
    if model.is_tensor_model() or not shape:
        return None
    if batching or len(shape) >= 2 or _hints(model.signature_target()).get(name) in SCALAR_HINTS:
        return int(shape[0])
    return None


def requests_of(model: Model, inputs: Arrays, batching: bool) -> list[dict[str, Any]]:
    """The model calls a tensor request means: itself for a tensor model, one per row otherwise
    (or one with the whole arrays: see the module's note)."""
    if model.is_tensor_model():
        return [check_declared(inputs, model.input_specs())]
    hints = _hints(model.signature_target())
    rows = _row_count(inputs)
    if _whole(inputs, hints, batching):
        return [{name: _element(array, hints.get(name)) for name, array in inputs.items()}]
    return [
        {name: _element(array[i], hints.get(name)) for name, array in inputs.items()} for i in range(rows)
    ]


def _whole(inputs: Arrays, hints: Mapping[str, Any], batching: bool) -> bool:
    """Whether 1-D tensors are one call's values rather than a batch of calls (see the module's note)."""
    return not batching and all(
        array.ndim == 1 and hints.get(name) not in SCALAR_HINTS for name, array in inputs.items()
    )


def outputs_of(model: Model, results: Sequence[Any]) -> Arrays:
    """The output tensors for the results of `requests_of`'s calls."""
    if model.is_tensor_model():
        return tensor_outputs(results[0], model.output_specs())
    return stack_rows(results, model.output_specs())


def advertised_specs(model: Model) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs the model's metadata names: only what the server knows it takes and
    answers. A tensor model's declared specs; for a model of keyword arguments, each parameter with a
    type hint (an unhinted one takes any datatype, which V2 metadata cannot say, so it is not listed),
    and one output `output` only when `predict`'s return hint says it is one value (a mapping answers
    one output per key, named when it answers)."""
    inputs, outputs = model.input_specs(), model.output_specs()
    if model.is_tensor_model():
        return inputs, outputs
    target = model.signature_target()
    hints = _hints(target)
    if type(model).input_specs is Model.input_specs:
        typed = {name for name, hint in hints.items() if hint is not Any and name != "query_params"}
        inputs = tuple(spec for spec in inputs if spec.name in typed)
    if type(model).output_specs is Model.output_specs and not model.outputs:
        outputs = _answer_specs(hints.get("return"))
    return inputs, outputs


def _answer_specs(hint: Any) -> tuple[TensorSpec, ...]:
    """The one output a return hint promises, if it promises one plain value per row."""
    scalars = {str: "BYTES", bytes: "BYTES", bool: "BOOL", int: "INT64", float: "FP64"}
    return (TensorSpec("output", scalars[hint], (-1,)),) if hint in scalars else ()


def check_declared(inputs: Arrays, specs: Sequence[TensorSpec]) -> DeclaredTensors:
    """Tensors must be the ones the model declares, in its datatypes (no silent conversion). Checked
    here, once: the runner's preparer then checks only their shapes (see `DeclaredTensors`)."""
    declared = {spec.name: spec for spec in specs}
    for name, array in inputs.items():
        spec = declared.get(name)
        if spec is None:
            raise InvalidInput(f"unknown input {name!r}; the model takes {sorted(declared)}")
        datatype = datatype_of(array)
        if datatype != spec.datatype:
            raise InvalidInput(f"input {name!r} is {datatype}, but the model declares {spec.datatype}")
    return DeclaredTensors(inputs)


def tensor_outputs(output: Any, specs: Sequence[TensorSpec]) -> Arrays:
    """A tensor model's return value (array, tensor, tuple or mapping) as named arrays."""
    if isinstance(output, Mapping):
        return {str(name): _to_array(value) for name, value in output.items()}
    if isinstance(output, tuple):
        if len(output) > len(specs):
            raise ModelError(f"the model returned {len(output)} outputs but declares {len(specs)}")
        return {spec.name: _to_array(value) for spec, value in zip(specs, output, strict=False)}
    return {specs[0].name: _to_array(output)}


def stack_rows(results: Sequence[Any], specs: Sequence[TensorSpec]) -> Arrays:
    """Per-row results as tensors: mappings give one output per key, anything else one output."""
    if results and all(isinstance(r, Mapping) for r in results):
        keys = list(results[0])
        return {str(key): _stack([r.get(key) for r in results]) for key in keys}
    return {specs[0].name: _stack(list(results))}


def _row_count(inputs: Arrays) -> int:
    if not inputs:
        raise InvalidInput("the request has no inputs")
    for name, array in inputs.items():
        if array.ndim == 0:
            raise InvalidInput(f"input {name!r} has shape []: give it a batch dimension, one row per request")
    rows: dict[str, int] = {name: int(array.shape[0]) for name, array in inputs.items()}
    if len(set(rows.values())) != 1:
        raise InvalidInput(f"inputs must have the same first dimension (one row per request): {rows}")
    return next(iter(rows.values()))


def _element(row: Any, hint: Any) -> Any:
    """One row of an input tensor as the Python value the model's type hint asks for."""
    if isinstance(row, np.ndarray):
        if hint is np.ndarray:
            return row
        if row.dtype != np.object_:
            return row.tolist()  # numbers: the same Python values, made in C
        return [_element(x, None) for x in row]
    if isinstance(row, bytes) and hint is not bytes:
        try:
            return row.decode()
        except UnicodeDecodeError:
            return row
    return row.item() if isinstance(row, np.generic) else row


def _stack(values: list[Any]) -> np.ndarray[Any, Any]:
    if all(isinstance(v, str | bytes) for v in values):
        return np.array([v.encode() if isinstance(v, str) else v for v in values], dtype=np.object_)
    try:
        array = np.asarray([_to_array(v) for v in values])
    except ValueError:
        array = None
    if array is None or array.dtype == np.object_:  # ragged or mixed: one JSON document per row
        return np.array([json.dumps(_jsonable(v)).encode() for v in values], dtype=np.object_)
    return array


def _to_array(value: Any) -> np.ndarray[Any, Any]:
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16 (CPU mixed precision gives it)
            value = value.float()
        value = value.numpy()
    if isinstance(value, str):
        return np.array([value.encode()], dtype=np.object_)
    return np.asarray(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _hints(target: Any) -> Mapping[str, Any]:
    """The type hints of `predict` (their origins: `list` for `list[float]`), read once per function:
    every tensor request asks, and reading them costs more than the rest of the mapping."""
    function = getattr(target, "__func__", target)
    try:
        return _function_hints(function)
    except TypeError:  # a callable that cannot be hashed: read its hints each time
        return _function_hints.__wrapped__(function)


@functools.lru_cache(maxsize=1024)
def _function_hints(function: Any) -> Mapping[str, Any]:
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        return {}
    return types.MappingProxyType({name: typing.get_origin(hint) or hint for name, hint in hints.items()})
