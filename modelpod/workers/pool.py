"""Run one model version in worker processes: real parallelism for Python models, and crash isolation.

    pool = WorkerPool(Sentiment, "1", name="sentiment", data_path=Path("appdata"), workers=2)
    pool.start()                                    # each worker loads its own copy of the model
    pool.run_batch([{"text": "great"}, {"text": "awful"}], timeout=5.0)
    pool.close()

Each worker is a process started with the `spawn` method (a server has threads, so `fork` is
unsafe) that builds `Runner(as_model(target, version, name=, data_path=), **runner_options)`,
loads it, and then answers `predict_batch(items, skip_errors=True)` calls one at a time.
`run_batch` hands a batch to an idle worker, so N workers run N batches at once, each on its own
interpreter and GIL: the right choice for CPU-bound pure-Python models.

Memory: every worker holds its own loaded copy of the model. N workers cost N times the model's
memory (weights, caches, its share of the Python heap), plus about 45 MB per process for the
interpreter, numpy and modelpod (about 260 MB where torch is installed and the device is chosen
automatically, since choosing it imports torch: pass `device="cpu"` in `runner_options` for a
CPU model), plus the shared-memory blocks below, which stay as large as the largest batch seen.
`memory()` tells each worker's resident memory, by pid. Models that are large or release the GIL
(most torch and numpy work) are usually better served by threads in one process.

The model is never pickled: the child process receives a reference, `path/to/file.py:Qualname`
for a class or function defined in a top-level module file (how `modelpod.runtime.objects` loads files)
or `package.module:Qualname`, and resolves it with `modelpod.runtime.objects`. So the target must be
defined at module level, in a file or module the child can import again. A string reference is
accepted as the target too.

Transport: one `multiprocessing` pipe per worker carries small msgpack control messages;
values go through `modelpod.workers.shm` (no pickle). Numpy arrays of at least `threshold` bytes (64 KiB)
travel through shared memory, in both directions: each worker has one reusable block per
direction, created, reserved and unlinked by this (the parent) process and grown when a batch
needs more, so a worker that dies cannot leak one. An array is copied into the block by the
sender and out of it by the receiver: two memory copies per direction, no serialization and no
pipe traffic for its bytes (a pickled copy through a pipe makes four). Smaller arrays and other
values travel in the message. When /dev/shm has no room, arrays go through the pipe instead.
A round trip costs about 0.2 ms; 4 MB in and out about 2 ms.

Failures:
  - a worker that dies while running a batch (segfault, `os._exit`, SIGKILL from the OOM killer)
    fails that batch only: each item gets a `ModelError` naming the exit code or signal; the
    worker is restarted in the background with exponential backoff (0.1 s doubling to 5 s, back
    to 0.1 s once a worker stayed up for 10 s), and the other workers keep serving meanwhile;
  - a batch not answered within `run_batch`'s timeout gets `Timeout` for every item, and its worker
    is killed and replaced the same way;
  - while every worker is down and its last restart failed, batches get `Unavailable`;
  - waiting for a free worker counts against the timeout too: past it, `Timeout` (no worker is
    replaced); before `start` and after `close`, batches get `Unavailable`.

Limits: results and inputs must be values msgpack and numpy carry (plus tuples, `ModelpodError`s
and `Response`s); an item that cannot cross fails alone. Errors come back as the most specific
`modelpod.errors` class they were an instance of. Processors registered on a `Runner` by hand
do not reach the workers. A script that starts a pool must guard its entry point with
`if __name__ == "__main__":` (the `spawn` method imports the main module again in each worker).
"""

from __future__ import annotations

import atexit
import collections
import logging
import multiprocessing
import os
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelpod.errors import ModelError, ModelpodError, Timeout, Unavailable
from modelpod.runtime.deadline import clamp_wait
from modelpod.runtime.memory import rss_bytes
from modelpod.workers import shm
from modelpod.workers.handle import Died, Hung, WorkerHandle, encode_items, reference_of, spawn, wait_ready
from modelpod.workers.restarts import Restarts

logger = logging.getLogger("modelpod.workers.pool")


class WorkerPool:
    """`workers` processes, each with its own loaded copy of one model version."""

    def __init__(
        self,
        target: Any,
        version: str,
        *,
        name: str,
        data_path: Path,
        workers: int,
        runner_options: Mapping[str, Any] | None = None,
        threshold: int = shm.DEFAULT_THRESHOLD,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a worker pool needs at least one worker, not {workers}")
        self.reference = reference_of(target)
        self.version = version
        self.name = name
        self.data_path = Path(data_path)
        self.workers = workers
        self.runner_options = dict(runner_options or {})
        self.threshold = threshold
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._live: dict[int, WorkerHandle] = {}  # slot -> its running worker, idle or busy
        self._idle: collections.deque[WorkerHandle] = collections.deque()
        self._busy: set[WorkerHandle] = set()
        self._down: dict[int, str] = {}  # slot -> why its last restart failed
        self._started = False
        self._closed = False
        self._closing = threading.Event()
        self._restarts = Restarts(
            workers, self.label, self._closing, self._start_worker, self._welcome, self._slot_down
        )

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def restarts(self) -> int:
        """How many workers were replaced (after a crash or a timeout) since the pool started."""
        return self._restarts.count

    def pids(self) -> list[int]:
        """The process ids of the running workers, by slot."""
        with self._cond:
            return [self._live[slot].pid for slot in sorted(self._live)]

    def memory(self) -> dict[int, int]:
        """Resident memory of each running worker, in bytes, by pid."""
        sizes = {pid: rss_bytes(pid) for pid in self.pids()}
        return {pid: size for pid, size in sizes.items() if size is not None}  # None: it just exited

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every worker and wait until each has loaded the model.

        A worker that fails to load raises `ModelLoadError` with its message; every worker
        started so far is stopped first.
        """
        with self._cond:
            if self._closed:
                raise Unavailable(f"the worker pool of model {self.label} is closed")
            if self._started:
                return
        started = []
        try:
            for slot in range(self.workers):
                started.append(self._spawn(slot))
            for worker in started:
                self._wait_ready(worker)
        except BaseException:
            for worker in started:
                worker.discard()
            raise
        with self._cond:
            for worker in started:
                self._live[worker.slot] = worker
                self._idle.append(worker)
            self._started = True
            self._cond.notify_all()
        _open_pools.add(self)
        logger.info("model %s runs in %d worker processes: %s", self.label, self.workers, self.pids())

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker: running batches get up to half of `timeout` to finish, then are killed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._closing.set()
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._busy, timeout / 2)
            workers = list(self._live.values())
            busy = set(self._busy)
            self._idle.clear()
        for worker in workers:
            if worker in busy:
                worker.kill()  # its caller sees the worker die, answers Unavailable and discards it
            else:
                worker.stop()
        for worker in workers:
            if worker not in busy:
                worker.discard(grace=max(deadline - time.monotonic(), 0.0))
        self._restarts.join(deadline)
        with self._cond:
            self._cond.wait_for(lambda: not self._busy, max(deadline - time.monotonic(), 1.0))
            left = list(self._live.values())
            self._live.clear()
        for worker in left:
            worker.discard()
        _open_pools.discard(self)

    def __enter__(self) -> WorkerPool:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- running batches -----------------------------------------------------------------------

    def run_batch(self, items: list[dict[str, Any]], timeout: float | None = None) -> list[Any]:
        """`predict_batch(items, skip_errors=True)` on an idle worker: results, errors in failed places.

        Blocks until a worker is free. With `timeout`, a batch not answered within that many
        seconds gets `Timeout` for every item (and its worker is replaced). Thread-safe.
        """
        count = len(items)
        if not count:
            return []
        if timeout is not None and timeout <= 0:
            message = f"the deadline of this request to model {self.label} had passed before it ran"
            return [Timeout(message) for _ in range(count)]
        deadline = None if timeout is None else time.monotonic() + timeout
        encoder, blobs, failures = encode_items(items, self.threshold)
        if len(failures) == count:
            return [failures[index] for index in range(count)]
        worker = self._checkout(deadline, timeout)
        if isinstance(worker, ModelpodError):
            return [failures.get(index) or _copy(worker) for index in range(count)]
        try:
            outputs = worker.exchange(items, encoder, blobs, deadline)
        except Hung:
            worker.kill()
            self._lost(worker)
            assert timeout is not None
            message = f"model {self.label} did not answer within {timeout:g} s; its worker was replaced"
            logger.warning("%s (worker pid %d)", message, worker.pid)
            return [failures.get(index) or Timeout(message) for index in range(count)]
        except Died as died:
            self._lost(worker)
            errors = _died_errors(self.label, self._closed, died, count)
            return [failures.get(index) or error for index, error in enumerate(errors)]
        except BaseException:
            worker.kill()
            self._lost(worker)
            raise
        self._checkin(worker)
        if len(outputs) != count:
            raise RuntimeError(f"worker answered {len(outputs)} results for {count} items")
        return [failures.get(index, output) for index, output in enumerate(outputs)]

    def _checkout(self, deadline: float | None, timeout: float | None) -> WorkerHandle | ModelpodError:
        with self._cond:
            while True:
                if self._closed:
                    return Unavailable(f"the worker processes of model {self.label} are shut down")
                if not self._started:
                    return Unavailable(f"the worker processes of model {self.label} are not started")
                if self._idle:
                    worker = self._idle.popleft()
                    self._busy.add(worker)
                    return worker
                if len(self._down) == self.workers:
                    why = next(iter(self._down.values()))
                    return Unavailable(
                        f"model {self.label} has no running worker process ({why}); restarting",
                        retry_after=self._restarts.longest_backoff(),
                    )
                remaining = None if deadline is None else clamp_wait(deadline - time.monotonic())
                if remaining is not None and remaining <= 0:
                    assert timeout is not None
                    return Timeout(f"model {self.label} had no free worker process within {timeout:g} s")
                self._cond.wait(remaining)

    def _checkin(self, worker: WorkerHandle) -> None:
        with self._cond:
            self._busy.discard(worker)
            if not self._closed:
                self._idle.append(worker)
            self._cond.notify_all()

    def _lost(self, worker: WorkerHandle) -> None:
        """A worker died or was killed: forget it, and restart its slot unless the pool is closing."""
        worker.discard()
        with self._cond:
            self._busy.discard(worker)
            if self._live.get(worker.slot) is worker:
                del self._live[worker.slot]
            self._cond.notify_all()
            if self._closed:
                return
        self._restarts.lost(worker)

    def _start_worker(self, slot: int) -> WorkerHandle:
        """A new worker in `slot`, its model loaded (or the error that stopped it, the process gone)."""
        worker = self._spawn(slot)
        try:
            self._wait_ready(worker)
        except BaseException:
            worker.discard()
            raise
        return worker

    def _welcome(self, slot: int, worker: WorkerHandle) -> bool:
        """Serve with a restarted worker; False once the pool is closed."""
        with self._cond:
            if self._closed:
                return False
            self._down.pop(slot, None)
            self._live[slot] = worker
            self._idle.append(worker)
            self._cond.notify_all()
            return True

    def _slot_down(self, slot: int, why: str) -> None:
        with self._cond:
            self._down[slot] = why
            self._cond.notify_all()

    def _spawn(self, slot: int) -> WorkerHandle:
        return spawn(self._context, slot, self._process_options(), self.label)

    def _wait_ready(self, worker: WorkerHandle) -> None:
        wait_ready(worker, self._closing, self.label)

    def _process_options(self) -> tuple[Any, ...]:
        return (
            self.reference,
            self.version,
            self.name,
            str(self.data_path),
            self.runner_options,
            self.threshold,
            logging.getLogger("modelpod").getEffectiveLevel(),
            os.getpid(),
        )


def _died_errors(label: str, closed: bool, died: Died, count: int) -> list[ModelpodError]:
    """What each request of a batch whose worker died learns: shut down, or the death, logged once."""
    if closed:
        message = f"model {label} was shut down while running this request"
        return [Unavailable(message) for _ in range(count)]
    message = f"the worker process running model {label} died ({died.reason}) while running this request"
    error_id = uuid.uuid4().hex[:12]
    logger.error("error id %s: %s; restarting it", error_id, message)
    return [ModelError(message, error_id) for _ in range(count)]


def _copy(error: ModelpodError) -> ModelpodError:
    """One error instance per item: exceptions carry tracebacks, which must not be shared."""
    if isinstance(error, Unavailable):
        return Unavailable(error.message, error.retry_after)
    return type(error)(error.message)


_open_pools: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


@atexit.register
def _close_open_pools() -> None:
    """No worker outlives the server, even one whose pool was not closed."""
    for pool in list(_open_pools):
        pool.close(timeout=5.0)
