"""The numbers a rollout decides on: each watched candidate's requests (or its shadow requests) with
their time, failure, latency and agreement, kept from when its window started.

A recorder: told of every request, it keeps only those of versions under a rollout (a set lookup
for the rest), bounded in memory whatever the load.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from modelpod.observe.events import Recorder, RequestDone, ShadowDone
from modelpod.serving.rollout_rules import Numbers

KEPT = 100_000  # outcomes kept per watched version: a window longer than this judges the latest
# Outcomes that are the caller's doing (a bad request, a missing key), not the candidate's failure.
CALLERS_FAULTS = frozenset(
    {"invalid_input", "not_found", "unauthenticated", "forbidden", "payload_too_large", "conflict",
     "body_timeout"}
)  # fmt: skip


class Outcome(NamedTuple):
    at: float
    failed: bool
    seconds: float | None
    agreed: bool | None  # a shadow's: agreed on every output; None for served requests


class RolloutWatch(Recorder):
    """Outcomes of the watched (model, version, shadow?) candidates, since each one's window began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str, bool], collections.deque[Outcome]] = {}

    def watch(self, model: str, version: str, shadow: bool) -> None:
        """Start a new window for a candidate: what it did before no longer counts."""
        with self._lock:
            self._kept = {k: v for k, v in self._kept.items() if k[0] != model}
            self._kept[model, version, shadow] = collections.deque(maxlen=KEPT)

    def forget(self, model: str) -> None:
        with self._lock:
            self._kept = {k: v for k, v in self._kept.items() if k[0] != model}

    def on_request(self, event: RequestDone) -> None:
        kept = self._kept.get((event.model, event.version, False))
        if kept is not None:
            failed = not event.served and event.outcome not in CALLERS_FAULTS
            with self._lock:
                kept.append(Outcome(self.clock(), failed, event.seconds, None))

    def on_shadow(self, event: ShadowDone) -> None:
        kept = self._kept.get((event.model, event.version, True))
        if kept is not None and event.outcome != "shed":  # shed: never ran, says nothing of it
            agreed = all(event.agreement.values()) if event.outcome == "compared" else None
            with self._lock:
                kept.append(Outcome(self.clock(), event.outcome == "error", event.seconds, agreed))

    def numbers(self, model: str, version: str, shadow: bool) -> Numbers:
        """What the candidate did in its current window."""
        with self._lock:
            outcomes = list(self._kept.get((model, version, shadow), ()))
        latencies = sorted(o.seconds for o in outcomes if o.seconds is not None)
        p99 = latencies[max(math.ceil(0.99 * len(latencies)) - 1, 0)] if latencies else None
        compared = [o.agreed for o in outcomes if o.agreed is not None]
        agreement = sum(compared) / len(compared) if compared else None
        return Numbers(len(outcomes), sum(o.failed for o in outcomes), p99, agreement)
