"""Open Inference Protocol tensors: datatypes, shapes, and conversion to and from raw and JSON data.

The pieces both transports share: validating a tensor's name, datatype and shape, reading
its data from raw bytes (the binary extension, gRPC raw contents) or from JSON, and writing
an array back out. See `modelpod.protocol.v2` for the conventions (BYTES, NaN, copies).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from modelpod.errors import InvalidInput
from modelpod.protocol.cost import DecodeBudget
from modelpod.types import DATATYPES, datatype_of

Array = npt.NDArray[Any]

MAX_ELEMENTS = 1 << 32
"""Shapes claiming more elements than this are refused before anything is allocated."""

_U32 = struct.Struct("<I")
_LITTLE = {name: dtype.newbyteorder("<") for name, dtype in DATATYPES.items() if name != "BYTES"}
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}


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


def _charge(budget: DecodeBudget | None, name: str, datatype: str, shape: tuple[int, ...]) -> None:
    """Charge a tensor's decoded cost to the request's budget, before its data is read."""
    if budget is not None:
        itemsize = 0 if datatype == "BYTES" else DATATYPES[datatype].itemsize
        budget.charge(name, datatype, shape, itemsize)


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
    array = np.frombuffer(raw, dtype=dtype)
    if not array.flags.writeable or array.dtype != DATATYPES[datatype]:
        array = array.astype(DATATYPES[datatype], copy=True)  # a model may write to its inputs
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
    flat, kinds = _flatten(data)
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidInput(f"{where}: {len(flat)} values in 'data' for shape {list(shape)} ({count})")
    if datatype == "BYTES":
        return _json_bytes(where, flat, kinds).reshape(shape)
    return _json_numbers(where, datatype, flat, kinds).reshape(shape)


def _flatten(data: list[Any]) -> tuple[list[Any], set[type]]:
    """Row-major values of nested lists, without recursion (JSON may nest deeply), and their types
    (one pass over a flat list, as most clients send, tells both)."""
    kinds = set(map(type, data))
    if list not in kinds:
        return data, kinds
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
    return flat, set(map(type, flat))


def _json_bytes(where: str, flat: list[Any], kinds: set[type]) -> Array:
    _check_json_types(where, "BYTES", kinds, {str})
    try:
        return _object_array([item.encode("utf-8") for item in flat])
    except UnicodeEncodeError:
        raise InvalidInput(f"{where}: BYTES data holds a string that is not valid Unicode") from None


def _json_numbers(where: str, datatype: str, flat: list[Any], kinds: set[type]) -> Array:
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        _check_json_types(where, datatype, kinds, {bool})
    elif datatype in _FLOATS:
        _check_json_types(where, datatype, kinds, {int, float, str})
        if str in kinds:  # "NaN", "Infinity"...
            flat = [_special_float(where, item) if isinstance(item, str) else item for item in flat]
    else:
        _check_json_types(where, datatype, kinds, {int})
        _check_int_range(where, datatype, flat)
    try:
        with np.errstate(over="ignore"):
            return np.array(flat, dtype=dtype)
    except OverflowError:
        raise InvalidInput(f"{where}: a value is out of range for {datatype}") from None


def _check_json_types(where: str, datatype: str, kinds: set[type], allowed: set[type]) -> None:
    """The values' Python types `kinds` are all `allowed`, or InvalidInput."""
    wrong = kinds - allowed
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
    return bytes(_raw_view(where, datatype, array))


def _raw_view(where: str, datatype: str, array: Array) -> bytes | memoryview:
    """The tensor's bytes on the wire: a view of the array itself when it is already laid out so."""
    if datatype == "BYTES":
        return b"".join(_U32.pack(len(item)) + item for item in _bytes_items(where, array))
    return np.ascontiguousarray(array, dtype=_LITTLE[datatype]).reshape(-1).data.cast("B")


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
