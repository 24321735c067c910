"""Collect a body that arrives in chunks into one buffer, as it arrives.

The memory held grows with the bytes that have arrived, never from a declared length: a client
that declares 500 MB and sends one byte holds a few bytes of the server's memory, not 500 MB.
Arrays decoded from the finished buffer are writable views of it, with no further copy.
"""

from __future__ import annotations


class BodyBuffer:
    """`add` each chunk as it arrives, then take the whole body with `finish`.

    One buffer grows as the chunks arrive: the body is copied once, from the chunks into it. (Past
    a few hundred KB the allocator grows a buffer by remapping its pages, not by copying them, so
    growing costs about what a buffer allocated up front would, without trusting the sender's word
    for its size; joining a list of chunks at the end copied every byte a second time.)
    """

    def __init__(self) -> None:
        self._body = bytearray()

    @property
    def size(self) -> int:
        return len(self._body)

    def add(self, chunk: bytes | bytearray) -> None:
        self._body += chunk

    def finish(self) -> bytearray:
        return self._body
