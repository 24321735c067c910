"""A model whose training takes as long as asked, reports each step, and can fail half-way."""

from __future__ import annotations

import time
from typing import Any

from modelpod import Model


class Learner(Model):
    """Predicts what its last successful training saved ("untrained" before any)."""

    name = "learner"

    def setup(self) -> None:
        weights = self.model_dir / "weights.txt"
        self.weights = weights.read_text() if weights.exists() else "untrained"

    def predict(self, x: int = 0) -> dict[str, Any]:
        return {"weights": self.weights, "x": x}

    def train(self, steps: int = 3, seconds_per_step: float = 0.0, fail_at: int = 0) -> dict[str, Any]:
        for step in range(1, steps + 1):
            time.sleep(seconds_per_step)
            if step == fail_at:
                raise RuntimeError(f"diverged at step {step}")
            self.report(step=step, total=steps, loss=1.0 / step)
        (self.model_dir / "weights.txt").write_text(f"trained for {steps} steps")
        return {"steps": steps}
