"""Requests to a cheap model computed on the event loop itself.

Handing a request to a model thread (or to the batcher's) and its answer back to the event loop costs
two thread wake-ups, about 0.1-0.2 ms on a small machine: as much as a small model's compute, and
under load more, since every hand-off is a fight for the interpreter lock. So the event loop computes
a request itself, as an `async def` handler would, in two cases:

- **Lone**: no other request is live, at the HTTP edge or in any model, so there is nobody to batch
  with and nobody the event loop would serve meanwhile. A version earns this by its record: `MIN_RUNS`
  single-request computes in a row, none over the limit (`MODELPOD_INLINE_MS`, 1 ms by default; 0
  turns it off). The moment a second request is live, requests take the usual path.
- **Cheap under load**: a version that does not batch (so there is no batch to join) and whose
  single-request computes have cost at most a quarter of the limit in CPU time, `MIN_RUNS` in a row,
  without waiting longer than the limit for anything else. CPU time (`time.thread_time`), because on
  a model thread under load a compute's wall time is mostly waits for the interpreter lock: a model
  thread may wait that long (`LOCK_WAITS`); a compute on the loop may not, since the loop holds the
  lock. A quarter: a compute that lets go of the lock (numpy's) runs on a model thread beside the
  event loop's own work, which pays for the hand-offs once it is longer than they are.

One run past the limit sends a version back to the threads until it has earned its place again, so a
model that sometimes blocks (a cache miss, I/O) holds the event loop at most once for that long.
Under load, one compute past the limits is forgiven and two in a row are not (a garbage collection,
or another thread holding the interpreter lock, lands in a compute now and then, whatever the
model), and a model sent back for waiting on the loop (rather than computing) must earn its place
back with twice as many runs each time, so that a model that blocks stops coming back. Models that
stream, are `async def` (already on the loop), or run in worker processes never take this path."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpod.runtime.batching import Batcher

Key = tuple[str, str]

MIN_RUNS = 16
LOCK_WAITS = 0.010  # s a model thread's compute may wait, over its CPU time (the switch interval is 5 ms)
MAX_STRIKES = 6  # a blocking model earns its place back with at most MIN_RUNS << 6 runs


def _never() -> bool:
    return False


class _UnderLoad:
    """A version's record for the cheap-under-load case."""

    __slots__ = ("cheap", "over", "strikes")

    def __init__(self) -> None:
        self.cheap = 0  # single-request computes in a row within the limits
        self.over = 0  # computes in a row past them
        self.strikes = 0  # times it was sent back to the threads for waiting on the event loop


class InlineGate:
    """Which versions are cheap enough, and whether the HTTP edge is serving one request at most."""

    def __init__(self, limit_ms: float = 1.0) -> None:
        self.limit = limit_ms / 1000
        self._record: dict[Key, int] = {}  # version -> short single-request computes in a row
        self._under_load: dict[Key, _UnderLoad] = {}
        # set by the HTTP server: whether it is answering one request at most (this one)
        self.lone_at_edge: Callable[[], bool] = _never

    def observe(self, key: Key, rows: int, compute: float) -> None:
        """A run of the version finished (from any thread); only single-row runs say what one costs."""
        if rows != 1:
            return
        self._record[key] = self._record.get(key, 0) + 1 if compute <= self.limit else 0

    @contextlib.contextmanager
    def timed(self, key: Key, on_loop: bool, counts: bool = True) -> Iterator[None]:
        """Around a single request's compute outside a batcher, on the event loop or on a model
        thread: its wall and CPU time observed (unless it does not `count`: many rows, a worker's)."""
        if not counts:
            yield
            return
        started, cpu_started = time.monotonic(), time.thread_time()
        try:
            yield
        finally:
            self.observe_cpu(key, time.monotonic() - started, time.thread_time() - cpu_started, on_loop)

    def observe_cpu(self, key: Key, compute: float, cpu: float, on_loop: bool) -> None:
        """A single-request compute outside a batcher took `compute` s, `cpu` of them computing."""
        record = self._under_load.get(key) or self._under_load.setdefault(key, _UnderLoad())
        waited = compute - cpu  # for I/O, a lock, a sleep; for the interpreter lock
        allowed = self.limit if on_loop else self.limit + LOCK_WAITS
        if cpu <= self.limit / 4 and waited <= allowed:
            record.cheap += 1
            record.over = 0
            return
        # One compute past the limits is forgiven, two in a row are not: now and then a garbage
        # collection lands in a compute, or, when the model lets go of the interpreter lock,
        # another thread takes it for its switch interval (5 ms), whatever the model.
        record.over += 1
        if record.over > 1:
            record.cheap = 0
            if on_loop and waited > allowed:  # it waited on the event loop: slower to come back
                record.strikes = min(record.strikes + 1, MAX_STRIKES)

    def lone(self, key: Key, in_flight: int, batcher: Batcher | None) -> bool:
        """Whether a request to the version is alone (nothing in flight in any model, its batcher, if
        it has one, at rest, one request at the HTTP edge) and the version cheap: to be computed on
        the loop. The cheapest checks first: most requests are answered by the first that fails."""
        if in_flight or self.limit <= 0 or self._record.get(key, 0) < MIN_RUNS:
            return False
        return (batcher is None or batcher.at_rest) and self.lone_at_edge()

    def takes(self, key: Key, batcher: Batcher | None, in_flight: int) -> bool:
        """Whether a single request to the version is to be computed on the loop."""
        return (batcher is None and self.cheap(key)) or self.lone(key, in_flight, batcher)

    def cheap(self, key: Key) -> bool:
        """Whether a version that does not batch is cheap enough to be computed on the loop whatever
        else is live."""
        record = self._under_load.get(key)
        return self.limit > 0 and record is not None and record.cheap >= MIN_RUNS << record.strikes
