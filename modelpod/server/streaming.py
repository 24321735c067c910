"""HTTP streams: items sent as they come, as server-sent events, JSON lines or msgpack frames.

`stream_response` answers a request that asked for a stream (its Accept header; the formats are in
`modelpod.protocol.stream`); `event_stream` sends any async generator as server-sent events, each
item an event (`Event(name, data)` names its own), e.g. a training job's progress.
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
from modelpod.protocol.stream import EVENT_STREAM, Event, encode_end, encode_error, encode_item
from modelpod.server.endpoints import unless_disconnected

__all__ = ["Event", "ItemStreamResponse", "event_stream", "stream_response"]

logger = logging.getLogger("modelpod.http")

NOTHING: Any = object()
_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy may hold items back


class ClosingStream(StreamingResponse):
    """Frames made from a `source` generator. However the response ends, its client hanging up
    included, both are closed, so a model's generator never runs on for nobody."""

    def __init__(
        self, source: AsyncGenerator[Any, None], frames: AsyncGenerator[bytes, None], media_type: str
    ) -> None:
        self._source = source
        self._frames_sent = frames
        super().__init__(frames, media_type=media_type, headers=_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):  # the request may be cancelled: close anyway
                await self._frames_sent.aclose()
                await self._source.aclose()


class ItemStreamResponse(ClosingStream):
    """Items as frames of `media_type`, then an `end` frame (unless `end=False`), or an `error` frame
    when the items raise. However the response ends, its client hanging up included, the items are
    closed, so a model's generator never runs on for nobody."""

    def __init__(
        self, items: AsyncGenerator[Any, None], media_type: str, *, first: Any = NOTHING, end: bool = True
    ) -> None:
        self.items = items
        self._format = media_type
        self._first = first
        self._end = end
        super().__init__(items, self._frames(), media_type)

    async def _frames(self) -> AsyncGenerator[bytes, None]:
        item = self._first
        while True:
            if item is NOTHING:
                try:
                    item = await anext(self.items, NOTHING)
                except ModelpodError as error:
                    yield encode_error(self._format, error)
                    return
                except Exception:
                    yield encode_error(self._format, _logged(ModelError("internal server error")))
                    return
                if item is NOTHING:
                    break
            try:
                frame = encode_item(self._format, item)
            except TypeError as error:
                message = f"the model's item cannot be sent as {self._format}: {error}"
                yield encode_error(self._format, _logged(ModelError(message)))
                return
            item = NOTHING
            yield frame
        if self._end:
            yield encode_end(self._format)


async def stream_response(request: Request, items: AsyncGenerator[Any, None], media_type: str) -> Response:
    """Wait for the first item, so that a request refused before it (an unknown model, bad input, a
    model that fails at once) gets its ordinary error status; then stream them all."""
    try:
        first = await unless_disconnected(request, anext(items, NOTHING))
    except BaseException:
        await items.aclose()
        raise
    return ItemStreamResponse(items, media_type, first=first)


def event_stream(events: AsyncGenerator[Any, None]) -> ItemStreamResponse:
    """Server-sent events, one per item (an `Event` names its own); an exception ends them with an
    `error` event. No `end` event is added: the producer sends its own last one."""
    return ItemStreamResponse(events, EVENT_STREAM, end=False)


def _logged(error: ModelError) -> ModelError:
    logger.exception("error id %s: %s", error.error_id, error.message)
    return error
