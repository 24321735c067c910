"""One owner for the queues in front of a model: each version's batchers (plain, and streaming) and
the waiting room of a version that does not batch, made on first use and closed together.

The server holds one `Batchers` for all it serves; a `Runner` holds one for its own `submit`.
"""

from __future__ import annotations

import threading
from collections import Counter

from modelpod.runtime.batching import Batcher, BatchObserver, RunBatch
from modelpod.runtime.waiting import WaitingRoom
from modelpod.types import BatchConfig

Key = tuple[str, str]  # (model, version)
PLAIN = ""
STREAMS = " (streams)"  # the batcher of a model whose predict_batch yields: a kind of its own


class Batchers:
    """Batchers and waiting rooms by (model, version) and kind, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batchers: dict[tuple[Key, str], Batcher] = {}
        self._rooms: dict[Key, WaitingRoom] = {}

    def batcher(
        self,
        key: Key,
        config: BatchConfig,
        run: RunBatch,
        kind: str = PLAIN,
        observer: BatchObserver | None = None,
    ) -> Batcher:
        """The version's batcher of this kind, made with `run` and `config` the first time."""
        with self._lock:
            batcher = self._batchers.get((key, kind))
            if batcher is None:
                name = f"{key[0]}:{key[1]}{kind}"
                batcher = Batcher(run, config, name=name, observer=observer)
                self._batchers[(key, kind)] = batcher
        return batcher

    def waiting_room(self, key: Key, capacity: int) -> WaitingRoom:
        """Where requests to a version that does not batch wait for a thread, at most `capacity`."""
        with self._lock:
            room = self._rooms.get(key)
            if room is None:
                room = self._rooms[key] = WaitingRoom(f"{key[0]}:{key[1]}", capacity)
        return room

    def queue_depths(self) -> dict[Key, int]:
        """Rows or requests waiting per version: in its batchers or for a thread."""
        with self._lock:
            rooms = list(self._rooms.items())
            batchers = list(self._batchers.items())
        depths: Counter[Key] = Counter()
        for key, room in rooms:
            depths[key] += room.waiting
        for (key, _), batcher in batchers:
            depths[key] += batcher.queued_rows
        return dict(depths)

    def batch_sizes(self, key: Key) -> dict[str, int]:
        """Rows per batch run -> how many batches, over every kind of the version's batchers."""
        sizes: Counter[int] = Counter()
        with self._lock:
            batchers = [b for (k, _), b in self._batchers.items() if k == key]
        for batcher in batchers:
            sizes.update(batcher.batch_sizes)
        return {str(size): count for size, count in sorted(sizes.items())}

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close(timeout)
