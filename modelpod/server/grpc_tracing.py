"""The gRPC edge's share of tracing: a call's span started from its metadata (where a caller's
`traceparent` travels), for unary calls and for streams. With tracing off, a unary call pays one
`None` check and a stream one more generator step per item."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
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


def in_own_span(
    service: InferenceService, model: str, answers: AsyncGenerator[Resp, None], failed: Callable[[Resp], bool]
) -> AsyncGenerator[Resp, None]:
    """One request on a `ModelStreamInfer` stream, in a span of its own within the stream's; with
    tracing off, its answers as they are."""
    tracer = service.tracer
    if tracer is None:
        return answers
    span = tracer.child("grpc ModelStreamInfer request", {"rpc.system": "grpc", "modelpod.model": model})
    return _spanned(span, answers, failed)


async def _spanned(
    span: RequestSpan, answers: AsyncGenerator[Resp, None], failed: Callable[[Resp], bool]
) -> AsyncGenerator[Resp, None]:
    """The answers as they come; the span ends with the last (an error if one `failed`)."""
    status = "OK"
    try:
        async with contextlib.aclosing(answers):
            async for answer in answers:
                if failed(answer):
                    status = "ERROR"
                yield answer
    finally:
        span.finish(status)
