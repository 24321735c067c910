"""Token-level (iteration-level) batching: one running batch per version of a model that takes steps.

A model that offers the step contract (`modelpod.runtime.steps`) is not run a request at a time:
its version keeps a running batch on a thread of its own, which loops

  1. admit waiting sequences (most urgent first) up to the model's `max_running_sequences`,
     each started with its request's arguments (`start_sequence`);
  2. retire those whose reader has closed its stream (it had all it wanted, or its client left);
  3. step every running sequence by one token in one call (`step_sequences`), hand each its piece
     through its `Channel`, and retire those that ended.

So a request that arrives while others generate joins them at the next step instead of waiting for
them to finish, and one that is done leaves at once. Each step is published as a `StepDone` (tokens
made, time to first token, sequences retired); the sequences running are read at scrape time. The
version's runner is held from the first sequence to the last, so that the pool cannot unload it
under running sequences.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import ModelError, ModelpodError, Unavailable
from modelpod.observe.events import Recorder, StepDone
from modelpod.runtime import steps
from modelpod.runtime.items import DONE
from modelpod.runtime.model import STREAM_END, Model
from modelpod.serving.channels import Channel, put_each

logger = logging.getLogger("modelpod.serving.token_batching")

IDLE_SECONDS = 5.0  # a batch thread with nothing to do for this long ends (the next request starts one)
HoldModel = Callable[[contextlib.ExitStack], Model]  # the version's model, held on the stack


@dataclass(order=True)
class Running:
    """One request's sequence, from the waiting queue to its retirement."""

    order: tuple[int, int]  # (-priority, arrival number): the most urgent first
    arguments: dict[str, Any] = field(compare=False)
    channel: Channel = field(compare=False)
    arrived: float = field(compare=False, default_factory=time.monotonic)
    state: Any = field(compare=False, default=None)
    tokens: int = field(compare=False, default=0)


class RunningBatch:
    """One version's waiting sequences and running batch, stepped on a thread of its own."""

    def __init__(
        self, model: str, version: str, hold_model: HoldModel, recorder: Recorder, max_waiting: int
    ) -> None:
        self.model, self.version = model, version
        self._key = (model, version)
        self._hold_model = hold_model
        self._recorder = recorder
        self._max_waiting = max_waiting
        self._changed = threading.Condition()
        self._waiting: list[Running] = []
        self._running: list[Running] = []
        self._arrivals = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        """Sequences queued to join the running batch (when it holds `max_running_sequences`)."""
        return len(self._waiting)

    def submit(self, arguments: dict[str, Any], channel: Channel, priority: int) -> None:
        """Queue a sequence; it joins the running batch at the next step there is room."""
        with self._changed:
            if self._closed:
                raise Unavailable(f"{self.model}:{self.version} is shutting down", retry_after=1.0)
            if len(self._waiting) >= self._max_waiting:
                raise Unavailable(
                    f"{self.model}:{self.version} has {len(self._waiting)} sequences waiting to run; "
                    "retry shortly",
                    retry_after=1.0,
                )
            heapq.heappush(self._waiting, Running((-priority, next(self._arrivals)), arguments, channel))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name=f"modelpod-steps-{self.model}:{self.version}", daemon=True
                )
                self._thread.start()
            self._changed.notify()

    def close(self) -> None:
        """End the thread; sequences still waiting or running end with Unavailable."""
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _loop(self) -> None:
        try:
            while self._next_batch():
                with contextlib.ExitStack() as hold:
                    try:
                        model = self._hold_model(hold)
                    except Exception as error:  # it failed to load: the waiting fail with it
                        self._fail(self._take_waiting(), _model_error(error, self.model, self.version))
                        continue
                    while self._step(model):
                        pass
        except BaseException as error:  # a bug here: no sequence may wait for ever on a dead thread
            failure = _model_error(error if isinstance(error, Exception) else RuntimeError(), *self._key)
            with self._changed:
                self._thread = None
            self._fail(self._running + self._take_waiting(), failure)
            self._running = []
            raise

    def _next_batch(self) -> bool:
        """Wait for a sequence; False (the thread ends) when closed or idle too long."""
        with self._changed:
            while not self._waiting and not self._closed:
                if not self._changed.wait(IDLE_SECONDS) and not self._waiting:
                    self._thread = None
                    return False
            if self._closed:
                self._fail(self._take_waiting(), Unavailable("the server is shutting down", 1.0))
                self._thread = None
                return False
            return True

    def _step(self, model: Model) -> bool:
        """Admit, retire the closed, step; False once nothing is left to run."""
        retired: Counter[str] = Counter()
        admitted = self._admit(model, retired)
        closed = [sequence for sequence in self._running if sequence.channel.closed]
        retired["closed"] += len(closed)
        self._running = [sequence for sequence in self._running if not sequence.channel.closed]
        if self._closed:
            self._fail(self._running, Unavailable("the server is shutting down", 1.0))
            retired["failed"] += len(self._running)
            self._running = []
        if not self._running:
            self._publish(0, 0, 0.0, [], retired)
            return bool(admitted) and not self._closed
        started = time.monotonic()
        try:
            pieces = steps.step(model, [sequence.state for sequence in self._running])
        except Exception as error:
            self._fail(self._running, _model_error(error, self.model, self.version))
            retired["failed"] += len(self._running)
            self._running = []
            self._publish(0, 0, time.monotonic() - started, [], retired)
            return True
        done = time.monotonic()
        stepped, waits, made = len(self._running), [], 0
        deliveries = []
        for sequence, piece in zip(self._running, pieces, strict=True):
            if piece is STREAM_END:
                sequence.channel.end()
                retired["ended"] += 1
                continue
            made += 1
            sequence.tokens += 1
            if sequence.tokens == 1:
                waits.append(done - sequence.arrived)
            deliveries.append((sequence.channel, piece))
        put_each(deliveries)  # one wake-up of the event loop per step (a sequence's frames keep their order)
        self._running = [sequence for sequence in self._running if not sequence.channel.ended]
        self._publish(stepped, made, done - started, waits, retired)
        return True

    def _admit(self, model: Model, retired: Counter[str]) -> list[Running]:
        """Start waiting sequences while there is room; one whose start fails ends with its error."""
        room = steps.max_running(model) - len(self._running)
        admitted = []
        for sequence in self._take_waiting(room):
            if sequence.channel.closed:
                continue  # its client left while it waited
            try:
                sequence.state = steps.start(model, sequence.arguments)
            except Exception as error:
                sequence.channel.fail(_model_error(error, self.model, self.version))
                retired["failed"] += 1
                continue
            admitted.append(sequence)
        self._running.extend(admitted)
        return admitted

    def _take_waiting(self, most: int | None = None) -> list[Running]:
        with self._changed:
            count = len(self._waiting) if most is None else min(most, len(self._waiting))
            return [heapq.heappop(self._waiting) for _ in range(count)]

    def _fail(self, sequences: list[Running], error: ModelpodError) -> None:
        for sequence in sequences:
            sequence.channel.fail(error)

    def _publish(
        self, stepped: int, made: int, compute: float, waits: list[float], retired: Counter[str]
    ) -> None:
        if stepped or retired:
            event = StepDone(self.model, self.version, stepped, made, compute, waits, dict(retired))
            self._recorder.on_step(event)


class TokenBatches:
    """The running batches of a server, one per version of a model that takes steps."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder
        self._batches: dict[tuple[str, str], RunningBatch] = {}
        self._lock = threading.Lock()

    def batch(self, model: str, version: str, hold_model: HoldModel, max_waiting: int) -> RunningBatch:
        """The version's running batch, made on first use."""
        with self._lock:
            batch = self._batches.get((model, version))
            if batch is None:
                batch = RunningBatch(model, version, hold_model, self._recorder, max_waiting)
                self._batches[(model, version)] = batch
            return batch

    def running(self) -> dict[tuple[str, str], int]:
        """Sequences running now, per version (read when metrics are scraped)."""
        with self._lock:
            return {key: batch.running for key, batch in self._batches.items()}

    def waiting(self) -> dict[tuple[str, str], int]:
        """Sequences waiting to join, per version (read when metrics are scraped)."""
        with self._lock:
            return {key: batch.waiting for key, batch in self._batches.items()}

    def close(self) -> None:
        with self._lock:
            for batch in self._batches.values():
                batch.close()


async def sequence_items(
    batch: RunningBatch,
    arguments: dict[str, Any],
    priority: int,
    timeout: Callable[[], float | None],
) -> AsyncGenerator[Any, None]:
    """One request's pieces as its running batch makes them; closing it retires the sequence at the
    next step. `timeout()` bounds each wait (the request's deadline)."""
    channel = Channel()
    try:
        batch.submit(arguments, channel, priority)
        while (item := await channel.next(timeout())) is not DONE:
            yield item
    finally:
        channel.close()


def _model_error(error: Exception, model: str, version: str) -> ModelpodError:
    if isinstance(error, ModelpodError):
        return error
    failure = ModelError(f"model {model}:{version} raised {type(error).__name__}")  # the rest is logged
    logger.error("error id %s: a step of %s:%s failed", failure.error_id, model, version, exc_info=error)
    return failure
