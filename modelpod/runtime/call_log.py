"""The record a `Runner` keeps of its calls: each request's latency in its `LatencyStats`, and a
warning for a call slower than `slow_ms`."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from modelpod.runtime.latency import LatencyStats
from modelpod.runtime.model import Model

logger = logging.getLogger("modelpod.runtime.runner")


class CallLog:
    """Times the runner's calls: a batch of N requests records N latencies, all the batch's."""

    def __init__(self, model: Model, slow_ms: float) -> None:
        self.model = model
        self.slow_ms = slow_ms
        self.stats = LatencyStats()

    def record(self, started: float, ok: bool, what: str) -> None:
        """One request, begun at `started` (`time.perf_counter()`), has ended."""
        self.record_many(started, [not ok], what)

    def record_many(self, started: float, failed: Sequence[bool], what: str) -> None:
        """Requests run together, begun at `started`; `failed` says which of them failed."""
        elapsed = time.perf_counter() - started
        for item_failed in failed:
            self.stats.record(elapsed, not item_failed)
        if failed and elapsed * 1000 > self.slow_ms:
            logger.warning(
                "slow %s on %r: %.1f ms (threshold %.0f ms)", what, self.model, elapsed * 1000, self.slow_ms
            )
