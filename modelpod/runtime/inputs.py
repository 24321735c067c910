"""Input preparation: reject None, normalise sequences, convert to arrays or tensors, check shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpod.errors import InvalidInput
from modelpod.runtime.model import RESERVED_BYTES_ARGUMENT, Model
from modelpod.types import TensorSpec, numpy_dtype

CONVERSIONS = (None, "numpy", "torch")


class DeclaredTensors(dict[str, Any]):
    """A tensor model's inputs as a server received them, their names and datatypes already checked
    against the model's declared inputs (`serving.tensors.check_declared`, strict: over the wire a
    datatype is never converted silently). The preparer does not convert them again: it checks their
    shapes, the one property not checked at the edge (where `add_batch_dim` is not known)."""


@dataclass
class Prepared:
    """Inputs ready for the model, and how to undo the batch dimension on its output."""

    values: dict[str, Any]
    squeeze: bool = False

    def restore(self, output: Any) -> Any:
        return _drop_batch_dim(output) if self.squeeze else output


class InputPreparer:
    """Turns a request's fields into what the model's `predict` expects."""

    def __init__(self, model: Model, convert: str | None = None, add_batch_dim: bool = False) -> None:
        if convert not in CONVERSIONS:
            raise ValueError(f"convert must be one of {CONVERSIONS}, not {convert!r}")
        if add_batch_dim and not model.is_tensor_model():
            raise ValueError("add_batch_dim needs a tensor model: declare its `inputs`")
        self.convert = convert
        self.add_batch_dim = add_batch_dim
        self.device = model.device
        self._specs = {spec.name: spec for spec in model.input_specs()} if model.is_tensor_model() else {}
        self._first = next(iter(model.input_specs()), None)

    def merge_positional(self, args: tuple[Any, ...], inputs: dict[str, Any]) -> dict[str, Any]:
        """`predict(x)` means `predict(<first input>=x)`."""
        if not args:
            return inputs
        if len(args) > 1 or self._first is None:
            raise InvalidInput("pass the inputs as keyword arguments (one positional argument at most)")
        if self._first.name in inputs:
            raise InvalidInput(f"input {self._first.name!r} given both positionally and by name")
        return {self._first.name: args[0], **inputs}

    def prepare(self, inputs: Mapping[str, Any] | None, where: str = "") -> Prepared:
        if inputs is None:
            raise InvalidInput(f"{where}the request has no inputs (got None)")
        values: dict[str, Any] = {}
        squeezed = set()
        declared = isinstance(inputs, DeclaredTensors)
        for name, value in inputs.items():
            if value is None:
                raise InvalidInput(f"{where}input {name!r} is None")
            if isinstance(value, tuple):
                value = list(value)
            spec = self._specs.get(name)
            if (
                name == RESERVED_BYTES_ARGUMENT
                and spec is None
                and not isinstance(value, bytes | bytearray | memoryview)
            ):
                raise InvalidInput(
                    f"{where}input {name!r} is reserved for raw bytes, got {type(value).__name__}"
                )
            if spec is not None:
                if not declared:  # (a server's tensors are arrays of the declared datatype already)
                    value = _as_array(value, spec, where)
                if self.add_batch_dim and value.ndim == len(spec.shape) - 1:
                    value = value[np.newaxis, ...]
                    squeezed.add(name)
                _check_shape(value, spec, where)
            values[name] = self._convert(value, name, where)
        # take the batch dimension off the output only when every tensor input was unbatched
        batched = {name for name in values if name in self._specs}
        return Prepared(values, squeeze=bool(squeezed) and squeezed == batched)

    def _convert(self, value: Any, name: str, where: str) -> Any:
        if self.convert is None:
            return value
        if _is_torch_tensor(value):  # a tensor already: move it, or hand numpy its data
            if self.convert == "torch":
                return value.to(self.device)
            return value.detach().cpu().numpy()
        if not isinstance(value, list | np.ndarray):
            return value
        try:
            array = np.asarray(value)
        except ValueError as error:
            raise InvalidInput(f"{where}input {name!r} is not a regular array: {error}") from None
        if self.convert == "numpy":
            return array
        if array.dtype.kind not in "biufc":  # text or objects: torch has no tensor for them
            return value
        import torch

        return torch.as_tensor(array).to(self.device)


def _is_torch_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "to")


def _as_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray[Any, Any]:
    if type(value).__module__.startswith("torch"):
        return value  # type: ignore[no-any-return]  # tensors keep their own dtype and device
    try:
        return np.asarray(value, dtype=numpy_dtype(spec.datatype))
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"{where}input {spec.name!r} is not a {spec.datatype} array: {error}") from None


def _check_shape(value: Any, spec: TensorSpec, where: str) -> None:
    shape = tuple(value.shape)
    expected = spec.shape
    fits = len(shape) == len(expected) and all(e < 0 or e == s for s, e in zip(shape, expected, strict=True))
    if not fits:
        raise InvalidInput(
            f"{where}input {spec.name!r} has shape {list(shape)}, expected {list(expected)} (-1: any size)"
        )


def _drop_batch_dim(output: Any) -> Any:
    if isinstance(output, Mapping):
        return {key: _drop_batch_dim(value) for key, value in output.items()}
    if isinstance(output, tuple):  # several outputs
        return tuple(_drop_batch_dim(value) for value in output)
    if hasattr(output, "shape") and len(output.shape) > 0:
        return output[0]
    return output


RESERVED_FIELDS = frozenset({"self"})
"""Field names the call path itself takes: `Runner.predict(self, **inputs)` (and the worker-process
runner's) would get `self` twice. A request may not name a field so; every predict, over every
transport, is checked here before it is queued."""


def check_field_names(request: Mapping[str, Any]) -> None:
    """Refuse a request that names a reserved field, naming it (an InvalidInput: 400 / INVALID_ARGUMENT)."""
    for name in RESERVED_FIELDS:  # a lookup per reserved name: no cost that grows with the request
        if name in request:
            raise InvalidInput(
                f"input {name!r} is a reserved name (the call path's own parameter): rename that input"
            )
