"""A lone request to a cheap model, computed on the event loop itself.

Handing a request to a model thread (or to the batcher's) and its answer back to the event loop costs
two thread wake-ups, about 0.1-0.2 ms on a small machine: as much as a small model's compute. When no
other request is live, at the HTTP edge or in any model, there is nobody to batch with and nobody the
event loop would serve meanwhile, so a version whose single-request computes have all been short
runs the request right there, as an `async def` handler would. The moment a second request is live,
requests take the usual path (the batcher, the model threads).

A version earns this by its record: `MIN_RUNS` single-request computes in a row, none over the limit
(`MODELPOD_INLINE_MS`, 1 ms by default; 0 turns it off). One slower compute sends it back to the
threads until it has earned it again, so a model that sometimes blocks (a cache miss, I/O) holds the
event loop at most once for that long. Models that stream, are `async def` (already on the loop), or
run in worker processes never take this path."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelpod.runtime.batching import Batcher

Key = tuple[str, str]

MIN_RUNS = 16


def _never() -> bool:
    return False


class InlineGate:
    """Which versions are cheap enough, and whether the HTTP edge is serving one request at most."""

    def __init__(self, limit_ms: float = 1.0) -> None:
        self.limit = limit_ms / 1000
        self._record: dict[Key, int] = {}  # version -> short single-request computes in a row
        # set by the HTTP server: whether it is answering one request at most (this one)
        self.lone_at_edge: Callable[[], bool] = _never

    def observe(self, key: Key, rows: int, compute: float) -> None:
        """A run of the version finished (from any thread); only single-row runs say what one costs."""
        if rows != 1:
            return
        self._record[key] = self._record.get(key, 0) + 1 if compute <= self.limit else 0

    def lone(self, key: Key, in_flight: int, batcher: Batcher | None) -> bool:
        """Whether a request to the version is alone (nothing in flight in any model, its batcher, if
        it has one, at rest, one request at the HTTP edge) and the version cheap: to be computed on
        the loop. The cheapest checks first: most requests are answered by the first that fails."""
        if in_flight or self.limit <= 0 or self._record.get(key, 0) < MIN_RUNS:
            return False
        return (batcher is None or batcher.at_rest) and self.lone_at_edge()
