"""The record of one run of a model outside a batcher: on the event loop or on a model thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modelpod.errors import InvalidInput, ModelpodError
from modelpod.observe import timing as timings
from modelpod.observe.events import request_trace

# (model, version, rows, compute seconds, waits, traces): the execution's `observe_batch`
ObserveBatch = Callable[[str, str, int, float, list[float], list[Any]], None]


class Computing:
    """Around a model's run outside a batcher: its compute time published as a batch of `rows`
    (and put in the request's timing), unless it was refused before the model ran (InvalidInput)
    or failed with an error that is not the model's (a cancellation). A class rather than a
    generator, which costs several times as much to enter and leave, on every request."""

    __slots__ = ("model", "observe_batch", "rows", "started", "submitted", "timing", "version")

    def __init__(
        self, observe_batch: ObserveBatch, model: str, version: str, rows: int, submitted: float
    ) -> None:
        self.observe_batch = observe_batch
        self.model = model
        self.version = version
        self.rows = rows
        self.submitted = submitted
        self.timing = timings.current.get()
        self.started = submitted

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        if kind is not None and (issubclass(kind, InvalidInput) or not issubclass(kind, ModelpodError)):
            return
        started = self.started
        compute = time.monotonic() - started
        waited = started - self.submitted
        self.observe_batch(self.model, self.version, self.rows, compute, [waited], [request_trace.get()])
        if self.timing is not None:
            self.timing.ran(waited, compute)
