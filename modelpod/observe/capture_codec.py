"""What a model was asked and answered, as JSON and back: the format of captured payloads.

JSON carries strings, numbers, booleans, None, lists and string-keyed objects as they are. The rest
is tagged, so that a reader gets back exactly what the model saw:

- a numpy array: `{"__ndarray__": {"dtype": "<f4", "shape": [2, 3], "base64": "..."}}` (its bytes,
  exact); an array of Python objects (strings) keeps its items instead, `"items": [...]`;
- bytes: `{"__bytes__": "<base64>"}`;
- anything else: `{"__repr__": "..."}` (not given back as it was: replay skips such a request).

An array or bytes over `max_bytes` is not stored: its place says so, `{"__ndarray__": {"dtype",
"shape", "nbytes", "truncated": true}}` or `{"__bytes__": null, "nbytes": N, "truncated": true}`,
and the encoder counts it (`Encoder.truncated`). The capture replaces such values by their
`Oversized` description as soon as a request is sampled (`lightened`), so its queue never holds them.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

ARRAY = "__ndarray__"
BYTES = "__bytes__"
REPR = "__repr__"
_TAGS = (ARRAY, BYTES, REPR)
_PLAIN = frozenset((str, bool, int, type(None)))  # JSON's own: written as they are


@dataclass(frozen=True, slots=True)
class Oversized:
    """What is kept of an array or bytes over the size limit when a request is sampled: its
    description, not its data (so that a full queue holds no large tensors)."""

    dtype: str  # numpy's dtype string, or "bytes"
    shape: tuple[int, ...]
    nbytes: int


def lightened(value: Any, max_bytes: int | None) -> Any:
    """`value` with each array or bytes over `max_bytes` (itself, or an object's field) replaced by
    its `Oversized` description; the value itself when nothing is."""
    if max_bytes is None:
        return value
    if isinstance(value, dict | Mapping):  # dict first: the common case, without the abstract check
        for item in value.values():
            if _oversized(item, max_bytes):
                break
        else:
            return value
        return {key: _described(item) if _oversized(item, max_bytes) else item for key, item in value.items()}
    return _described(value) if _oversized(value, max_bytes) else value


def _oversized(value: Any, max_bytes: int) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind != "O" and value.nbytes > max_bytes
    return isinstance(value, bytes | bytearray) and len(value) > max_bytes


def _described(value: Any) -> Oversized:
    if isinstance(value, np.ndarray):
        return Oversized(value.dtype.str, tuple(value.shape), int(value.nbytes))
    return Oversized("bytes", (), len(value))


class Encoder:
    """Turns one record's values into JSON's values; `truncated` counts what was left out."""

    def __init__(self, max_bytes: int | None) -> None:
        self.max_bytes = max_bytes
        self.truncated = 0
        self.non_finite = False  # a float NaN or infinity was met: JSON has no literal for them

    def encode(self, value: Any) -> Any:
        # The exact types nearly every captured value has, by a look-up first; subclasses and the
        # abstract `Mapping` (whose `isinstance` costs several times more) after.
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is dict:
            return {str(key): self.encode(item) for key, item in value.items()}
        if kind is list:
            return [self.encode(item) for item in value]
        if kind is np.ndarray:
            return self._array(value)
        if isinstance(value, float):  # and its subclasses (numpy's float64)
            if not math.isfinite(value):
                self.non_finite = True
            return value
        if isinstance(value, str | int):  # their subclasses (bool is an int), None is in _PLAIN
            return value
        if isinstance(value, list | tuple):
            return [self.encode(item) for item in value]
        if isinstance(value, np.ndarray):
            return self._array(value)
        if isinstance(value, Mapping):
            return {str(key): self.encode(item) for key, item in value.items()}
        if isinstance(value, Oversized):
            self.truncated += 1
            if value.dtype == "bytes":
                return {BYTES: None, "nbytes": value.nbytes, "truncated": True}
            facts = {
                "dtype": value.dtype,
                "shape": list(value.shape),
                "nbytes": value.nbytes,
                "truncated": True,
            }
            return {ARRAY: facts}
        if isinstance(value, np.generic):
            return self._bytes(value.tobytes()) if isinstance(value, np.bytes_ | np.void) else value.item()
        if isinstance(value, bytes | bytearray | memoryview):
            return self._bytes(bytes(value))
        return {REPR: repr(value)[:1000]}

    def _too_big(self, size: int) -> bool:
        return self.max_bytes is not None and size > self.max_bytes

    def _array(self, array: np.ndarray[Any, Any]) -> dict[str, Any]:
        facts: dict[str, Any] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        if array.dtype.kind == "O":
            facts["dtype"] = "object"
            facts["items"] = [self.encode(item) for item in array.ravel().tolist()]
        elif self._too_big(array.nbytes):
            self.truncated += 1
            facts |= {"nbytes": int(array.nbytes), "truncated": True}
        else:
            facts["base64"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
        return {ARRAY: facts}

    def _bytes(self, data: bytes) -> dict[str, Any]:
        if self._too_big(len(data)):
            self.truncated += 1
            return {BYTES: None, "nbytes": len(data), "truncated": True}
        return {BYTES: base64.b64encode(data).decode("ascii")}


class Incomplete(ValueError):
    """A captured value that was truncated or could not be stored: it cannot be sent again."""


def decode(value: Any) -> Any:
    """A value as the model saw it, from what `Encoder.encode` made; `Incomplete` for a value that
    was left out or stored as its repr."""
    if isinstance(value, list):
        return [decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    tag = next((key for key in _TAGS if key in value), None)
    if tag == ARRAY:
        return _decode_array(value[ARRAY])
    if tag == BYTES:
        if value[BYTES] is None:
            raise Incomplete(f"bytes of {value.get('nbytes')} were over the capture's size limit")
        return base64.b64decode(value[BYTES])
    if tag == REPR:
        raise Incomplete(f"a value that JSON cannot hold was captured as {value[REPR][:80]!r}")
    return {key: decode(item) for key, item in value.items()}


def _decode_array(facts: Mapping[str, Any]) -> np.ndarray[Any, Any]:
    shape = tuple(facts["shape"])
    if facts["dtype"] == "object":
        items = np.empty(len(facts["items"]), dtype=object)
        items[:] = [decode(item) for item in facts["items"]]
        return items.reshape(shape)
    if facts.get("truncated"):
        raise Incomplete(f"an array of {facts.get('nbytes')} bytes was over the capture's size limit")
    data = base64.b64decode(facts["base64"])
    return np.frombuffer(data, dtype=np.dtype(facts["dtype"])).reshape(shape).copy()
