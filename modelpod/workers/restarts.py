"""Bringing back a pool's workers that died or were killed: each slot restarted on a thread of its own,
with exponential backoff (0.1 s doubling to 5 s, back to 0.1 s once a worker stayed up for 10 s), so
the other workers keep serving meanwhile and a model that cannot load is not spawned in a tight loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from modelpod.workers.handle import WorkerHandle

logger = logging.getLogger("modelpod.workers.pool")

FIRST_BACKOFF = 0.1
"""Seconds before the first restart of a worker that died."""
MAX_BACKOFF = 5.0
"""The restart delay doubles up to this."""
STABLE_AFTER = 10.0
"""A worker that stayed up this long before dying is restarted after `FIRST_BACKOFF` again."""


class Restarts:
    """The restarts of one pool's slots. The pool says how a worker starts (`start_worker`: spawned and
    loaded, or raising), takes a restarted one in (`welcome`: False once the pool is closed), and
    hears of a slot whose restart failed (`down`, with why)."""

    def __init__(
        self,
        workers: int,
        label: str,
        closing: threading.Event,
        start_worker: Callable[[int], WorkerHandle],
        welcome: Callable[[int, WorkerHandle], bool],
        down: Callable[[int, str], None],
    ) -> None:
        self.label = label
        self.count = 0  # workers replaced since the pool started
        self._closing = closing
        self._start_worker = start_worker
        self._welcome = welcome
        self._down = down
        self._lock = threading.Lock()
        self._backoff = [FIRST_BACKOFF] * workers
        self._threads: set[threading.Thread] = set()

    def longest_backoff(self) -> float:
        """The longest wait before a slot's next try: when to retry while every worker is down."""
        with self._lock:
            return max(self._backoff)

    def lost(self, worker: WorkerHandle) -> None:
        """Restart the slot of a worker that died or was killed, in the background."""
        with self._lock:
            if time.monotonic() - worker.started >= STABLE_AFTER:
                self._backoff[worker.slot] = FIRST_BACKOFF
            thread = threading.Thread(
                target=self._restart, args=(worker.slot,), name=f"modelpod-restart-{self.label}", daemon=True
            )
            self._threads.add(thread)
        thread.start()

    def join(self, deadline: float) -> None:
        """Wait for restarts under way (they stop once the pool is closing) until `deadline`."""
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(deadline - time.monotonic(), 0.1))

    def _restart(self, slot: int) -> None:
        try:
            while not self._closing.is_set():
                with self._lock:
                    delay = self._backoff[slot]
                    self._backoff[slot] = min(delay * 2, MAX_BACKOFF)
                if self._closing.wait(delay):
                    return
                try:
                    worker = self._start_worker(slot)
                except Exception as error:
                    if self._closing.is_set():
                        return
                    self._down(slot, str(error))
                    logger.error("cannot restart a worker of model %s: %s", self.label, error)
                    continue
                if self._welcome(slot, worker):
                    with self._lock:
                        self.count += 1
                    logger.info("restarted a worker of model %s: pid %d", self.label, worker.pid)
                else:  # the pool closed while this one loaded
                    worker.stop()
                    worker.discard(grace=2.0)
                return
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
