"""Serving item streams: a model's items handed to the event loop one at a time, never blocking it.

- A request's own stream (`ItemPump`) is opened on a worker thread (the model loads, its `predict`
  is called), and a synchronous generator advances there, one `next` per item the edge asks for:
  a slow client slows the model down rather than piling items up. An async generator is awaited on
  the event loop itself.
- A batch of streaming requests runs on its batcher's thread, which hands each request its items
  through the request's `Channel` (`feed`).
- Closing never waits: the model's cleanup runs on a worker thread once no call into it is running.
  A task cancelled because its client hung up can therefore close its stream in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from modelpod.errors import ModelError, ModelpodError, Timeout
from modelpod.runtime.items import DONE, close_quietly
from modelpod.runtime.model import STREAM_END

logger = logging.getLogger("modelpod.serving.service")

Items = Iterator[Any] | AsyncGenerator[Any, None]
_CLOSING: set[asyncio.Task[None]] = set()  # closing tasks, referenced until they end


async def _within(work: Awaitable[Any], timeout: float | None) -> Any:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise Timeout("the stream passed the request's deadline") from None


class ItemPump:
    """One request's items, produced off the event loop and handed to it one at a time.

    `open_items(hold)` runs on a worker thread and returns the items; what they need until they are
    closed (the runner's place in the pool) goes on `hold`. `on_closed` runs once everything is freed.
    """

    def __init__(
        self,
        executor: Executor,
        open_items: Callable[[contextlib.ExitStack], Items],
        on_closed: Callable[[], None],
    ) -> None:
        self._executor = executor
        self._open_items = open_items
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()  # the request id follows the work onto the threads
        self._hold = contextlib.ExitStack()
        self._items: Items | None = None
        self._pending: Future[Any] | None = None
        self._closed = False

    async def open(self, timeout: float | None) -> None:
        await _within(self._submit(self._open), timeout)

    async def next(self, timeout: float | None) -> Any:
        """The next item, or DONE after the last; `Timeout` when none comes within `timeout` seconds."""
        items = self._items
        if isinstance(items, AsyncGenerator):
            return await _within(anext(items, DONE), timeout)
        assert items is not None, "open() first"
        return await _within(self._submit(next, items, DONE), timeout)

    def close(self) -> None:
        """Close the items and free what they hold, after any call into them still running; returns
        at once. The model's generator is closed where it runs: sync on a worker thread, async here."""
        if self._closed:
            return
        self._closed = True
        pending = self._pending
        if pending is not None and not pending.done():
            pending.add_done_callback(lambda _: self._close_items())
        else:
            self._close_items()

    def _open(self) -> None:
        self._items = self._open_items(self._hold)

    def _submit(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        self._pending = self._executor.submit(self._context.run, function, *args)
        return asyncio.wrap_future(self._pending)

    def _close_items(self) -> None:
        if isinstance(self._items, AsyncGenerator):
            self._loop.call_soon_threadsafe(self._start_aclose)
        else:
            self._in_background(self._close_sync)

    def _close_sync(self) -> None:
        try:
            if isinstance(self._items, Generator):
                self._items.close()
        except Exception:
            logger.exception("closing a stream failed")
        finally:
            self._release()

    def _start_aclose(self) -> None:
        task = self._loop.create_task(self._aclose())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)

    async def _aclose(self) -> None:
        assert isinstance(self._items, AsyncGenerator)
        try:
            await self._items.aclose()
        except Exception:
            logger.exception("closing a stream failed")
        finally:
            self._in_background(self._release)

    def _release(self) -> None:
        try:
            self._hold.close()
        finally:
            self._on_closed()

    def _in_background(self, work: Callable[[], None]) -> None:
        try:
            self._executor.submit(self._context.run, work)
        except RuntimeError:  # the executor has shut down (the server is stopping): do it here
            work()


@dataclass(frozen=True)
class BatchedStream:
    """A streaming request as its batcher queues it: its inputs, and where its items go."""

    inputs: dict[str, Any]
    channel: Channel


class Channel:
    """One request's items, from its batch's thread to the request's event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._frames: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.closed = False  # the request has gone: its batch no longer sends to it
        self.ended = False  # its stream is over (set on the batch's thread)

    @property
    def done(self) -> bool:
        return self.closed or self.ended

    # -- the batch's thread

    def put(self, item: Any) -> None:
        self._send("item", item)

    def fail(self, error: ModelpodError) -> None:
        self._send("error", error)
        self.ended = True

    def end(self) -> None:
        self._send("end", None)
        self.ended = True

    def _send(self, kind: str, value: Any) -> None:
        if self.done:
            return
        try:
            self._loop.call_soon_threadsafe(self._frames.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody is listening
            self.closed = True

    # -- the event loop

    def settle(self, future: asyncio.Future[Any]) -> None:
        """The batcher's verdict, once it is done with the request: an error that kept the batch from
        running it (queue full, deadline passed), or the end, after every frame the batch sent."""
        if future.cancelled():
            return
        error = future.exception()
        self._frames.put_nowait(("error", error) if error is not None else ("end", None))

    async def next(self, timeout: float | None) -> Any:
        """The next item, or DONE at the end; the error that ended the stream raises."""
        kind, value = await _within(self._frames.get(), timeout)
        if kind == "error":
            raise value
        return value if kind == "item" else DONE

    def close(self) -> None:
        self.closed = True


def put_each(deliveries: Sequence[tuple[Channel, Any]]) -> None:
    """(A batch's thread) One item to each of several requests, with one wake-up of their event loop
    rather than one per item: a running batch hands out a step's tokens this way."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Channel, Any]]] = {}
    for channel, item in deliveries:
        if not channel.done:
            by_loop.setdefault(channel._loop, []).append((channel, item))
    for loop, live in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_items, live)
        except RuntimeError:  # the loop has closed: nobody is listening
            for channel, _ in live:
                channel.closed = True


def _put_items(live: list[tuple[Channel, Any]]) -> None:
    for channel, item in live:
        channel._frames.put_nowait(("item", item))


def feed(pairs: Generator[tuple[int, Any], None, None], channels: Sequence[Channel], label: str) -> None:
    """Hand each request the items a batch yields for it, then end every stream. Once no request is
    listening any more, the batch's generator is closed: its `finally` runs."""
    try:
        for index, item in pairs:
            channel = channels[index]
            if item is STREAM_END:
                channel.end()
            elif isinstance(item, ModelpodError):
                channel.fail(item)
            else:
                channel.put(item)
            if all(channel.done for channel in channels):
                break
    except ModelpodError as error:  # the batch failed midway: every stream still open ends with it
        for channel in channels:
            channel.fail(error)
    except Exception as error:  # a bug outside the model (the model's own errors are ModelErrors)
        failure = ModelError(f"{label}: the streaming batch failed")
        logger.error("error id %s: a streaming batch of %s failed", failure.error_id, label, exc_info=error)
        for channel in channels:
            channel.fail(failure)
    finally:
        close_quietly(pairs, label)
        for channel in channels:
            channel.end()
