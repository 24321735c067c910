"""Models the Ray tests deploy: each answer says which replica (process) and version gave it."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from modelpod import Model, TensorSpec


class Whoami(Model):
    """Answers with its process id, version, config and weights: which replica ran a request, on what."""

    name = "whoami"
    example = {"text": "warm-up"}

    def setup(self) -> None:
        weights = self.model_dir / "weights.txt"
        self.weights = weights.read_text() if weights.exists() else None

    def predict(self, text: str = "") -> dict[str, Any]:
        return {"pid": os.getpid(), "version": self.version, "config": self.config, "text": text,
                "weights": self.weights}  # fmt: skip

    def train(self, steps: int = 2) -> dict[str, Any]:
        (self.model_dir / "weights.txt").write_text(f"trained {steps}")
        return {"steps": steps}


class BatchedDoubler(Model):
    """A batching tensor model, for tritonclient: doubles its input."""

    name = "doubler"
    inputs = [TensorSpec("x", "FP32", (-1, 4))]
    outputs = [TensorSpec("y", "FP32", (-1, 4))]
    max_batch_size = 8
    max_batch_delay_ms = 2.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2
