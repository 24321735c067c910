"""The seam between a client and the wire: one method that sends one operation.

A transport takes an `Operation` (see `_operations`), sends it, and returns the decoded
result, or raises a typed error from `modelpod.errors`. It knows nothing about retries,
model discovery or versions: the client does those once, for every transport.

Each transport is a pure codec (operation -> request, reply -> result, failure -> typed
error) shared by its blocking and asyncio flavours, plus a few lines of I/O per flavour:

    class Echo(Transport):  # a transport that answers every predict with its arguments
        address = "echo"

        def send(self, operation, timeout):
            if isinstance(operation, Call) and operation.method == "predict":
                return dict(operation.arguments)
            raise NotFound(f"{operation} is not answered here")

        def close(self):
            pass
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Generator
from typing import Any, TypeVar

from modelpod.client._operations import Call, Operation

T = TypeVar("T")


class Transport(abc.ABC):
    """Sends operations over one connection (pool) that every client of a family shares."""

    address: str

    @abc.abstractmethod
    def send(self, operation: Operation[T], timeout: float | None) -> T:
        """The result of `operation`; a typed error if the server refused it or cannot be reached."""

    def stream(self, call: Call, timeout: float | None) -> Generator[Any, None, None]:
        """The items of a call whose answer streams, as they arrive (`timeout`: per item); closing
        the generator ends the call. A transport that cannot stream gives `send`'s result alone."""
        yield self.send(call, timeout)

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; sending afterwards raises `RuntimeError`."""


class AsyncTransport(abc.ABC):
    """`Transport` for asyncio."""

    address: str

    @abc.abstractmethod
    async def send(self, operation: Operation[T], timeout: float | None) -> T:
        """The result of `operation`; a typed error if the server refused it or cannot be reached."""

    async def stream(self, call: Call, timeout: float | None) -> AsyncGenerator[Any, None]:
        """See `Transport.stream`."""
        yield await self.send(call, timeout)

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; sending afterwards raises `RuntimeError`."""
