"""A model's items: iterating what a yielding `predict` (or `predict_batch`) returns.

The runner uses these to stream one request's items, to gather them into one result for a caller
that did not ask for a stream, and to drive an async generator from synchronous code.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterator, Mapping
from typing import Any, TypeVar

from modelpod.errors import ModelError, ModelpodError
from modelpod.runtime.model import STREAM_END

logger = logging.getLogger("modelpod.runtime.runner")

T = TypeVar("T")
DONE: Any = object()  # what `next(generator, DONE)` gives at the end: never an item
CallModel = Callable[[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]], Any]


class Collected(list[Any]):
    """A streaming `predict`'s items gathered into one result: finished item by item."""


def is_stream(value: Any) -> bool:
    return isinstance(value, Generator | AsyncGenerator)


def model_items(
    generator: Generator[Any, Any, Any], call: CallModel, label: str
) -> Generator[Any, None, None]:
    """A generator's items, each `next` through `call` (the runner's: errors become `ModelError`s,
    torch runs in its context); the generator is closed however the iteration ends."""
    try:
        while (item := call(next, (generator, DONE), {})) is not DONE:
            yield item
    finally:
        close_quietly(generator, label)


async def model_aitems(
    generator: AsyncGenerator[Any, Any], failure: Callable[[Exception], ModelError], label: str
) -> AsyncGenerator[Any, None]:
    """An async generator's items, its exceptions as `failure` makes them; closed however it ends.

    No torch context here: torch's modes are per thread, and other tasks run between the items."""
    try:
        while True:
            try:
                item = await anext(generator)
            except StopAsyncIteration:
                return
            except ModelpodError:
                raise
            except Exception as error:
                raise failure(error) from error
            yield item
    finally:
        try:
            await generator.aclose()
        except Exception:
            logger.exception("%s: closing the model's async generator failed", label)


def close_quietly(generator: Generator[Any, Any, Any], label: str) -> None:
    """Close a model's generator (its `finally` runs); a failing cleanup is logged, not raised over
    the answer the client already has."""
    try:
        generator.close()
    except Exception:
        logger.exception("%s: closing the model's generator failed", label)


def iterate_async(items: AsyncGenerator[T, None]) -> Generator[T, None, None]:
    """An async generator's items for synchronous code, driven on a private event loop."""
    _refuse_inside_a_running_loop(
        "an async generator model cannot be iterated synchronously inside a running event loop; "
        "call it from a thread (asyncio.to_thread), or serve it and use AsyncClient.predict_stream"
    )
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(items))
            except StopAsyncIteration:
                return
    finally:
        try:
            loop.run_until_complete(items.aclose())
        finally:
            loop.close()


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """An `async def` model method's answer for synchronous code (a `Runner` call, a batch, a
    worker process), on this thread's private event loop, made once and kept."""
    try:
        _refuse_inside_a_running_loop(
            "an async model cannot be called synchronously inside a running event loop; call it "
            "from a thread (asyncio.to_thread), use Runner.predict_async, or serve it"
        )
    except SyncCallInLoop:
        coroutine.close()  # never awaited: closed, so that Python does not warn of it
        raise
    loop = getattr(_private, "loop", None)
    if loop is None or loop.is_closed():
        loop = _private.loop = asyncio.new_event_loop()
    return loop.run_until_complete(coroutine)


_private = threading.local()


class SyncCallInLoop(RuntimeError):
    """A synchronous call of an async model from inside a running event loop: the caller's mistake,
    raised as it is (not as the model's error)."""


def _refuse_inside_a_running_loop(message: str) -> None:
    """SyncCallInLoop if this thread runs an event loop: a private loop cannot run inside it, and
    blocking it until the model's answer would stall everything else it runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise SyncCallInLoop(message)


def checked_pair(pair: Any, count: int, label: str) -> tuple[int, Any]:
    """A streaming `predict_batch`'s `(request index, item)`, or a `ModelError` saying what is wrong."""
    if isinstance(pair, tuple) and len(pair) == 2:
        index, item = pair
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count:
            return index, item
    raise ModelError(
        f"model {label}: a streaming predict_batch must yield (request index, item) pairs with an index "
        f"in 0..{count - 1}, not {pair!r:.80}"
    )


def collect_batch(pairs: Iterator[Any], count: int, label: str) -> list[Any]:
    """Per request, the items a streaming `predict_batch` yielded for it (a `Collected` list), or the
    exception it yielded in their place; items after a request's end (STREAM_END) are dropped."""
    results: list[Any] = [Collected() for _ in range(count)]
    ended: set[int] = set()
    for pair in pairs:
        index, item = checked_pair(pair, count, label)
        if index in ended:
            continue
        if item is STREAM_END or isinstance(item, BaseException):
            ended.add(index)
            if item is not STREAM_END:
                results[index] = item
        else:
            results[index].append(item)
    return results
