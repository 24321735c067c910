"""The benchmark MLP in plain numpy: 256 -> 1024 -> 1024 -> 10, float32, ReLU, fixed seed.

Shared by every server under test (modelpod, plain FastAPI, LitServe), so each one runs the same
arithmetic on the same weights. It imports numpy only: the LitServe environment has no modelpod.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

SIZES = (256, 1024, 1024, 10)
SEED = 0

Array = npt.NDArray[np.float32]


class NumpyMLP:
    """Dense layers with ReLU between them; `forward` takes (n, 256) and returns (n, 10) logits."""

    def __init__(self, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.layers: list[tuple[Array, Array]] = []
        for fan_in, fan_out in itertools.pairwise(SIZES):
            weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            self.layers.append((weight, np.zeros(fan_out, dtype=np.float32)))

    def forward(self, x: npt.ArrayLike) -> Array:
        out: Array = np.asarray(x, dtype=np.float32).reshape(-1, SIZES[0])
        last = len(self.layers) - 1
        for index, (weight, bias) in enumerate(self.layers):
            out = out @ weight + bias
            if index < last:
                np.maximum(out, 0.0, out=out)
        return out


def sample_row() -> list[float]:
    """The one 256-vector every MLP request carries (fixed, so every run posts the same body)."""
    values: list[float] = np.linspace(-1.0, 1.0, SIZES[0], dtype=np.float32).round(4).tolist()
    return values
