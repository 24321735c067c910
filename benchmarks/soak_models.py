"""The models `soak.py` serves: steady work in threads, and a model in worker processes to hurt.

    modelpod serve benchmarks/soak_models.py:Work benchmarks/soak_models.py:Isolated --model-timeout 3

- `Work`: a small batched tensor model (y = x @ W, 16 -> 4), the bulk of the load.
- `Isolated`: a keyword model in two worker processes; `how="slow"` sleeps `seconds`, which
  the server's `--model-timeout` cuts short by replacing the worker.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from modelpod import InvalidInput, Model, TensorSpec

WIDTH, OUTPUTS = 16, 4
WEIGHTS = np.arange(WIDTH * OUTPUTS, dtype=np.float32).reshape(WIDTH, OUTPUTS) / 64


class Work(Model):
    """y = x @ W, batched: the answer a client can check exactly."""

    name = "work"
    inputs = [TensorSpec("x", "FP32", (-1, WIDTH))]
    outputs = [TensorSpec("y", "FP32", (-1, OUTPUTS))]
    max_batch_size = 32
    max_batch_delay_ms = 2.0
    max_queue_size = 512

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ WEIGHTS


class Isolated(Model):
    """x * 2 in one of two worker processes; or as slow as asked."""

    name = "isolated"
    isolation = "process"
    workers = 2
    max_queue_size = 64

    def predict(self, x: float, how: str = "ok", seconds: float = 0.0) -> dict[str, Any]:
        if how == "slow":
            time.sleep(seconds)
        elif how != "ok":
            raise InvalidInput(f"how must be ok or slow, not {how!r}")
        return {"y": x * 2, "pid": os.getpid()}
