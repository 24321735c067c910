"""gRPC requests whose bytes do not parse: refused as INVALID_ARGUMENT, not grpcio's UNKNOWN.

grpcio answers a request its deserializer cannot parse with `UNKNOWN: Unexpected DecodeError`,
before any handler runs. Here each method's deserializer is wrapped so that such bytes become an
`Unparsable` stand-in instead; the handler's first use of it raises `InvalidInput`, which the
handler answers like any other bad request (and a stream answers on the stream, where
`getattr(request, "id", "")` names the request that failed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from modelpod.errors import InvalidInput

Deserializer = Callable[[bytes], Any]


class UnparsableRequest(InvalidInput, AttributeError):
    """Raised on any use of an `Unparsable`; an AttributeError too, so `getattr(r, f, default)` works."""


class Unparsable:
    """Stands for a request that could not be parsed; any use of it raises `UnparsableRequest`."""

    def __init__(self, message: str) -> None:
        object.__setattr__(self, "_message", message)

    def __getattr__(self, name: str) -> Any:
        raise UnparsableRequest(object.__getattribute__(self, "_message"))

    def __iter__(self) -> Any:
        raise UnparsableRequest(object.__getattribute__(self, "_message"))


def tolerant(deserializer: Deserializer | None) -> Deserializer | None:
    """`deserializer`, giving an `Unparsable` for bytes that are not its message."""
    if deserializer is None:
        return None
    parse = deserializer

    def parsed(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            kind = getattr(getattr(parse, "__self__", None), "__name__", "request")
            return Unparsable(f"the {kind} message cannot be parsed: {error}")

    return parsed


class _Captured:
    """Takes the place of a server for a generated `add_*_to_server`, to read its handlers."""

    service = ""
    handlers: Mapping[str, Any] = {}  # name -> grpc's RpcMethodHandler, a named tuple

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        return

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def add_servicer(add_to_server: Callable[[Any, Any], None], servicer: Any, server: Any) -> None:
    """`add_to_server(servicer, server)` (a generated function), with tolerant deserializers."""
    captured = _Captured()
    add_to_server(servicer, captured)
    handlers = {
        name: handler._replace(request_deserializer=tolerant(handler.request_deserializer))
        for name, handler in captured.handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(captured.service, handlers),))
    server.add_registered_method_handlers(captured.service, handlers)
