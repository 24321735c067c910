"""Models the worker-process tests run: each shows one behaviour a worker pool must get right."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from typing import Any

import numpy as np

from modelpod import InvalidInput, Model, Response, TensorSpec


class Scale(Model):
    """A tensor model: large arrays in, large arrays out (through shared memory)."""

    name = "scale"
    inputs = (TensorSpec("x", "FP64", (-1, -1)), TensorSpec("k", "INT32", (-1, -1)))
    outputs = (TensorSpec("y", "FP64", (-1, -1)), TensorSpec("k", "INT32", (-1, -1)))

    def predict(self, x: np.ndarray, k: np.ndarray) -> dict[str, Any]:
        return {"y": x * 2.0, "k": k + 1}


class Words(Model):
    """A keyword model with per-item failures of every kind, answered in several shapes."""

    name = "words"

    def predict(self, text: str, repeat: int = 1) -> Any:
        if text == "invalid":
            raise InvalidInput("text must not be 'invalid'")
        if text == "boom":
            raise RuntimeError("the model broke")
        if text == "refuse":
            return Response({"error": "refused"}, status=400)
        if text == "set":
            return {1, 2}
        return {"text": text * repeat, "words": tuple(text.split()), "length": np.int64(len(text))}


def shout(text: str) -> str:
    """A plain function served as a model."""
    return text.upper()


class Crash(Model):
    """Dies, hangs or answers, as each request asks; answers with its pid.

    It cannot load while a file `fail-load` is in its data path.
    """

    name = "crash"

    def setup(self) -> None:
        if (self.data_path / "fail-load").exists():
            raise RuntimeError("fail-load is in the data path")

    def predict(self, how: str = "ok") -> int:
        if how == "segfault":
            ctypes.string_at(0)
        elif how == "exit":
            os._exit(3)
        elif how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "hang":
            time.sleep(60)
        elif how.startswith("sleep"):
            time.sleep(float(how[5:]))
        return os.getpid()


class Spin(Model):
    """GIL-bound pure Python: burns `seconds` of CPU; answers when it ran, by the wall clock."""

    name = "spin"

    def predict(self, seconds: float) -> dict[str, Any]:
        started = time.time()
        until = time.process_time() + seconds
        count = 0
        while time.process_time() < until:
            count += 1
        return {"pid": os.getpid(), "start": started, "end": time.time(), "count": count}


class BrokenWeights(Model):
    """Cannot load."""

    name = "broken"

    def setup(self) -> None:
        raise FileNotFoundError("weights.bin is missing from the model folder")
