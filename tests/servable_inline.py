"""Models that say which thread computed them: for the event loop's own computing of lone requests."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from modelpod import Model, TensorSpec


class Where(Model):
    """Batched; answers each request's thread name (the batcher's, a model thread's or the loop's)."""

    name = "where"
    max_batch_size = 8
    max_batch_delay_ms = 2.0

    def predict(self, sleep: float = 0.0) -> dict[str, Any]:
        return self.predict_batch([{"sleep": sleep}])[0]

    def predict_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        time.sleep(float(items[0].get("sleep", 0.0)))
        return [{"thread": threading.current_thread().name, "rows": len(items)} for _ in items]


class PlainWhere(Model):
    """Not batched: one call per request."""

    name = "plainwhere"

    def predict(self, sleep: float = 0.0) -> dict[str, Any]:
        time.sleep(sleep)
        return {"thread": threading.current_thread().name}


class TensorWhere(Model):
    """A batched tensor model: its rows count, a request of many rows is never computed inline."""

    name = "tensorwhere"
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("thread", "BYTES", (-1,))]
    max_batch_size = 8
    max_batch_delay_ms = 2.0

    def predict(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        name = threading.current_thread().name.encode()
        return np.array([name] * len(x), dtype=np.object_)
