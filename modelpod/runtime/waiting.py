"""A bound on the requests waiting for a model that does not batch.

A batching model's queue is bounded by its `Batcher`; a model that does not batch has its
requests wait for a free model thread instead, and that wait is bounded here by the same
`max_queue_size`: past it, a request is refused at once (`Unavailable`, with a retry hint)
rather than queued behind work it cannot overtake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from modelpod.errors import Unavailable

RETRY_AFTER = 1.0
"""Seconds a refused client is told to wait before trying again."""


class WaitingRoom:
    """Counts the requests that wait to run; `enter` refuses one more than `capacity`."""

    def __init__(self, name: str, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a waiting room needs room for at least one request, not {capacity}")
        self.name = name
        self.capacity = capacity
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def enter(self) -> Callable[[], None]:
        """Take a place, or raise `Unavailable`; returns `leave`, to call when the request starts
        running or is given up (calling it again does nothing)."""
        with self._lock:
            if self._waiting >= self.capacity:
                raise Unavailable(
                    f"{self.name} is overloaded ({self._waiting} requests waiting); retry shortly",
                    retry_after=RETRY_AFTER,
                )
            self._waiting += 1
        left = False

        def leave() -> None:
            nonlocal left
            with self._lock:
                if not left:
                    left = True
                    self._waiting -= 1

        return leave
