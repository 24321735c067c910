"""A response's head and the start of its body in one write to the socket.

uvicorn writes a response's status line and headers with one `transport.write`, and each body
message with another: two `send` system calls for every small answer, a fifth of the event loop's
time in an echo benchmark. This transport, one per request, holds the head until the body's first
bytes (which Starlette sends in the same turn of the event loop) and hands both to the socket
together. A head that no body follows within that turn (a stream waiting for its first item, a
HEAD request) is written at the end of the turn, so a client never waits for its headers.
"""

from __future__ import annotations

import asyncio
from typing import Any


class CoalescedWrites:
    """Wraps one request's transport: its first write (the head) waits for the next, up to the end
    of the event loop's turn. Everything else passes through."""

    __slots__ = ("_first", "_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._first = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held is not None:
            head, self._held = self._held, None
            self._transport.writelines([head, data])  # one vectored send, no copy of the body
            return
        if self._first and not bytes(data[:10]).startswith(b"HTTP/1.1 1"):  # 100 Continue: at once
            self._first = False
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if it is still held."""
        if self._held is not None:
            head, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, abort...
        return getattr(self._transport, name)
