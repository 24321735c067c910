"""What the server did in the last few minutes, second by second, for the status page.

Per model version, one bucket per second over a bounded window: requests, errors, a latency
histogram (log-spaced bins, enough for p50/p95/p99 within about 10 %) and batch sizes. Beside it,
the last few errors with their request ids. Everything is bounded in memory, whatever the load.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from modelpod.observe import logs
from modelpod.observe.events import BatchDone, Recorder, RequestDone, RolloutDecided

WINDOW_SECONDS = 300  # how far back the series go
RATE_SECONDS = 10  # the "now" figures: rate and percentiles over the last complete seconds
ERRORS_KEPT = 50
MESSAGE_CHARACTERS = 500  # a longer error message is cut, to bound the ring's memory
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}

_SMALLEST = 1e-4  # seconds: the first bin holds everything up to 0.1 ms
_RATIO = 1.2  # each bin is this much wider than the one before: ~10 % error from the bin's middle
_BINS = 110  # the last bin reaches past two hours
_LOG_RATIO = math.log(_RATIO)


def latency_bin(seconds: float) -> int:
    """The histogram bin of a latency: bin i holds (_SMALLEST * RATIO**(i-1), _SMALLEST * RATIO**i]."""
    if seconds <= _SMALLEST:
        return 0
    return min(math.ceil(math.log(seconds / _SMALLEST) / _LOG_RATIO - 1e-9), _BINS - 1)


def bin_middle(index: int) -> float:
    """A bin's representative latency: the geometric middle of its bounds."""
    return float(_SMALLEST * _RATIO ** (index - 0.5))


def percentile(histogram: Counter[int], fraction: float) -> float | None:
    """The latency below which `fraction` of the histogram's requests fall; None when it is empty."""
    total = histogram.total()
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bin_middle(index)
    return bin_middle(max(histogram))


@dataclass
class _Second:
    """All that happened to one version during one wall-clock second."""

    at: int
    requests: int = 0
    errors: int = 0
    latency: Counter[int] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)

    def add(self, other: _Second) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.latency.update(other.latency)
        self.batch_sizes.update(other.batch_sizes)

    def point(self) -> dict[str, Any]:
        """This second as a point of a series: counts and latency percentiles in seconds."""
        point: dict[str, Any] = {"t": self.at, "requests": self.requests, "errors": self.errors}
        point.update({name: percentile(self.latency, q) for name, q in PERCENTILES.items()})
        return point


@dataclass
class _Version:
    seconds: deque[_Second] = field(default_factory=lambda: deque(maxlen=WINDOW_SECONDS))
    requests: int = 0  # since the server started, unlike the window
    errors: int = 0

    def second(self, at: int) -> _Second:
        """The bucket of second `at`, made when it is the first event of that second."""
        if self.seconds and self.seconds[-1].at >= at:
            return self.seconds[-1]  # a clock stepping back counts into the newest bucket
        bucket = _Second(at)
        self.seconds.append(bucket)
        return bucket


class RecentActivity(Recorder):
    """Thread-safe recorder of the service's requests and batches; read by `document`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _Version] = {}
        self._errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)
        self._rollouts: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)  # decisions, newest last

    def on_request(self, event: RequestDone) -> None:
        outcome = "ok" if event.served else event.outcome
        self.request(event.model, event.version, outcome, event.seconds, event.message)

    def on_batch(self, event: BatchDone) -> None:
        self.batch(event.model, event.version, event.rows)

    def on_rollout(self, event: RolloutDecided) -> None:
        decision = {"time": self._clock(), "model": event.model, "version": event.version,
                    "decision": event.decision, "reason": event.reason, "share": event.share}  # fmt: skip
        with self._lock:
            self._rollouts.append(decision)

    def request(self, model: str, version: str, outcome: str, seconds: float, message: str = "") -> None:
        """One answered request; `outcome` is "ok" or the error's kind (e.g. "invalid_input")."""
        now = self._clock()
        failed = outcome != "ok"
        with self._lock:
            entry = self._entry(model, version)
            bucket = entry.second(int(now))
            bucket.requests += 1
            bucket.latency[latency_bin(seconds)] += 1
            entry.requests += 1
            if failed:
                bucket.errors += 1
                entry.errors += 1
                self._errors.append(
                    {
                        "time": now,
                        "model": model,
                        "version": version,
                        "kind": outcome,
                        "message": message[:MESSAGE_CHARACTERS],
                        "request_id": logs.request_id.get(),
                    }
                )

    def batch(self, model: str, version: str, rows: int) -> None:
        """One run of the model over `rows` rows."""
        now = self._clock()
        with self._lock:
            self._entry(model, version).second(int(now)).batch_sizes[rows] += 1

    def _entry(self, model: str, version: str) -> _Version:
        """The version's record, made on its first event (lock held)."""
        entry = self._versions.get((model, version))
        if entry is None:
            entry = self._versions[model, version] = _Version()
        return entry

    def document(self) -> dict[str, Any]:
        """The window as JSON-ready data: server-wide and per version, plus the recent errors."""
        now = self._clock()
        oldest = int(now) - WINDOW_SECONDS + 1
        with self._lock:
            windows = {
                key: [_copy(s) for s in entry.seconds if s.at >= oldest]
                for key, entry in self._versions.items()
            }
            totals = {key: (entry.requests, entry.errors) for key, entry in self._versions.items()}
            errors = list(reversed(self._errors))
            rollouts = list(reversed(self._rollouts))
        versions = [
            {
                "model": model,
                "version": version,
                **_summary(windows[model, version], now, *totals[model, version]),
            }
            for model, version in sorted(windows)
        ]
        everything = [s for seconds in windows.values() for s in seconds]
        requests = sum(t[0] for t in totals.values())
        failures = sum(t[1] for t in totals.values())
        return {
            "now": now,
            "window_seconds": WINDOW_SECONDS,
            "rate_seconds": RATE_SECONDS,
            "server": _summary(everything, now, requests, failures),
            "versions": versions,
            "errors": errors,
            "rollouts": rollouts,
        }


def _copy(second: _Second) -> _Second:
    copy = _Second(second.at)
    copy.add(second)
    return copy


def _merged(seconds: Iterable[_Second]) -> list[_Second]:
    """Buckets of the same second added together, oldest first."""
    by_second: dict[int, _Second] = {}
    for second in seconds:
        by_second.setdefault(second.at, _Second(second.at)).add(second)
    return [by_second[at] for at in sorted(by_second)]


def _summary(seconds: Iterable[_Second], now: float, requests: int, errors: int) -> dict[str, Any]:
    """Totals since start, figures over the last complete seconds, the series and batch sizes."""
    series = _merged(seconds)
    latest = _Second(int(now))
    for second in series:
        if int(now) - RATE_SECONDS <= second.at < int(now):  # the running second is not complete
            latest.add(second)
    batch_sizes: Counter[int] = Counter()
    for second in series:
        batch_sizes.update(second.batch_sizes)
    return {
        "requests": requests,
        "errors": errors,
        "rate": latest.requests / RATE_SECONDS,
        "error_rate": latest.errors / RATE_SECONDS,
        **{name: percentile(latest.latency, q) for name, q in PERCENTILES.items()},
        "batch_sizes": {str(rows): count for rows, count in sorted(batch_sizes.items())},
        "series": [second.point() for second in series],
    }
