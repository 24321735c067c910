"""OpenAI's streams: each chunk as a server-sent event `data: {...}`, the last one `data: [DONE]`.

Unlike modelpod's own event streams, OpenAI's events carry no names, and an error midway is a chunk
`{"error": {...}}` (which the official client raises). As with every stream here, however the
response ends, its client hanging up included, the chunks are closed: the model's generator stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from modelpod.errors import ModelError, ModelpodError
from modelpod.protocol import jsoncodec, openai_shapes
from modelpod.server.endpoints import unless_disconnected

logger = logging.getLogger("modelpod.http")

_NOTHING: Any = object()
_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class ChunkStream(StreamingResponse):
    def __init__(self, chunks: AsyncGenerator[dict[str, Any], None], first: Any) -> None:
        self.chunks = chunks
        self._first = first
        self._events = self._frames()
        super().__init__(self._events, media_type="text/event-stream", headers=_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # the request may be cancelled: close anyway
                await self._events.aclose()
                await self.chunks.aclose()

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        chunk = self._first
        while chunk is not _NOTHING:
            yield _event(chunk)
            try:
                chunk = await anext(self.chunks, _NOTHING)
            except ModelpodError as error:
                yield _event(openai_shapes.error(error)[1])
                return
            except Exception:
                failure = ModelError("internal server error")
                logger.exception("error id %s: a /v1 stream failed", failure.error_id)
                yield _event(openai_shapes.error(failure)[1])
                return
        yield openai_shapes.DONE_EVENT


async def open_stream(request: Request, chunks: AsyncGenerator[dict[str, Any], None]) -> Response:
    """Wait for the first chunk, so that a request refused before it gets its error status; then
    stream them all."""
    try:
        first = await unless_disconnected(request, anext(chunks, _NOTHING))
    except BaseException:
        await chunks.aclose()
        raise
    return ChunkStream(chunks, first)


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + jsoncodec.dumps(chunk) + b"\n\n"
