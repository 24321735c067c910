"""The worker process's side: load the model from its reference, tell the parent it is ready, then
answer batches (through `modelpod.workers.shm`) until told to stop or the parent is gone."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from modelpod.errors import ModelError, ModelLoadError, ModelpodError
from modelpod.protocol import native
from modelpod.workers import shm

logger = logging.getLogger("modelpod.workers.process_main")


def worker_main(
    conn: Connection,
    reference: str,
    version: str,
    name: str,
    data_path: str,
    runner_options: dict[str, Any],
    threshold: int,
    log_level: int,
    parent: int,
) -> None:
    """The body of a worker process: load the model, then answer batches until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the pool stops us
    faulthandler.enable()  # a segfault prints the Python stack before the process dies
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"
    )
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    label = f"{name}:{version}"
    try:
        runner = _load_runner(reference, version, name, data_path, runner_options)
    except BaseException as error:
        if isinstance(error, ModelpodError):
            message = error.message
        else:
            message = f"model {label} cannot be loaded in a worker process: {type(error).__name__}: {error}"
        conn.send_bytes(native.pack(["failed", message]))
        return
    conn.send_bytes(native.pack(["ready", os.getpid()]))
    _Serving(conn, runner, threshold, label).serve()


def _load_runner(
    reference: str, version: str, name: str, data_path: str, runner_options: dict[str, Any]
) -> Any:
    from modelpod.runtime.adapters import as_model
    from modelpod.runtime.formats import REFERENCE_PREFIX, from_reference
    from modelpod.runtime.objects import load_object
    from modelpod.runtime.runner import Runner

    try:
        # A model file's reference carries its options (allow_pickle among them); only the parent
        # writes one, so it is read here, never by load_object, which also reads a store's records.
        target = (
            from_reference(reference) if reference.startswith(REFERENCE_PREFIX) else load_object(reference)
        )
    except Exception as error:
        raise ModelLoadError(
            f"a worker process of model {name}:{version} cannot find {reference!r}: {error}"
        ) from error
    runner = Runner(as_model(target, version, name=name, data_path=Path(data_path)), **runner_options)
    runner.load()
    return runner


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


class _Serving:
    """The worker's side of the pipe."""

    def __init__(self, conn: Connection, runner: Any, threshold: int, label: str) -> None:
        self.conn = conn
        self.runner = runner
        self.threshold = threshold
        self.label = label
        self.blocks: dict[str, shm.Block] = {}  # "requests" / "responses" -> the block attached

    def serve(self) -> None:
        try:
            while True:
                try:
                    message = native.unpack(self.conn.recv_bytes())
                except (EOFError, OSError):
                    return  # the parent is gone
                if message[0] == "stop":
                    return
                self._run(message[1], message[2])
        finally:
            try:
                self.runner.close()
            except Exception:
                logger.exception("model %s failed to tear down", self.label)
            for block in self.blocks.values():
                block.release()

    def _attached(self, role: str, name: str | None) -> memoryview | None:
        if name is None:
            return None
        block = self.blocks.get(role)
        if block is None or block.name != name:
            if block is not None:
                block.release()
            block = self.blocks[role] = shm.Block.attach(name)
        return block.buffer

    def _run(self, block: str | None, blobs: list[bytes | None]) -> None:
        started = time.perf_counter()
        results = self._predict(block, blobs)
        seconds = time.perf_counter() - started  # the model's own time, told with its answers
        encoder, answers = self._encode(results, self.threshold)
        granted = None
        if encoder.size:
            self.conn.send_bytes(native.pack(["need", encoder.size]))
            granted = native.unpack(self.conn.recv_bytes())[1]
            if granted is None:
                encoder, answers = self._encode(results, None)
            else:
                buffer = self._attached("responses", granted)
                assert buffer is not None
                encoder.write(buffer)
        self.conn.send_bytes(native.pack(["done", granted, answers, seconds]))

    def _predict(self, block: str | None, blobs: list[bytes | None]) -> list[Any]:
        try:
            buffer = self._attached("requests", block)
            items = [None if blob is None else shm.decode(blob, buffer) for blob in blobs]
            results: list[Any] = self.runner.predict_batch(items, skip_errors=True)
        except ModelpodError as error:
            return [error] * len(blobs)
        except Exception as error:
            failure = ModelError(f"model {self.label} failed in its worker process: {type(error).__name__}")
            logger.exception("error id %s: batch failed", failure.error_id)
            return [failure] * len(blobs)
        return results

    def _encode(self, results: list[Any], threshold: int | None) -> tuple[shm.Encoder, list[bytes]]:
        encoder = shm.Encoder(threshold)
        answers = []
        for result in results:
            try:
                answers.append(encoder.encode(result))
            except TypeError as error:
                failure = ModelError(
                    f"model {self.label} returned a value that cannot leave its worker: {error}"
                )
                logger.error("error id %s: %s", failure.error_id, failure.message)
                answers.append(encoder.encode(failure))
        return encoder, answers
