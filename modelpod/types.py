"""Shared vocabulary: tensor specs, Open Inference Protocol datatypes, model responses, and how a model
batches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

JSONValue = Any
Inputs = dict[str, Any]

# Open Inference Protocol datatype -> numpy dtype. BYTES travel as numpy object arrays of bytes.
DATATYPES: Mapping[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_BY_KIND = {dtype: name for name, dtype in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a protocol datatype name; `KeyError` for an unknown one."""
    return DATATYPES[datatype]


def datatype_of(array: npt.NDArray[Any]) -> str:
    """The protocol datatype name for a numpy array (strings and bytes are BYTES)."""
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return _BY_KIND[array.dtype]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of a model: its datatype and shape (-1 for a variable dimension)."""

    name: str
    datatype: str = "FP32"
    shape: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            known = ", ".join(DATATYPES)
            raise ValueError(f"unknown datatype {self.datatype!r} for {self.name!r}; use one of {known}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def tensor_specs(specs: Sequence[TensorSpec | Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
    """Accept specs written as `TensorSpec` or as plain dicts with the same keys."""
    return tuple(s if isinstance(s, TensorSpec) else TensorSpec(**s) for s in specs)


@dataclass
class Response:
    """A model's own answer with a status code, returned to the client as it is (Cortex style).

    `body` is JSON-encoded unless it is bytes or str, which are sent raw with `media_type`.
    """

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    media_type: str | None = None


@dataclass(frozen=True)
class BatchConfig:
    """How one model version batches. `max_batch_size` 1 means no batching."""

    max_batch_size: int = 1
    max_batch_delay_ms: float = 0.0
    max_queue_size: int = 1024
    preferred_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {self.max_batch_size}")
        if self.max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must not be negative, not {self.max_batch_delay_ms}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be at least 1, not {self.max_queue_size}")
        bad = [size for size in self.preferred_batch_sizes if not 1 <= size <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes must lie in 1..max_batch_size: {bad}")
        object.__setattr__(self, "preferred_batch_sizes", tuple(sorted(set(self.preferred_batch_sizes))))

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "max_queue_size": self.max_queue_size,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
        }
