"""Models the fault, overload and hostile-input tests serve: each fails, stalls or checks on purpose."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelpod import InvalidInput, Model, TensorSpec


def _record(folder: Path, filename: str, line: str) -> None:
    """Append a line to a file under the data path, so a test can see what ran and where."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / filename).open("a") as file:
        file.write(line + "\n")


class Fragile(Model):
    """Runs in two worker processes and fails as each request asks; answers with its pid.

    `how`: "ok", "segfault", "exit" (os._exit(3)), "abort" (SIGABRT), "hang", or "wait": write the
    worker's pid to `<data_path>/pids/<tag>` and sleep `seconds`, for a test to kill it from outside.
    """

    name = "fragile"
    isolation = "process"
    workers = 2

    def predict(self, how: str = "ok", seconds: float = 0.0, tag: str = "") -> dict[str, Any]:
        if how == "segfault":
            ctypes.string_at(0)
        elif how == "exit":
            os._exit(3)
        elif how == "abort":
            os.kill(os.getpid(), signal.SIGABRT)
        elif how == "hang":
            time.sleep(3600)
        elif how == "wait":
            folder = self.data_path / "pids"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{tag}.tmp").write_text(str(os.getpid()))
            (folder / f"{tag}.tmp").rename(folder / tag)  # whole, or not at all, for the reader
            time.sleep(seconds)
        elif how != "ok":
            raise InvalidInput(f"how must be ok, segfault, exit, abort, hang or wait, not {how!r}")
        return {"pid": os.getpid(), "how": how, "tag": tag}


class Steady(Model):
    """A healthy tensor model in the server's threads: y = 3x + 1, for traffic beside a fault."""

    name = "steady"
    inputs = [TensorSpec("x", "FP64", (-1, -1))]
    outputs = [TensorSpec("y", "FP64", (-1, -1))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 3 + 1


class Stall(Model):
    """Sleeps as long as asked, in the server's threads: a call that hangs past its deadline."""

    name = "stall"

    def predict(self, seconds: float = 0.0, tag: str = "") -> str:
        time.sleep(seconds)
        _record(self.data_path, "stall.log", tag)
        return tag


class NoWeights(Model):
    """Cannot load: its weights are missing. The others must serve, and this one say why."""

    name = "noweights"

    def setup(self) -> None:
        raise FileNotFoundError("weights.bin is missing from the model folder")

    def predict(self) -> str:
        return "never"


class NoWeightsInWorkers(NoWeights):
    """Cannot load in its worker processes either."""

    name = "noweightsinworkers"
    isolation = "process"


class Queued(Model):
    """Batched, with room for 2 queued rows: a slow batch fills the queue at once.

    Every request it computes is written to `<data_path>/queued.log`, so a test can tell a
    request dropped before compute from one that ran.
    """

    name = "queued"
    max_batch_size = 2
    max_queue_size = 2

    def predict(self, tag: str, seconds: float = 0.0) -> str:
        return self.predict_batch([{"tag": tag, "seconds": seconds}])[0]

    def predict_batch(self, items: list[dict[str, Any]]) -> list[str]:
        time.sleep(max(float(item.get("seconds", 0.0)) for item in items))
        for item in items:
            _record(self.data_path, "queued.log", str(item["tag"]))
        return [str(item["tag"]) for item in items]


class Lone(Model):
    """Not batched, with room for 2 waiting requests: past that, refused at once."""

    name = "lone"
    max_queue_size = 2

    def predict(self, tag: str, seconds: float = 0.0) -> str:
        time.sleep(seconds)
        _record(self.data_path, "lone.log", tag)
        return tag


class Careful(Model):
    """A keyword model that checks every argument: any bad input is its caller's error (400)."""

    name = "careful"

    def predict(self, text: str = "", times: int = 1) -> dict[str, Any]:
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a string, not {type(text).__name__}")
        if type(times) is not int or not 0 <= times <= 100:
            raise InvalidInput("times must be an integer from 0 to 100")
        return {"text": text * times, "length": len(text) * times}


class Affine(Model):
    """A tensor model with two inputs of fixed widths, batched: y = a @ w + b."""

    name = "affine"
    inputs = [TensorSpec("a", "FP32", (-1, 3)), TensorSpec("b", "FP32", (-1, 2))]
    outputs = [TensorSpec("y", "FP32", (-1, 2))]
    max_batch_size = 8
    max_batch_delay_ms = 1.0

    def predict(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if len(a) != len(b):
            raise InvalidInput(f"a has {len(a)} rows but b has {len(b)}")
        weights = np.arange(6, dtype=np.float32).reshape(3, 2)
        return a @ weights + b


class Hog(Model):
    """Holds 32 MiB per loaded version; its loaded versions may take 80 MiB together."""

    name = "hog"
    memory_budget = 80 * 2**20

    def setup(self) -> None:
        self.block = np.ones(32 * 2**20, dtype=np.uint8)  # written, so resident

    def predict(self) -> str:
        return self.version


class BatchedHang(Model):
    """Batches in one worker process, and hangs when asked: a batch runs until its latest deadline."""

    name = "batchedhang"
    isolation = "process"
    workers = 1
    max_batch_size = 4

    def predict(self, hang: bool = False) -> dict[str, Any]:
        if hang:
            time.sleep(3600)
        return {"pid": os.getpid()}
