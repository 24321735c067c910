"""The parent's handle on one worker process: send a message, wait for the answer until a deadline,
tell why the process ended, and make sure it is gone. `WorkerPool` holds one per worker."""

from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from modelpod.errors import InvalidInput, ModelLoadError, ModelpodError, Unavailable
from modelpod.protocol import native
from modelpod.runtime.deadline import clamp_wait
from modelpod.runtime.formats import ModelFile
from modelpod.workers import shm
from modelpod.workers.process_main import worker_main

logger = logging.getLogger("modelpod.workers.pool")

_POLL = 0.1  # seconds between looks at a closing pool while a worker loads


# The last batch's time in its worker process, on the thread that sent it (a batcher's or a model
# thread), until `take_worker_seconds` reads it for the batch's observer.
worker_time = threading.local()


def take_worker_seconds() -> float | None:
    """Seconds the worker process took over the last batch this thread sent it; None when this
    thread sent none since it last asked (a model in this process)."""
    seconds: float | None = getattr(worker_time, "seconds", None)
    worker_time.seconds = None
    return seconds


class Hung(Exception):
    """The worker did not answer in time."""


class Died(Exception):
    """The worker's end of the pipe closed: it is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WorkerHandle:
    """The parent's end of one worker process: its pipe, its shared-memory blocks, how it ended."""

    def __init__(self, slot: int, process: BaseProcess, conn: Connection) -> None:
        self.slot = slot
        self.process = process
        self.conn = conn
        self.pid: int = process.pid or 0
        self.started = time.monotonic()
        self.requests: shm.Block | None = None  # the parent writes arrays here, the worker reads
        self.responses: shm.Block | None = None  # and the other way around
        self._lock = threading.Lock()
        self._discarded = False

    def send(self, message: list[Any]) -> None:
        try:
            self.conn.send_bytes(native.pack(message))
        except (OSError, ValueError):
            raise Died(self.exit_reason()) from None

    def receive(self, deadline: float | None) -> list[Any]:
        remaining = None if deadline is None else clamp_wait(deadline - time.monotonic())
        try:
            if not self.conn.poll(remaining):
                raise Hung()
            message: list[Any] = native.unpack(self.conn.recv_bytes())
        except (EOFError, OSError):
            raise Died(self.exit_reason()) from None
        return message

    def exchange(
        self,
        items: list[dict[str, Any]],
        encoder: shm.Encoder,
        blobs: list[bytes | None],
        deadline: float | None,
    ) -> list[Any]:
        """Run a batch: its arrays into the request block, the items down the pipe; grant the worker
        a bigger answer block when it asks; its answers decoded. `items` are encoded again, arrays
        inline, when shared memory has no room."""
        block = None
        if encoder.size:
            try:
                self.requests = shm.grown(self.requests, encoder.size)
            except OSError as error:
                logger.warning(
                    "no shared memory for %d bytes (%s): arrays go through the pipe", encoder.size, error
                )
                encoder, blobs, _ = encode_items(items, None)
            else:
                encoder.write(self.requests.buffer)
                block = self.requests.name
        self.send(["run", block, blobs])
        while True:
            message = self.receive(deadline)
            if message[0] == "need":
                granted = None
                try:
                    self.responses = shm.grown(self.responses, int(message[1]))
                    granted = self.responses.name
                except OSError as error:
                    logger.warning(
                        "no shared memory for %d bytes (%s): arrays go through the pipe", message[1], error
                    )
                self.send(["grant", granted])
            elif message[0] == "done":
                buffer = None
                if message[1] is not None:
                    if self.responses is None or self.responses.name != message[1]:
                        raise RuntimeError(f"worker answered in an unknown shared block {message[1]!r}")
                    buffer = self.responses.buffer
                if len(message) > 3:
                    worker_time.seconds = float(message[3])
                return [shm.decode(blob, buffer) for blob in message[2]]
            else:
                raise RuntimeError(f"unexpected message from a worker: {message[0]!r}")

    def exit_reason(self) -> str:
        self.process.join(5.0)
        code = self.process.exitcode
        if code is None:
            self.kill()
            return "it closed its connection"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return "signal SIGKILL, e.g. from the OOM killer" if name == "SIGKILL" else f"signal {name}"
        return f"exit code {code}"

    def stop(self) -> None:
        """Ask the worker to tear its model down and exit."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send_bytes(native.pack(["stop"]))

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()

    def discard(self, grace: float = 0.0) -> None:
        """Make sure the process is gone (killed after `grace` seconds) and free its pipe and blocks."""
        with self._lock:
            if self._discarded:
                return
            self._discarded = True
        if grace > 0:
            self.process.join(grace)
        if self.process.exitcode is None:
            self.kill()
            self.process.join(5.0)
        self.conn.close()
        for block in (self.requests, self.responses):
            if block is not None:
                block.release()
        self.requests = self.responses = None


def spawn(context: Any, slot: int, options: tuple[Any, ...], label: str) -> WorkerHandle:
    """Start worker process `slot` (it loads its model; see `wait_ready`), with a pipe to it."""
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(
        target=worker_main, args=(theirs, *options), name=f"modelpod-worker-{label}-{slot}"
    )
    try:
        process.start()
    except Exception as error:
        ours.close()
        raise ModelLoadError(f"cannot start a worker process for model {label}: {error}") from error
    finally:
        theirs.close()  # the child has its own copy: the pipe now ends when the child does
    return WorkerHandle(slot, process, ours)


def wait_ready(worker: WorkerHandle, closing: threading.Event, label: str) -> None:
    """Wait until the worker loaded its model; ModelLoadError if it could not (or died trying)."""
    while not worker.conn.poll(_POLL):
        if closing.is_set():
            raise Unavailable(f"the worker pool of model {label} closed while a worker loaded")
    try:
        message = native.unpack(worker.conn.recv_bytes())
    except (EOFError, OSError):
        reason = worker.exit_reason()
        raise ModelLoadError(
            f"the worker process of model {label} died ({reason}) while loading the model"
        ) from None
    if message[0] != "ready":
        raise ModelLoadError(str(message[1]))
    worker.started = time.monotonic()


def reference_of(target: Any) -> str:
    """What a worker process resolves with `modelpod.runtime.objects` to find `target` again.

    `path/to/file.py:Qualname` for a class or function of a top-level module with a file (this
    is how `modelpod.runtime.objects` loads a file), `package.module:Qualname` otherwise; a string is
    taken to be such a reference already.
    """
    if isinstance(target, str):
        return target
    if isinstance(target, ModelFile):
        return target.reference()
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not (inspect.isclass(target) or inspect.isfunction(target)) or not module_name or not qualname:
        raise TypeError(
            f"a model in worker processes must be a class or a module-level function, not {target!r}"
        )
    if "<locals>" in qualname:
        raise TypeError(f"{qualname} is defined inside a function: worker processes cannot import it")
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if module_name != "__main__" and "." not in module_name and file:
        path = Path(file)
        if path.suffix == ".py" and path.stem == module_name:
            return f"{path.resolve()}:{qualname}"
    return f"{module_name}:{qualname}"


def encode_items(
    items: list[dict[str, Any]], threshold: int | None
) -> tuple[shm.Encoder, list[bytes | None], dict[int, ModelpodError]]:
    """Each item's bytes (None for one that cannot travel) and the errors of those that cannot."""
    encoder = shm.Encoder(threshold)
    blobs: list[bytes | None] = []
    failures: dict[int, ModelpodError] = {}
    for index, item in enumerate(items):
        try:
            blobs.append(encoder.encode(item))
        except TypeError as error:
            failures[index] = InvalidInput(f"item {index}: {error}")
            blobs.append(None)
    return encoder, blobs, failures
