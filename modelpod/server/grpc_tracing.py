"""The gRPC edge's share of tracing: a call's span started from its metadata (where a caller's
`traceparent` travels), for unary calls and for streams. With tracing off, a unary call pays one
`None` check and a stream one more generator step per item."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from modelpod.observe.events import RequestSpan
from modelpod.serving.service import InferenceService

Req = TypeVar("Req")
Resp = TypeVar("Resp")
StreamHandler = Callable[[Any, Req, Any], AsyncIterator[Resp]]


UNTRACED = frozenset({"ServerLive", "ServerReady"})  # health probes: a span each would bury the calls


def call_span(service: InferenceService, metadata: Mapping[str, Any], name: str) -> RequestSpan | None:
    """The call's span, continuing the caller's trace; None when tracing is off."""
    if service.tracer is None or name in UNTRACED:
        return None
    return service.tracer.start(metadata, f"grpc {name}", {"rpc.system": "grpc", "rpc.method": name})


def finish(span: RequestSpan | None, status: str, error_id: str = "") -> None:
    if span is not None:
        span.finish(status, error_id)


def traced_stream(handler: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """A streaming RPC in one span, from its start to its last response (its status: the code
    the call ended with, which an abort sets)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: Any) -> AsyncIterator[Resp]:
        span = call_span(self.service, dict(context.invocation_metadata() or ()), handler.__name__)
        try:
            async for response in handler(self, request, context):
                yield response
        finally:
            code = context.code() if hasattr(context, "code") else None
            finish(span, getattr(code, "name", None) or "OK")

    return wrapper
