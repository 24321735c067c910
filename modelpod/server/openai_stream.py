"""OpenAI's streams: each chunk as a server-sent event `data: {...}`, the last one `data: [DONE]`.

Unlike modelpod's own event streams, OpenAI's events carry no names, and an error midway is a chunk
`{"error": {...}}` (which the official client raises). As with every stream here, however the
response ends, its client hanging up included, the chunks are closed: the model's generator stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from modelpod.errors import ModelError, ModelpodError
from modelpod.protocol import jsoncodec, openai_shapes
from modelpod.server.endpoints import unless_disconnected
from modelpod.server.streaming import NOTHING, ClosingStream

logger = logging.getLogger("modelpod.http")
T = TypeVar("T")
_END: Any = object()


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


async def interleaved(sources: Sequence[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
    """The items of several generators as each comes, with its source's index: `n` choices streamed
    side by side. An error in one raises here; closing this closes them all (their models stop).
    Each source runs at most one item ahead of the reader."""
    ready: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue(maxsize=len(sources))

    async def pump(index: int, source: AsyncGenerator[T, None]) -> None:
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    await ready.put((index, item, None))
            await ready.put((index, _END, None))
        except Exception as error:
            await ready.put((index, None, error))

    tasks = [asyncio.create_task(pump(index, source)) for index, source in enumerate(sources)]
    try:
        going = len(tasks)
        while going:
            index, item, error = await ready.get()
            if error is not None:
                raise error
            if item is _END:
                going -= 1
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
