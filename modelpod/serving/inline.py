"""Requests to a cheap model computed on the event loop itself.

Handing a request to a model thread (or to the batcher's) and its answer back to the event loop costs
two thread wake-ups, about 0.1-0.2 ms on a small machine: as much as a small model's compute, and
under load more, since every hand-off is a fight for the interpreter lock. So the event loop computes
a request itself, as an `async def` handler would, in two cases:

- **Lone**: no other request is live, at either edge (HTTP, gRPC) or in any model, so there is nobody to batch
  with and nobody the event loop would serve meanwhile. A version earns this by its record: `MIN_RUNS`
  single-request computes in a row, none over the limit (`MODELPOD_INLINE_MS`, 1 ms by default; 0
  turns it off). The moment a second request is live, requests take the usual path. One slower
  compute sends the version back to the threads until it has earned this again.
- **Steady**: a version that does not batch (there is no batch to join) and whose single-request
  computes cost, on average, at most an eighth of the limit in CPU time computes every request on
  the loop, however many are live, until that average passes a quarter of the limit. The average
  (each compute weighing 1/`WEIGHT`) is of CPU time (`time.thread_time`), each compute counted at
  most at half the limit: a garbage collection or another thread's turn at the interpreter lock that
  lands in one compute cannot move the version, and the version does not flip between the loop and
  its threads. Flipping is what costs: requests left on a thread while the loop computes the others
  wait for the interpreter lock, 5 ms at a time (measured: p99 3-5x worse than on threads alone).
  A quarter of the limit, not all of it: a compute that lets go of the lock (numpy's) runs on a model
  thread beside the event loop's own work, which pays for the hand-offs once it is longer than they are.
  A compute on the loop that waited (for I/O, a sleep, a lock) past the limit and `LOCK_WAITS` sends
  the version back to its threads at once; it earns its place back with twice as many computes, and
  after `MAX_STRIKES` such computes it stays on its threads. (On a model thread under load a
  compute's wall time is mostly waits for the interpreter lock, so only the loop can tell a model
  that blocks: a model that blocks holds the loop at most `MAX_STRIKES` times.)

Models that stream, are `async def` (already on the loop), or run in worker processes never take
this path."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelpod.runtime.batching import Batcher

Key = tuple[str, str]

MIN_RUNS = 16
WEIGHT = 8  # a compute's weight in the steady average is 1/WEIGHT
LOCK_WAITS = 0.010  # s a compute may wait for other threads' turns at the lock (5 ms each)
MAX_STRIKES = 3  # computes that blocked the loop before a version stays on its threads for good


def _never() -> bool:
    return False


class _Steady:
    """A version's record for the steady case."""

    __slots__ = ("cpu", "on_loop", "runs", "strikes")

    def __init__(self) -> None:
        self.cpu = -1.0  # s: the average CPU time of a single-request compute, each clamped (-1: none yet)
        self.runs = 0  # computes since the version last moved
        self.on_loop = False
        self.strikes = 0  # times it was sent back to its threads for waiting on the event loop


class InlineGate:
    """Which versions are cheap enough, and whether the edges are serving one request at most."""

    def __init__(self, limit_ms: float = 1.0) -> None:
        self.limit = limit_ms / 1000
        self._record: dict[Key, int] = {}  # version -> short single-request computes in a row
        self._steady: dict[Key, _Steady] = {}
        # set by the server: whether its edges are answering one request at most (this one)
        self.lone_at_edge: Callable[[], bool] = _never

    def observe(self, key: Key, rows: int, compute: float) -> None:
        """A run of the version finished (from any thread); only single-row runs say what one costs."""
        if rows != 1:
            return
        self._record[key] = self._record.get(key, 0) + 1 if compute <= self.limit else 0

    def lone(self, key: Key, in_flight: int, batcher: Batcher | None) -> bool:
        """Whether a request to the version is alone (nothing in flight in any model, its batcher, if
        it has one, at rest, one request at the edges) and the version cheap: to be computed on
        the loop. The cheapest checks first: most requests are answered by the first that fails."""
        if in_flight or self.limit <= 0 or self._record.get(key, 0) < MIN_RUNS:
            return False
        return (batcher is None or batcher.at_rest) and self.lone_at_edge()

    def takes(self, key: Key, batcher: Batcher | None, in_flight: int) -> bool:
        """Whether a single request to the version is to be computed on the loop."""
        return (batcher is None and self.steady(key)) or self.lone(key, in_flight, batcher)

    def timed(self, key: Key, on_loop: bool, counts: bool = True) -> contextlib.AbstractContextManager[Any]:
        """Around a single request's compute outside a batcher, on the event loop or on a model
        thread: its wall and CPU time observed (unless it does not `count`: many rows, a worker's)."""
        if not counts or self.limit <= 0:
            return _UNTIMED
        return _Timed(self, key, on_loop)

    def observe_cpu(self, key: Key, compute: float, cpu: float, on_loop: bool) -> None:
        """A single-request compute outside a batcher took `compute` s, `cpu` of them computing."""
        steady = self._steady.get(key) or self._steady.setdefault(key, _Steady())
        sample = min(cpu, self.limit / 2)
        steady.cpu = sample if steady.cpu < 0 else steady.cpu + (sample - steady.cpu) / WEIGHT
        steady.runs += 1
        if steady.on_loop:
            # Only a compute on the loop tells waits apart: one that went to a thread before the
            # version moved waited for the interpreter lock as much as for anything else.
            if on_loop and compute - cpu > self.limit + LOCK_WAITS:  # blocked it: slower to come back
                steady.strikes += 1
                self._move(steady, on_loop=False)
            elif steady.cpu > self.limit / 4:
                self._move(steady, on_loop=False)
        elif (
            steady.strikes < MAX_STRIKES
            and steady.runs >= MIN_RUNS << steady.strikes
            and steady.cpu <= self.limit / 8
        ):
            self._move(steady, on_loop=True)

    @staticmethod
    def _move(steady: _Steady, on_loop: bool) -> None:
        steady.on_loop = on_loop
        steady.runs = 0

    def steady(self, key: Key) -> bool:
        """Whether every single request to the version (one that does not batch) runs on the loop."""
        steady = self._steady.get(key)
        return self.limit > 0 and steady is not None and steady.on_loop


_UNTIMED = contextlib.nullcontext()


class _Timed:
    """`InlineGate.timed`, as a class: a generator costs several times as much to enter and leave."""

    __slots__ = ("cpu_started", "gate", "key", "on_loop", "started")

    def __init__(self, gate: InlineGate, key: Key, on_loop: bool) -> None:
        self.gate = gate
        self.key = key
        self.on_loop = on_loop
        self.started = self.cpu_started = 0.0

    def __enter__(self) -> None:
        self.started, self.cpu_started = time.monotonic(), time.thread_time()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> None:
        compute, cpu = time.monotonic() - self.started, time.thread_time() - self.cpu_started
        self.gate.observe_cpu(self.key, compute, cpu, self.on_loop)
