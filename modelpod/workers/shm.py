"""Values across a process boundary: msgpack for the structure, shared memory for large arrays.

`Encoder.encode(value)` gives msgpack bytes in which every numpy array of at least `threshold`
bytes is only a reference, `[dtype, shape, offset]`, into a shared-memory block; the encoder
remembers the arrays and their offsets, and `Encoder.write(buffer)` copies them into the block
once the block is known to be large enough. `decode(data, buffer)` rebuilds the value, copying
each referenced array out of the block. So a large array is copied twice per crossing (into
the block, out of it) and never serialized or pushed through a pipe. Everything else travels
in the msgpack bytes: small arrays through `modelpod.protocol.native`, tuples as tuples,
`ModelpodError`s with their type, message and error id, and a model's own `Response`.
Nothing is ever pickled.

`Block` is a `multiprocessing.shared_memory.SharedMemory` that the creating side reserves in
full when it is made (so a full /dev/shm is an `OSError` then, not a SIGBUS later) and
unlinks when it is done with it. Block names start with `modelpod-`.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from multiprocessing import shared_memory
from typing import Any

import msgpack
import numpy as np

from modelpod import errors
from modelpod.errors import ModelError, ModelpodError, ProcessorError, Unavailable
from modelpod.protocol import native
from modelpod.types import Response

BLOCK_PREFIX = "modelpod-"
DEFAULT_THRESHOLD = 64 * 1024
"""Arrays of at least this many bytes travel through shared memory."""

_ALIGN = 64
_MIB = 1024 * 1024

# msgpack extension codes of this codec (0-127 are the application's)
_NATIVE = 16  # a value `native.pack` carries (a small array): its native bytes
_SHARED = 17  # an array in the shared block: [dtype.str, shape, offset]
_ERROR = 18  # a ModelpodError: [class names, most specific first, message, error id, processor, ...]
_RESPONSE = 19  # a model's own Response: [body, status, headers, media_type]
_TUPLE = 20  # a tuple, so that it does not come back as a list


class Encoder:
    """Turns values into msgpack bytes, putting large arrays aside for a shared block.

    `threshold=None` puts every array into the bytes themselves (no shared memory).
    """

    def __init__(self, threshold: int | None = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self.size = 0  # bytes of shared block the arrays put aside need
        self._arrays: list[tuple[int, np.ndarray[Any, Any]]] = []

    def encode(self, value: Any) -> bytes:
        """msgpack bytes for `value`; `TypeError` (and nothing put aside) for what cannot travel."""
        size, count = self.size, len(self._arrays)
        try:
            return self._pack(value)
        except BaseException:
            self.size, self._arrays[count:] = size, []  # forget what the failed value put aside
            raise

    def write(self, buffer: memoryview) -> None:
        """Copy the arrays put aside into `buffer` (at least `size` bytes) at their offsets."""
        for offset, array in self._arrays:
            target: np.ndarray[Any, Any] = np.ndarray(array.shape, array.dtype, buffer=buffer, offset=offset)
            np.copyto(target, array, casting="no")

    def _pack(self, value: Any) -> bytes:
        try:
            packed: bytes = msgpack.packb(value, default=self._default, use_bin_type=True, strict_types=True)
        except (OverflowError, ValueError) as error:
            raise TypeError(f"cannot pack value: {error}") from None
        return packed

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            return self._array(obj)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple):
            return msgpack.ExtType(_TUPLE, self._pack(list(obj)))
        if isinstance(obj, ModelpodError):
            return msgpack.ExtType(_ERROR, self._pack(_error_fields(obj)))
        if isinstance(obj, Response):
            fields = [obj.body, obj.status, dict(obj.headers), obj.media_type]
            return msgpack.ExtType(_RESPONSE, self._pack(fields))
        # strict_types sends subclasses here: carry them as the plain type they extend
        plain: type[Any]
        for plain in (str, int, float, bytes, list, dict):
            if isinstance(obj, plain):
                return plain(obj)
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise TypeError(f"cannot send a {type(obj).__name__} to another process")

    def _array(self, array: np.ndarray[Any, Any]) -> msgpack.ExtType:
        if self.threshold is None or array.nbytes < self.threshold or array.dtype.kind in "OV":
            return msgpack.ExtType(_NATIVE, native.pack(array))
        offset = -(-self.size // _ALIGN) * _ALIGN
        self.size = offset + array.nbytes
        self._arrays.append((offset, array))
        return msgpack.ExtType(_SHARED, native.pack([array.dtype.str, list(array.shape), offset]))


def decode(data: bytes, buffer: memoryview | None = None) -> Any:
    """The value `Encoder.encode` made; arrays it put aside are copied out of `buffer`."""

    def hook(code: int, payload: bytes) -> Any:
        if code == _NATIVE:
            return native.unpack(payload)
        if code == _SHARED:
            return _shared_array(native.unpack(payload), buffer)
        if code == _TUPLE:
            return tuple(decode(payload, buffer))
        if code == _ERROR:
            return _error_from(decode(payload, buffer))
        if code == _RESPONSE:
            body, status, headers, media_type = decode(payload, buffer)
            return Response(body, status, headers, media_type)
        raise ValueError(f"unknown extension type {code}")

    return msgpack.unpackb(data, ext_hook=hook, raw=False, strict_map_key=False)


def _shared_array(fields: list[Any], buffer: memoryview | None) -> np.ndarray[Any, Any]:
    dtype_str, shape, offset = fields
    if buffer is None:
        raise ValueError("an array refers to a shared block, and none was given")
    count = math.prod(shape)
    array = np.frombuffer(buffer, dtype=np.dtype(dtype_str), count=count, offset=offset)
    return array.reshape(shape).copy()


# -- errors ----------------------------------------------------------------------------------------

_ERROR_CLASSES: dict[str, type[ModelpodError]] = {
    name: cls
    for name, cls in vars(errors).items()
    if isinstance(cls, type) and issubclass(cls, ModelpodError)
}


def _error_fields(error: ModelpodError) -> list[Any]:
    names = [cls.__name__ for cls in type(error).__mro__ if issubclass(cls, ModelpodError)]
    return [
        names,
        error.message,
        getattr(error, "error_id", None),
        getattr(error, "processor", None),
        getattr(error, "retry_after", None),
        bool(error.from_model),
    ]


def _error_from(fields: list[Any]) -> ModelpodError:
    """The error again, as the most specific class of `modelpod.errors` it was an instance of."""
    names, message, error_id, processor, retry_after, from_model = fields
    cls = next((_ERROR_CLASSES[n] for n in names if n in _ERROR_CLASSES), ModelpodError)
    error: ModelpodError
    if issubclass(cls, ProcessorError):
        error = cls(processor or "", message, error_id)
    elif issubclass(cls, ModelError):
        error = cls(message, error_id)
    elif issubclass(cls, Unavailable):
        error = cls(message, retry_after)
    else:
        error = cls(message)
    if from_model:
        error.from_model = True
    return error


# -- shared blocks -------------------------------------------------------------------------------


class Block:
    """One shared-memory block: made (and reserved) by its owner, attached by the other side."""

    def __init__(self, memory: shared_memory.SharedMemory, owner: bool) -> None:
        self._memory = memory
        self.owner = owner
        self.name: str = memory.name
        self.size: int = memory.size

    @classmethod
    def create(cls, size: int) -> Block:
        """A new block of at least `size` bytes; `OSError` when /dev/shm has no room for it."""
        size = max(-(-size // _MIB) * _MIB, _MIB)
        name = f"{BLOCK_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        memory = shared_memory.SharedMemory(name=name, create=True, size=size)
        block = cls(memory, owner=True)
        fd = getattr(memory, "_fd", -1)
        if fd >= 0 and hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(fd, 0, size)  # reserve it now: a full tmpfs raises here, not SIGBUS
            except OSError:
                block.release()
                raise
        return block

    @classmethod
    def attach(cls, name: str) -> Block:
        return cls(shared_memory.SharedMemory(name=name), owner=False)

    @property
    def buffer(self) -> memoryview:
        buffer = self._memory.buf
        assert buffer is not None, "the block was released"
        return buffer

    def release(self) -> None:
        """Unmap it; the owner also unlinks it, so the memory goes once nobody maps it."""
        try:
            self._memory.close()
        finally:
            if self.owner:
                with contextlib.suppress(FileNotFoundError):
                    self._memory.unlink()


def grown(block: Block | None, needed: int) -> Block:
    """`block` when it holds `needed` bytes; otherwise a new block (the old one is released)."""
    if block is not None and block.size >= needed:
        return block
    new = Block.create(needed + needed // 4)
    if block is not None:
        block.release()
    return new
