"""Execution statistics: request counts, a latency histogram and latency percentiles.

    stats = LatencyStats()
    stats.record(elapsed_seconds, ok=True)     # once per request, from any thread
    stats.snapshot().as_dict()                 # a JSON-ready picture, at any time

What is counted over which span:
  - `total`, `ok`, `failed`, `mean_ms`, `max_ms` and `histogram`: every request since creation
    (or the last `reset()`).
  - `p50_ms`, `p95_ms`, `p99_ms`: the most recent `window` latencies (default 10 000), so memory
    stays bounded however long the process runs. Percentiles use linear interpolation between
    the closest ranks (numpy's default method).

The histogram is *not* cumulative: each key counts the requests whose latency fell in that bucket
alone. Bucket `le_X` holds latencies in (previous bound, X] milliseconds; the upper bound is
inclusive, as in Prometheus. Keys, in order: le_1, le_2.5, le_5, le_10, le_25, le_50, le_100,
le_250, le_500, le_1000, le_2500, le_5000, le_10000, le_inf.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BUCKET_BOUNDS_MS: tuple[float, ...] = (
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
)
"""Inclusive upper bounds (ms) of the finite histogram buckets; `le_inf` takes the rest."""

DEFAULT_WINDOW = 10_000


def bucket_key(bound_ms: float) -> str:
    """The histogram key of a bucket: `le_1`, `le_2.5`, ..., `le_inf` for the open last bucket."""
    if math.isinf(bound_ms):
        return "le_inf"
    return f"le_{bound_ms:g}"


BUCKET_KEYS: tuple[str, ...] = (*(bucket_key(b) for b in BUCKET_BOUNDS_MS), bucket_key(math.inf))


def bucket_index(latency_ms: float) -> int:
    """Index into `BUCKET_KEYS` of the bucket that holds `latency_ms`."""
    return bisect.bisect_left(BUCKET_BOUNDS_MS, latency_ms)


@dataclass(frozen=True)
class StatsSnapshot:
    """A consistent picture of a `LatencyStats` at one moment. Latency fields are 0.0 when empty."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    histogram: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUCKET_KEYS, 0))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values: ints, floats and a histogram dict in bucket order."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.total} requests ({self.ok} ok, {self.failed} failed); "
            f"mean {self.mean_ms:.2f} ms, p50 {self.p50_ms:.2f} ms, p95 {self.p95_ms:.2f} ms, "
            f"p99 {self.p99_ms:.2f} ms, max {self.max_ms:.2f} ms"
        )


class LatencyStats:
    """Thread-safe latency and outcome statistics. `record` is cheap: O(1) under one lock."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self._lock = threading.Lock()
        self._recent: deque[float] = deque(maxlen=window)
        self._counts = [0] * len(BUCKET_KEYS)
        self._total = 0
        self._ok = 0
        self._sum_ms = 0.0
        self._max_ms = 0.0

    def record(self, seconds: float, ok: bool) -> None:
        """Count one request that took `seconds` and succeeded (`ok`) or failed."""
        latency_ms = float(seconds) * 1000.0
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds!r}")
        index = bucket_index(latency_ms)
        with self._lock:
            self._recent.append(latency_ms)
            self._counts[index] += 1
            self._total += 1
            self._ok += bool(ok)
            self._sum_ms += latency_ms
            self._max_ms = max(self._max_ms, latency_ms)

    def snapshot(self) -> StatsSnapshot:
        """The statistics now; percentiles are computed outside the lock."""
        with self._lock:
            recent = np.fromiter(self._recent, dtype=np.float64, count=len(self._recent))
            counts = list(self._counts)
            total, ok, sum_ms, max_ms = self._total, self._ok, self._sum_ms, self._max_ms
        if total == 0:
            return StatsSnapshot()
        p50, p95, p99 = (float(p) for p in np.percentile(recent, [50, 95, 99]))
        return StatsSnapshot(
            total=total,
            ok=ok,
            failed=total - ok,
            mean_ms=sum_ms / total,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=max_ms,
            histogram=dict(zip(BUCKET_KEYS, counts, strict=True)),
        )

    def reset(self) -> None:
        """Forget everything recorded so far."""
        with self._lock:
            self._recent.clear()
            self._counts = [0] * len(BUCKET_KEYS)
            self._total = 0
            self._ok = 0
            self._sum_ms = 0.0
            self._max_ms = 0.0
