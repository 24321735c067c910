"""Collect a body that arrives in chunks into one buffer, as it arrives.

The memory held grows with the bytes that have arrived, never from a declared length: a client
that declares 500 MB and sends one byte holds a few bytes of the server's memory, not 500 MB.
Arrays decoded from the finished buffer are writable views of it, with no further copy.
"""

from __future__ import annotations

PART = 64 * 1024  # bytes: chunks smaller than this are gathered into parts of about this size


class BodyBuffer:
    """`add` each chunk as it arrives, then take the whole body with `finish`.

    The chunks are kept as they come and joined once at the end: one copy of the body, as a buffer
    allocated up front would cost, without trusting the sender's word for its size. Small chunks
    are gathered into parts first, so that a body sent a few bytes at a time costs no more than
    its bytes (a list entry per chunk would cost many times each one).
    """

    def __init__(self) -> None:
        self._parts: list[bytes | bytearray] = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        last = self._parts[-1] if self._parts else None
        if len(chunk) >= PART:
            self._parts.append(chunk)
        elif isinstance(last, bytearray) and len(last) < PART:
            last += chunk
        else:
            self._parts.append(bytearray(chunk))

    def finish(self) -> bytearray:
        if len(self._parts) == 1 and isinstance(self._parts[0], bytearray):
            return self._parts[0]
        body = bytearray().join(self._parts)
        self._parts = [body]
        return body
