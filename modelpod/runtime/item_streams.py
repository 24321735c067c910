"""A request's answer as a stream of items: what a `predict` that yields gives, one item at a time,
each post-processed; and a batch of such requests, its items tagged with their request. A stream
counts once in the runner's statistics, its latency the time to its first item."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

from modelpod.errors import InvalidInput, ModelpodError
from modelpod.runtime.batch_calls import batch_outputs
from modelpod.runtime.calls import ModelCalls, as_item_error
from modelpod.runtime.inputs import Prepared
from modelpod.runtime.items import checked_pair, model_aitems, model_items
from modelpod.runtime.latency import LatencyStats
from modelpod.runtime.model import STREAM_END


def open_stream(
    calls: ModelCalls, inputs: dict[str, Any], stats: LatencyStats
) -> Generator[Any, None, None] | AsyncGenerator[Any, None]:
    """`predict_stream` for a caller on an event loop (the server): an async generator model's
    items come as an async generator, to be iterated there; anything else as a generator."""
    started = time.perf_counter()
    try:
        prepared = calls.prepare(inputs, "")
        output = calls.call_model(calls.model.predict, (), prepared.values)
    except ModelpodError:
        stats.record(time.perf_counter() - started, False)
        raise
    if isinstance(output, AsyncGenerator):
        return _afinished(calls, stats, model_aitems(output, calls.failure, calls.label), prepared, started)
    if isinstance(output, Generator):
        return _finished(calls, stats, model_items(output, calls.call_model, calls.label), prepared, started)
    return _finished(calls, stats, iter([output]), prepared, started)


def stream_batch(
    calls: ModelCalls, items: Sequence[Mapping[str, Any]]
) -> Generator[tuple[int, Any], None, None]:
    """Requests run as one batch, their items as `(request index, item)` as the model yields them:
    an item (post-processed), a `ModelpodError` that ends that request's stream, or STREAM_END.
    A streaming `predict_batch` yields per request; any other model gives each request one item."""
    prepared: dict[int, Prepared] = {}
    for index, item in enumerate(items):
        try:
            if not isinstance(item, Mapping):
                raise InvalidInput(f"item {index}: expected a mapping of input names to values")
            prepared[index] = calls.prepare(item, f"item {index}: ")
        except ModelpodError as error:
            yield index, error
    order = list(prepared)  # the model sees the good requests only: positions map back to indexes
    values = [prepared[index].values for index in order]
    if not values:
        return
    if not calls.model.streams_batches():
        for index, output in zip(order, batch_outputs(calls, values, skip_errors=True), strict=True):
            if not isinstance(output, ModelpodError):
                output = calls.safe_finish(prepared[index], output, skip_errors=True)
            yield index, output
        return
    batch: Callable[..., Any] = calls.model.predict_batch  # type: ignore[attr-defined]
    for pair in model_items(calls.call_model(batch, (values,), {}), calls.call_model, calls.label):
        position, item = checked_pair(pair, len(order), calls.label)
        index = order[position]
        if item is STREAM_END or isinstance(item, BaseException):
            yield index, as_item_error(item)
        else:
            yield index, calls.safe_finish(prepared[index], item, skip_errors=True)


def _finished(
    calls: ModelCalls,
    stats: LatencyStats,
    items: Generator[Any, None, None] | Iterator[Any],
    prepared: Prepared,
    started: float,
) -> Generator[Any, None, None]:
    ok, first = True, None  # a stream its caller closes early did not fail
    try:
        for item in items:
            first = first or time.perf_counter()
            yield calls.postprocess(prepared.restore(item))
    except Exception:
        ok = False
        raise
    finally:
        if isinstance(items, Generator):
            items.close()
        stats.record((first or time.perf_counter()) - started, ok)


async def _afinished(
    calls: ModelCalls,
    stats: LatencyStats,
    items: AsyncGenerator[Any, None],
    prepared: Prepared,
    started: float,
) -> AsyncGenerator[Any, None]:
    ok, first = True, None
    try:
        async for item in items:
            first = first or time.perf_counter()
            yield calls.postprocess(prepared.restore(item))
    except Exception:
        ok = False
        raise
    finally:
        await items.aclose()
        stats.record((first or time.perf_counter()) - started, ok)
