"""A small numpy multi-layer perceptron, served as a tensor model: the benchmark model.

    python examples/mlp.py

16 inputs -> `hidden` units (ReLU) -> 4 class probabilities (softmax), FP32 throughout. The
weights are drawn from `seed`, so two instances with the same config answer the same.

Configuration: `hidden` (default 64), `seed` (default 0).

As a tensor model it receives numpy arrays with the batch first: `predict(x)` takes an
(n, 16) array and returns (n, 4); `predict_batch` concatenates the requests' arrays, runs one
forward pass and splits the result back, one array per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from modelpod.errors import InvalidInput
from modelpod.runtime.model import Model
from modelpod.types import TensorSpec

IN_FEATURES = 16
OUT_FEATURES = 4

Array = npt.NDArray[np.float32]


class MLP(Model):
    """Two dense layers with ReLU and softmax, weights seeded from the config."""

    name = "mlp"
    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [TensorSpec("x", "FP32", (-1, IN_FEATURES))]
    outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [
        TensorSpec("y", "FP32", (-1, OUT_FEATURES))
    ]
    example: ClassVar[Mapping[str, Any] | None] = {
        "x": np.linspace(-1.0, 1.0, IN_FEATURES, dtype=np.float32).reshape(1, IN_FEATURES)
    }

    def setup(self) -> None:
        hidden = self.config.get("hidden", 64)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise InvalidInput(f"hidden must be a positive integer, not {hidden!r}")
        rng = np.random.default_rng(int(self.config.get("seed", 0)))
        # He initialisation for the ReLU layer, Glorot for the output layer.
        self.w1 = _weights(rng, IN_FEATURES, hidden, np.sqrt(2.0 / IN_FEATURES))
        self.b1 = _weights(rng, 1, hidden, 0.01).reshape(hidden)
        self.w2 = _weights(rng, hidden, OUT_FEATURES, np.sqrt(2.0 / (hidden + OUT_FEATURES)))
        self.b2 = _weights(rng, 1, OUT_FEATURES, 0.01).reshape(OUT_FEATURES)

    def predict(self, x: npt.NDArray[Any]) -> Array:
        """`x`: (n, 16) numbers, or one (16,) row; returns (n, 4) probabilities."""
        return self._forward(_batch(x, ""))

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Array]:
        """Many requests, one pair of matrix products."""
        arrays = [_batch(_field(item, index), f"item {index}: ") for index, item in enumerate(items)]
        if not arrays:
            return []
        outputs = self._forward(np.concatenate(arrays))
        ends = np.cumsum([len(a) for a in arrays])[:-1]
        return np.split(outputs, ends)

    def teardown(self) -> None:
        del self.w1, self.b1, self.w2, self.b2

    def _forward(self, x: Array) -> Array:
        hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
        logits = hidden @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities: Array = exp / exp.sum(axis=1, keepdims=True)
        return probabilities


def _weights(rng: np.random.Generator, rows: int, cols: int, scale: float) -> Array:
    return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)


def _field(item: Mapping[str, Any], index: int) -> Any:
    try:
        return item["x"]
    except (KeyError, TypeError):
        raise InvalidInput(f"item {index}: expected a request with an 'x' field") from None


def _batch(x: Any, where: str) -> Array:
    """`x` as a float32 (n, 16) array, or an InvalidInput that says what is wrong with it."""
    try:
        array = np.asarray(x)
    except ValueError as error:  # ragged nested lists
        raise InvalidInput(f"{where}x must be an (n, {IN_FEATURES}) array: {error}") from None
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"{where}x must hold numbers, got {array.dtype}")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2 or array.shape[1] != IN_FEATURES:
        raise InvalidInput(f"{where}x must have shape (n, {IN_FEATURES}), got {tuple(np.shape(x))}")
    return array.astype(np.float32, copy=False)


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(MLP) as runner:
        x = np.random.default_rng(1).standard_normal((3, IN_FEATURES)).astype(np.float32)
        print(runner.predict(x=x))
