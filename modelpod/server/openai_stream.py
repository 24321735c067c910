"""OpenAI's streams: each chunk as a server-sent event `data: {...}`, the last one `data: [DONE]`.

Unlike modelpod's own event streams, OpenAI's events carry no names, and an error midway is a chunk
`{"error": {...}}` (which the official client raises). As with every stream here, however the
response ends, its client hanging up included, the chunks are closed: the model's generator stops.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from modelpod.errors import ModelError, ModelpodError
from modelpod.protocol import jsoncodec, openai_shapes
from modelpod.server.endpoints import unless_disconnected
from modelpod.server.streaming import NOTHING, ClosingStream

logger = logging.getLogger("modelpod.http")


class ChunkStream(ClosingStream):
    def __init__(self, chunks: AsyncGenerator[dict[str, Any], None], first: Any) -> None:
        self.chunks = chunks
        self._first = first
        super().__init__(chunks, self._frames(), "text/event-stream")

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        chunk = self._first
        while chunk is not NOTHING:
            yield _event(chunk)
            try:
                chunk = await anext(self.chunks, NOTHING)
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
        first = await unless_disconnected(request, anext(chunks, NOTHING))
    except BaseException:
        await chunks.aclose()
        raise
    return ChunkStream(chunks, first)


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + jsoncodec.dumps(chunk) + b"\n\n"
