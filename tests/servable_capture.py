"""Models the payload capture tests serve."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from modelpod import InvalidInput, Model, TensorSpec


class Scorer(Model):
    """Keyword arguments in; a secret that its `redact` hook hides from every capture."""

    name = "scorer"
    example = {"x": [1.0, 2.0], "secret": "warm-up"}

    def predict(self, x: Any, secret: str = "", note: str = "") -> dict[str, Any]:
        values = np.asarray(x)
        if values.size and values.min() < 0:
            raise InvalidInput("x must not be negative")
        return {"y": values * 2, "total": float(values.sum()), "secret_length": len(secret), "note": note}

    def redact(self, inputs: dict[str, Any], outputs: Any) -> tuple[dict[str, Any], Any]:
        if "secret" in inputs:
            inputs["secret"] = "***"
        return inputs, outputs


class Doubling(Model):
    """A tensor model: the arrays as they are, doubled."""

    name = "doubling"
    inputs = [TensorSpec("x", "FP32", (-1, -1))]
    outputs = [TensorSpec("y", "FP32", (-1, -1))]

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": x * 2}


class SlowRedact(Model):
    """Quick to answer, slow to redact: its captures fill the queue."""

    name = "slowredact"
    example = {"n": 0}

    def predict(self, n: int) -> dict[str, int]:
        return {"n": n}

    def redact(self, inputs: dict[str, Any], outputs: Any) -> tuple[dict[str, Any], Any]:
        time.sleep(1.0)
        return inputs, outputs
