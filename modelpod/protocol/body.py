"""Collect a body that arrives in chunks into one buffer, copied once.

When its length is declared the buffer is allocated once and filled in place; arrays decoded from
it can then be writable views of it rather than copies.
"""

from __future__ import annotations


class BodyBuffer:
    """`add` each chunk as it arrives, then take the whole body with `finish`."""

    def __init__(self, declared: int | None = None) -> None:
        self._data = bytearray(declared) if declared is not None else bytearray()
        self._declared = declared
        self.size = 0

    def add(self, chunk: bytes) -> None:
        end = self.size + len(chunk)
        if self._declared is not None and end <= self._declared:
            self._data[self.size : end] = chunk
        else:  # longer than declared, or not declared: grow as it comes
            del self._data[self.size :]
            self._data += chunk
        self.size = end

    def finish(self) -> bytearray:
        del self._data[self.size :]  # shorter than declared
        return self._data
