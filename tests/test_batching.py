"""The batcher: nothing lost or answered twice, results in order, batches within bounds, waits bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpod import Model, ModelError, Runner, TensorSpec, Timeout, Unavailable
from modelpod.runtime.batching import Batcher
from modelpod.runtime.deadline import call_deadline
from modelpod.types import BatchConfig


class Recorder:
    """A batch function that records every batch it ran, optionally slowly or gated."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.rows: list[list[int]] = []  # each batch's row counts, as the batcher hands them over
        self.seconds = seconds
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[Any], rows: list[int]) -> list[Any]:
        self.gate.wait(10)
        time.sleep(self.seconds)
        self.batches.append(list(items))
        self.rows.append(list(rows))
        return [("done", item) for item in items]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make(recorder: Recorder) -> Iterator[Any]:
    made: list[Batcher] = []

    def build(**config: Any) -> Batcher:
        batcher = Batcher(recorder, BatchConfig(**config), name="test")
        made.append(batcher)
        return batcher

    yield build
    for batcher in made:
        batcher.close(timeout=10)


def results(futures: Sequence[Future[Any]]) -> list[Any]:
    return [f.result(timeout=10) for f in futures]


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=40),
    max_batch_size=st.integers(min_value=1, max_value=12),
    delay_ms=st.sampled_from([0.0, 1.0, 5.0]),
)
def test_every_request_answered_once_in_order_within_the_batch_limit(
    rows: list[int], max_batch_size: int, delay_ms: float
) -> None:
    recorder = Recorder()
    batcher = Batcher(
        recorder, BatchConfig(max_batch_size=max_batch_size, max_batch_delay_ms=delay_ms, max_queue_size=1000)
    )
    try:
        futures = [batcher.submit(i, rows=r) for i, r in enumerate(rows)]
        assert results(futures) == [("done", i) for i in range(len(rows))]
    finally:
        batcher.close(timeout=10)
    ran = [item for batch in recorder.batches for item in batch]
    assert sorted(ran) == list(range(len(rows)))  # each exactly once
    # the rows counted at submission reach the batch function with their requests (counted once)
    assert [[rows[i] for i in batch] for batch in recorder.batches] == recorder.rows
    for batch in recorder.batches:
        size = sum(rows[i] for i in batch)
        assert size <= max_batch_size or len(batch) == 1  # over the limit only alone
    assert sum(batcher.batch_sizes.values()) == len(recorder.batches)


def test_concurrent_requests_form_batches(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()  # hold the first batch so the rest queue up behind it
    batcher = make(max_batch_size=8, max_batch_delay_ms=50)
    futures = [batcher.submit(i) for i in range(17)]
    recorder.gate.set()
    assert results(futures) == [("done", i) for i in range(17)]
    assert max(len(b) for b in recorder.batches) == 8
    assert sum(len(b) for b in recorder.batches) == 17


def test_a_lone_request_on_an_idle_model_does_not_wait_for_the_delay(make: Any) -> None:
    batcher = make(max_batch_size=32, max_batch_delay_ms=500)
    started = time.monotonic()
    batcher.submit("alone").result(timeout=10)
    assert time.monotonic() - started < 0.25


def test_under_load_a_batch_waits_for_more_up_to_the_delay(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=32, max_batch_delay_ms=150)
    first = batcher.submit("first")
    time.sleep(0.05)
    second = batcher.submit("a")  # arrives while "first" runs: requests overlap
    recorder.gate.set()
    first.result(timeout=10)
    started = time.monotonic()
    time.sleep(0.05)
    third = batcher.submit("b")  # joins "a", which is waiting for company
    results([second, third])
    assert 0.05 <= time.monotonic() - started < 0.6
    assert recorder.batches[-1] == ["a", "b"]


def test_one_request_at_a_time_never_waits_for_the_delay(make: Any) -> None:
    batcher = make(max_batch_size=32, max_batch_delay_ms=200)
    started = time.monotonic()
    for i in range(5):  # a client that sends its next request as soon as it has an answer
        batcher.submit(i).result(timeout=10)
    assert time.monotonic() - started < 0.5


def test_zero_delay_never_waits_while_idle(make: Any) -> None:
    batcher = make(max_batch_size=32, max_batch_delay_ms=0)
    started = time.monotonic()
    for i in range(20):
        assert batcher.submit(i).result(timeout=10) == ("done", i)
    assert time.monotonic() - started < 0.5


def test_a_full_batch_goes_without_waiting_for_the_delay(make: Any) -> None:
    batcher = make(max_batch_size=4, max_batch_delay_ms=5000)
    started = time.monotonic()
    futures = [batcher.submit(i) for i in range(4)]
    results(futures)
    assert time.monotonic() - started < 1.0


def test_a_request_larger_than_a_batch_runs_alone(make: Any, recorder: Recorder) -> None:
    batcher = make(max_batch_size=4, max_queue_size=100)
    assert batcher.submit("big", rows=10).result(timeout=10) == ("done", "big")
    assert recorder.batches == [["big"]]
    assert batcher.batch_sizes == {10: 1}


def test_higher_priority_is_batched_first(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=2)
    first = batcher.submit("first")
    time.sleep(0.05)  # "first" is now running, held at the gate
    low = [batcher.submit(f"low{i}", priority=0) for i in range(2)]
    high = [batcher.submit(f"high{i}", priority=5) for i in range(2)]
    recorder.gate.set()
    results([first, *low, *high])
    assert recorder.batches == [["first"], ["high0", "high1"], ["low0", "low1"]]


def test_a_full_queue_refuses_at_once_and_sheds_the_lowest_priority(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=1, max_queue_size=2)
    running = batcher.submit("running")
    time.sleep(0.05)
    low = batcher.submit("low", priority=0)
    mid = batcher.submit("mid", priority=1)
    with pytest.raises(Unavailable, match="overloaded") as refused:
        batcher.submit("also low", priority=0)
    assert refused.value.retry_after == 1.0
    high = batcher.submit("high", priority=9)  # takes the place of "low"
    with pytest.raises(Unavailable, match="shed for a higher priority"):
        low.result(timeout=10)
    recorder.gate.set()
    assert results([running, high, mid]) == [("done", "running"), ("done", "high"), ("done", "mid")]


def test_an_expired_request_is_dropped_before_compute(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=1)
    running = batcher.submit("running")
    time.sleep(0.05)
    expired = batcher.submit("late", deadline=time.monotonic() + 0.01)
    time.sleep(0.05)
    recorder.gate.set()
    with pytest.raises(Timeout, match="deadline passed"):
        expired.result(timeout=10)
    running.result(timeout=10)
    assert ["late"] not in recorder.batches


def test_a_cancelled_request_is_not_computed(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=1)
    running = batcher.submit("running")
    time.sleep(0.05)
    abandoned = batcher.submit("abandoned")
    assert abandoned.cancel()
    recorder.gate.set()
    running.result(timeout=10)
    batcher.submit("after").result(timeout=10)
    assert ["abandoned"] not in recorder.batches


def test_preferred_batch_sizes(make: Any, recorder: Recorder) -> None:
    recorder.gate.clear()
    batcher = make(max_batch_size=8, preferred_batch_sizes=(2, 4))
    running = batcher.submit("running")
    time.sleep(0.05)
    queued = [batcher.submit(i) for i in range(7)]
    recorder.gate.set()
    results([running, *queued])
    assert [len(b) for b in recorder.batches] == [1, 4, 2, 1]


def test_errors_reach_only_their_requests(make: Any) -> None:
    def run(items: list[Any], rows: list[int]) -> list[Any]:
        return [ValueError(f"bad {i}") if i % 2 else i for i in items]

    batcher = Batcher(run, BatchConfig(max_batch_size=4, max_batch_delay_ms=20))
    futures = [batcher.submit(i) for i in range(4)]
    wait(futures, timeout=10)
    assert [f.exception() is None for f in futures] == [True, False, True, False]
    batcher.close()


def test_a_failing_batch_function_fails_its_batch_and_the_batcher_goes_on() -> None:
    calls = []

    def run(items: list[Any], rows: list[int]) -> list[Any]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items[:-1] if len(calls) == 2 else items

    batcher = Batcher(run, BatchConfig(max_batch_size=1))
    with pytest.raises(ModelError, match="batch failed with RuntimeError"):
        batcher.submit(1).result(timeout=10)
    with pytest.raises(ModelError, match="0 results for a batch of 1"):
        batcher.submit(2).result(timeout=10)
    assert batcher.submit(3).result(timeout=10) == 3
    batcher.close()


def test_close_runs_what_is_queued_and_refuses_more(make: Any, recorder: Recorder) -> None:
    recorder.seconds = 0.02
    batcher = make(max_batch_size=1)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close(timeout=10)
    assert results(futures) == [("done", i) for i in range(5)]
    with pytest.raises(Unavailable, match="shutting down"):
        batcher.submit("late")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_batch_delay_ms": -1}, "must not be negative"),
        ({"max_queue_size": 0}, "max_queue_size must be at least 1"),
        (
            {"max_batch_size": 4, "preferred_batch_sizes": (8,)},
            "preferred_batch_sizes must lie in 1..max_batch_size",
        ),
    ],
)
def test_config_is_checked(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchConfig(**config)


@settings(max_examples=10, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0, max_value=0.03), min_size=1, max_size=8),
    delay_ms=st.sampled_from([10.0, 40.0]),
)
def test_no_request_waits_longer_than_the_delay_while_the_model_is_idle(
    gaps: list[float], delay_ms: float
) -> None:
    batcher = Batcher(lambda items, rows: items, BatchConfig(max_batch_size=64, max_batch_delay_ms=delay_ms))
    try:
        for gap in gaps:
            time.sleep(gap)
            started = time.monotonic()
            batcher.submit("x").result(timeout=10)
            assert time.monotonic() - started <= delay_ms / 1000 + 0.2  # slack for a busy machine
    finally:
        batcher.close()


class Scale(Model):
    """A batching tensor model that counts the rows of each call."""

    inputs = [TensorSpec("x", "FP32", (-1, 3))]
    max_batch_size = 16
    max_batch_delay_ms = 20.0

    def setup(self) -> None:
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        time.sleep(0.01)
        return x * 10


def test_runner_submit_batches_concurrent_submitters(tmp_path: Path) -> None:
    runner = Runner(Scale, data_path=tmp_path)
    rows = [np.full((1 + i % 3, 3), i, dtype=np.float32) for i in range(24)]
    with ThreadPoolExecutor(12) as executor:
        answers = list(executor.map(lambda x: runner.submit(x=x).result(timeout=10), rows))
    assert all(np.array_equal(a, x * 10) for a, x in zip(answers, rows, strict=True))
    calls = runner.model.calls  # type: ignore[attr-defined]
    assert sum(calls) == sum(len(x) for x in rows)
    assert max(calls) > 3  # several submitters shared one call
    assert max(calls) <= 16 + 2  # a batch holds 16 rows, or one larger request alone
    runner.close()


def test_runner_predict_batch_stacks_tensor_requests_into_one_call(tmp_path: Path) -> None:
    runner = Runner(Scale, data_path=tmp_path)
    items = [{"x": np.ones((2, 3), dtype=np.float32) * i} for i in range(4)]
    outputs = runner.predict_batch(items)
    assert [o.shape for o in outputs] == [(2, 3)] * 4
    assert np.array_equal(outputs[3], np.full((2, 3), 30, dtype=np.float32))
    assert runner.model.calls == [8]  # type: ignore[attr-defined]


def test_submit_async_settles_asyncio_futures_on_their_loop(make: Any, recorder: Recorder) -> None:
    import asyncio

    batcher = make(max_batch_size=8, max_batch_delay_ms=20)

    async def main() -> list[Any]:
        futures = [batcher.submit_async(i) for i in range(12)]
        cancelled = batcher.submit_async("cancelled")
        cancelled.cancel()
        return list(await asyncio.gather(*futures))

    assert asyncio.run(main()) == [("done", i) for i in range(12)]
    assert all("cancelled" not in batch for batch in recorder.batches)


@settings(max_examples=20, deadline=None)
@given(
    lateness=st.lists(st.one_of(st.none(), st.floats(min_value=-5, max_value=5)), min_size=1, max_size=20),
    max_batch_size=st.integers(min_value=1, max_value=6),
)
def test_deadlines_decide_exactly_which_requests_run(
    lateness: list[float | None], max_batch_size: int
) -> None:
    """A request whose deadline is before the batch starts is answered Timeout and never computed;
    every other one is computed once (time is a fake clock that stands still)."""
    now = 1000.0
    ran: list[int] = []

    def run(items: list[int], rows: list[int]) -> list[int]:
        ran.extend(items)
        return items

    batcher = Batcher(run, BatchConfig(max_batch_size=max_batch_size, max_queue_size=100), clock=lambda: now)
    try:
        deadlines = [None if late is None else now + late for late in lateness]
        futures = [batcher.submit(i, deadline=deadline) for i, deadline in enumerate(deadlines)]
        wait(futures, timeout=10)
    finally:
        batcher.close(timeout=10)
    for i, (deadline, future) in enumerate(zip(deadlines, futures, strict=True)):
        if deadline is not None and deadline < now:
            assert isinstance(future.exception(), Timeout)
            assert i not in ran
        else:
            assert future.result() == i
    assert sorted(ran) == sorted(set(ran))  # nothing computed twice


def test_a_batch_may_run_until_the_latest_deadline_of_its_requests() -> None:
    seen: list[float | None] = []
    release = threading.Event()

    def run(items: list[Any], rows: list[int]) -> list[Any]:
        seen.append(call_deadline.get())
        release.wait(10)
        return items

    batcher = Batcher(run, BatchConfig(max_batch_size=4, max_batch_delay_ms=0, max_queue_size=100))
    try:
        soon = time.monotonic() + 60
        blocker = batcher.submit("first", deadline=soon)  # runs alone while the others queue
        while not seen:
            time.sleep(0.001)
        later = [batcher.submit(i, deadline=soon + i) for i in (5, 9)]
        release.set()
        results([blocker, *later])
        release.clear()
        open_ended = [batcher.submit("a", deadline=soon), batcher.submit("b")]
        release.set()
        results(open_ended)
    finally:
        batcher.close(timeout=10)
    assert seen[:2] == [soon, soon + 9]
    assert seen[2:] in ([None], [soon, None])  # a request without a deadline: none for its batch
    assert call_deadline.get() is None  # the caller's context is untouched
