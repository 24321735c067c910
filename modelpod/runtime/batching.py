"""Dynamic batching: requests for one model version queue up and run together.

- A batch holds at most `max_batch_size` rows (a request carrying 7 rows fills 7 slots); a request
  larger than that runs alone rather than failing.
- A batch that is not full waits at most `max_batch_delay_ms` after its oldest request arrived, and
  only while requests overlap (more than one is queued, or some arrived while the last batch ran):
  a lone request, or a client calling one request at a time, runs at once. With 0 a batch takes
  whatever is queued at that moment.
- Higher priority is batched first; when the queue is full, the lowest priority is shed first,
  and a request that cannot be queued is refused at once (`Unavailable`, with a retry hint).
- A request whose deadline passed, or whose caller gave up (cancelled its future), is dropped
  before compute.

One thread per batcher runs the batches, so callers on threads and on event loops alike only wait
on a `concurrent.futures.Future`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelpod.errors import ModelError, ModelpodError, Timeout, Unavailable
from modelpod.runtime.deadline import call_deadline
from modelpod.types import BatchConfig

logger = logging.getLogger("modelpod.runtime.batching")

# Runs one batch: the requests' inputs, and each one's rows as counted when it was submitted (so the
# runner stacks them without counting again).
RunBatch = Callable[[list[Any], list[int]], Sequence[Any]]


class Timed(Protocol):
    """Told of its own request's wait and its batch's compute time (a `RequestTiming`)."""

    def ran(self, queue: float, compute: float) -> None: ...


# Told of every batch run: its rows, the seconds the model computed, and each request's wait in the queue.
BatchObserver = Callable[[int, float, list[float], list[Any]], None]  # rows, compute, waits, traces


@dataclass(order=True)
class _Request:
    order: tuple[int, int]  # (-priority, arrival number): the heap pops the most urgent first
    inputs: Any = field(compare=False)
    rows: int = field(compare=False)
    deadline: float | None = field(compare=False)
    arrived: float = field(compare=False)
    future: Future[Any] | asyncio.Future[Any] = field(compare=False)
    timing: Timed | None = field(default=None, compare=False)
    trace: Any = field(default=None, compare=False)  # the request's span, for the batch's observer

    @property
    def priority(self) -> int:
        return -self.order[0]

    def claim(self) -> bool:
        """Mark the request as running; False if its caller has given up on it."""
        if isinstance(self.future, asyncio.Future):
            return not self.future.cancelled()  # a benign race: a late cancel just drops the result
        return self.future.set_running_or_notify_cancel()


class Batcher:
    """Queues requests and runs them in batches on its own thread, through `run(list of inputs)`."""

    def __init__(
        self,
        run: RunBatch,
        config: BatchConfig,
        name: str = "model",
        clock: Callable[[], float] = time.monotonic,
        observer: BatchObserver | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self._run = run
        self._clock = clock
        self._observer = observer
        self._queue: list[_Request] = []
        self._rows_queued = 0
        self._arrivals = itertools.count()
        self._condition = threading.Condition()
        self._closing = False
        self.batch_sizes: Counter[int] = Counter()  # rows per batch run -> how many batches
        self._running = False
        self._arrived_while_running = 0  # requests that came in while the last batch ran
        self._idle = False  # the thread waits for a first request
        self._filling = False  # the thread waits for a full batch or the delay's end
        self._thread = threading.Thread(target=self._loop, name=f"modelpod-batcher-{name}", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------

    def submit(
        self, inputs: Any, rows: int = 1, priority: int = 0, deadline: float | None = None
    ) -> Future[Any]:
        """Queue one request of `rows` rows; its future holds the result or the error."""
        future: Future[Any] = Future()
        self._enqueue(
            _Request((-priority, next(self._arrivals)), inputs, max(rows, 1), deadline, self._clock(), future)
        )
        return future

    def submit_async(
        self,
        inputs: Any,
        rows: int = 1,
        priority: int = 0,
        deadline: float | None = None,
        timing: Timed | None = None,
        trace: Any = None,
    ) -> asyncio.Future[Any]:
        """`submit` for a caller on an event loop: an asyncio future, settled a whole batch at a time."""
        future = asyncio.get_running_loop().create_future()
        arrival = (-priority, next(self._arrivals))
        self._enqueue(_Request(arrival, inputs, max(rows, 1), deadline, self._clock(), future, timing, trace))
        return future

    def _enqueue(self, request: _Request) -> None:
        shed: _Request | None = None
        with self._condition:
            if self._closing:
                raise Unavailable(f"{self.name} is shutting down", retry_after=1.0)
            if self._rows_queued and self._rows_queued + request.rows > self.config.max_queue_size:
                shed = self._shed_for(request)  # (an empty queue takes any request: it runs alone)
            heapq.heappush(self._queue, request)
            self._rows_queued += request.rows
            if self._running:
                self._arrived_while_running += 1
            if self._idle or (self._filling and self._rows_queued >= self.config.max_batch_size):
                self._condition.notify()  # only when it changes what the thread does: each wake-up
                # costs a thread switch, and up to a batch of them per batch would be paid for nothing
        if shed is not None:
            _settle([(shed, Unavailable(f"{self.name} is overloaded: shed for a higher priority", 1.0))])

    def _shed_for(self, incoming: _Request) -> _Request:
        """Make room by dropping the least urgent queued request, if it is less urgent than `incoming`."""
        least = max(self._queue)
        frees_enough = self._rows_queued - least.rows + incoming.rows <= self.config.max_queue_size
        if least.priority >= incoming.priority or not frees_enough:
            waiting = self._rows_queued
            raise Unavailable(
                f"{self.name} is overloaded ({waiting} rows queued); retry shortly", retry_after=1.0
            )
        self._queue.remove(least)
        heapq.heapify(self._queue)
        self._rows_queued -= least.rows
        return least

    @property
    def at_rest(self) -> bool:
        """Nothing queued and nothing running: the thread waits for a first request (read unlocked,
        as a hint: the caller acts on it only when no request of its own could be arriving)."""
        return self._idle and not self._queue

    @property
    def queued_rows(self) -> int:
        with self._condition:
            return self._rows_queued

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests; run those queued; wait for the thread (up to `timeout`)."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)

    # -- the batching thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Request] | None:
        with self._condition:
            while not self._queue:
                if self._closing:
                    return None
                self._idle = True
                self._condition.wait()
                self._idle = False
            self._filling = True
            self._wait_for_more()
            self._filling = False
            self._running, self._arrived_while_running = True, 0
            return self._take()

    def _wait_for_more(self) -> None:
        """Until the batch is full or its oldest request has waited the delay (lock held)."""
        delay = self.config.max_batch_delay_ms / 1000
        overlapping = len(self._queue) > 1 or self._arrived_while_running > 0
        if delay <= 0 or not overlapping:
            return  # no delay asked, or no sign of company coming: waiting would only add latency
        until = min(r.arrived for r in self._queue) + delay
        while self._rows_queued < self.config.max_batch_size and not self._closing:
            remaining = until - self._clock()
            if remaining <= 0:
                return
            self._condition.wait(remaining)

    def _take(self) -> list[_Request]:
        """The most urgent requests that fit one batch (lock held)."""
        limit = self._target_rows()
        batch = [heapq.heappop(self._queue)]  # the first always goes, even when larger than a batch
        rows = batch[0].rows
        while self._queue and rows + self._queue[0].rows <= limit:
            batch.append(heapq.heappop(self._queue))
            rows += batch[-1].rows
        self._rows_queued -= rows
        return batch

    def _target_rows(self) -> int:
        """`max_batch_size`, or the largest preferred size the queue can fill."""
        available = min(self._rows_queued, self.config.max_batch_size)
        fitting = [size for size in self.config.preferred_batch_sizes if size <= available]
        return fitting[-1] if fitting else self.config.max_batch_size

    def _execute(self, batch: list[_Request]) -> None:
        try:
            self._execute_live(batch)
        finally:
            with self._condition:
                self._running = False

    def _execute_live(self, batch: list[_Request]) -> None:
        now = self._clock()
        live, expired = [], []
        for request in batch:
            if not request.claim():
                continue  # the caller gave up: no compute for it
            if request.deadline is not None and now > request.deadline:
                expired.append((request, Timeout("the request's deadline passed while it was queued")))
                continue
            live.append(request)
        _settle(expired)
        if not live:
            return
        rows = sum(r.rows for r in live)
        self.batch_sizes[rows] += 1
        deadlines = [r.deadline for r in live]  # the batch may run until its last request's deadline
        latest = None if None in deadlines else max(d for d in deadlines if d is not None)
        started = self._clock()
        token = call_deadline.set(latest)
        try:
            results = self._run([r.inputs for r in live], [r.rows for r in live])
        except ModelpodError as error:
            results = [error] * len(live)
        except Exception as error:  # a bug in the run function itself: every request learns of it
            failure = ModelError(f"{self.name}: batch failed with {type(error).__name__}")
            logger.exception("error id %s: batch of %s failed", failure.error_id, self.name)
            results = [failure] * len(live)
        finally:
            call_deadline.reset(token)
        compute = self._clock() - started
        if self._observer is not None:
            self._observer(rows, compute, [started - r.arrived for r in live], [r.trace for r in live])
        for request in live:
            if request.timing is not None:
                request.timing.ran(started - request.arrived, compute)
        if len(results) != len(live):
            failure = ModelError(f"{self.name}: {len(results)} results for a batch of {len(live)}")
            results = [failure] * len(live)
        _settle(list(zip(live, results, strict=True)))


def _settle(outcomes: list[tuple[_Request, Any]]) -> None:
    """Hand results (or errors) to their futures: thread futures at once, asyncio futures in one
    call per event loop, on that loop (asyncio futures are not thread-safe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for request, outcome in outcomes:
        future = request.future
        if isinstance(future, asyncio.Future):
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    for loop, pairs in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_on_loop, pairs)


def _settle_on_loop(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in pairs:
        if future.done():  # cancelled meanwhile
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
