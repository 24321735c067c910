"""Collect a body that arrives in chunks into one buffer, as it arrives.

The buffer grows with the bytes that have arrived, never from a declared length: a client that
declares 500 MB and sends one byte holds one byte of the server's memory, not 500 MB. Arrays
decoded from the finished buffer are writable views of it, with no further copy.
"""

from __future__ import annotations


class BodyBuffer:
    """`add` each chunk as it arrives, then take the whole body with `finish`.

    A bytearray appended in place: it over-allocates as it grows (and large ones are grown by
    the allocator remapping pages, not copying them), so a 64 MiB body costs about one copy of
    its bytes, like a buffer allocated up front, without trusting the sender's word for its size.
    """

    def __init__(self) -> None:
        self._data = bytearray()

    @property
    def size(self) -> int:
        return len(self._data)

    def add(self, chunk: bytes) -> None:
        self._data += chunk

    def finish(self) -> bytearray:
        return self._data
