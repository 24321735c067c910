"""msgpack for the native service: keyword arguments in, a method's result out.

numpy arrays travel as msgpack extension types holding their dtype string (byte order
included), shape and raw buffer, so they come back with the same dtype and shape; nothing
is ever pickled. Object arrays may hold only `str` and `bytes` and travel as a list.
Otherwise msgpack's own rules apply: bytes stay bytes, tuples come back as lists, numpy
scalars become the Python scalars they hold.

`pack` raises `TypeError` for a value it cannot carry (a bug in the caller); `unpack`
raises `InvalidInput` for anything malformed (bytes from the network).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from modelpod.errors import InvalidInput

Array = npt.NDArray[Any]

NDARRAY = 1
"""Extension code of a numpy array with a fixed-size dtype: [dtype.str, shape, buffer]."""

OBJECT_NDARRAY = 2
"""Extension code of a numpy object array of str/bytes: [shape, flat items]."""


def pack(obj: Any) -> bytes:
    """msgpack bytes for `obj`; numpy arrays and scalars included."""
    try:
        packed: bytes = msgpack.packb(obj, default=_default, use_bin_type=True)
    except (OverflowError, ValueError) as error:
        raise TypeError(f"cannot pack value: {error}") from None
    return packed


def unpack(data: bytes | bytearray) -> Any:
    """The value `pack` made; `InvalidInput` for anything that is not such a value."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except InvalidInput:
        raise
    except msgpack.StackError:
        raise InvalidInput("malformed msgpack payload: nested too deeply") from None
    except msgpack.FormatError:
        raise InvalidInput("malformed msgpack payload: a byte that starts no msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise InvalidInput(f"malformed msgpack payload: {error}") from None


def unpacker() -> msgpack.Unpacker:
    """`unpack` for values sent back to back (a stream): feed it bytes, iterate it for the values
    complete so far; malformed bytes raise msgpack's errors (ValueError and its kind)."""
    return msgpack.Unpacker(ext_hook=_ext_hook, raw=False, strict_map_key=False)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return _pack_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, int):
        raise TypeError(f"cannot pack integer {obj}: msgpack integers have at most 64 bits")
    raise TypeError(f"cannot pack an object of type {type(obj).__name__}")


def _pack_array(array: Array) -> msgpack.ExtType:
    shape = list(array.shape)
    if array.dtype.kind == "O":
        return msgpack.ExtType(OBJECT_NDARRAY, pack([shape, _text_items(array)]))
    if array.dtype.kind == "V":
        raise TypeError(f"cannot pack a structured array (dtype {array.dtype})")
    payload = [array.dtype.str, shape, array.tobytes(order="C")]
    return msgpack.ExtType(NDARRAY, pack(payload))


def _text_items(array: Array) -> list[Any]:
    items: list[Any] = array.reshape(-1).tolist()
    for item in items:
        if not isinstance(item, str | bytes):
            kind = type(item).__name__
            raise TypeError(f"object arrays may hold only str and bytes, not {kind}")
    return items


def _ext_hook(code: int, data: bytes) -> Array:
    if code == NDARRAY:
        return _unpack_array(unpack(data))
    if code == OBJECT_NDARRAY:
        return _unpack_object_array(unpack(data))
    raise InvalidInput(f"unknown msgpack extension type {code}")


def _unpack_array(payload: Any) -> Array:
    if not (isinstance(payload, list) and len(payload) == 3):
        raise InvalidInput("malformed array: expected [dtype, shape, data]")
    dtype_str, shape, data = payload
    dtype = _dtype(dtype_str)
    shape = _shape(shape)
    if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
        raise InvalidInput(f"malformed array: data does not fill shape {list(shape)} of {dtype}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def _unpack_object_array(payload: Any) -> Array:
    if not (isinstance(payload, list) and len(payload) == 2 and isinstance(payload[1], list)):
        raise InvalidInput("malformed object array: expected [shape, items]")
    shape, items = _shape(payload[0]), payload[1]
    if len(items) != math.prod(shape) or not all(isinstance(i, str | bytes) for i in items):
        raise InvalidInput(f"malformed object array: items do not fill shape {list(shape)}")
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array.reshape(shape)


def _dtype(value: Any) -> np.dtype[Any]:
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except (TypeError, ValueError):
        dtype = None
    if dtype is None or dtype.kind in "OV":
        raise InvalidInput(f"malformed array: unsupported dtype {value!r}")
    return dtype


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise InvalidInput(f"malformed array: shape {value!r} is not a list of sizes")
    return tuple(value)
