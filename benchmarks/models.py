"""The models the benchmark serves with modelpod.

    modelpod serve benchmarks/models.py:MLP benchmarks/models.py:KeywordMLP \
        benchmarks/models.py:Echo benchmarks/models.py:TensorEcho benchmarks/models.py:MiniLM

- `MLP`: the numpy MLP of `mlp_numpy` as a tensor model, one 256-vector per request, batched
  dynamically (up to 32 rows, waiting at most a few milliseconds for more).
- `KeywordMLP`: the same MLP as a keyword model (no tensor specs): each request's `x` arrives as
  the JSON lists it was sent as, and `predict_batch` stacks a batch of them into one array.
- `Echo`: returns its input (the 256-float vector) unchanged; measures the framework, not a model.
- `TensorEcho`: returns its FP32 tensor unchanged; the binary tensor transfer test (64 MiB).
- `MiniLM`: `examples/embeddings.py` (all-MiniLM-L6-v2, offline) with dynamic batching.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from mlp_numpy import SIZES, NumpyMLP, sample_row

from modelpod.runtime.model import Model
from modelpod.types import TensorSpec

ROOT = Path(__file__).resolve().parents[1]

MLP_BATCH_SIZE = 32
MLP_BATCH_DELAY_MS = 2.0
MINILM_BATCH_SIZE = 32
MINILM_BATCH_DELAY_MS = 5.0


def _load_example(name: str) -> ModuleType:
    """An `examples/` file as a module, without `examples` being a package."""
    module_name = f"modelpod_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load examples/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


Embeddings: Any = _load_example("embeddings").Embeddings


class MLP(Model):
    """256 -> 1024 -> 1024 -> 10 (ReLU), float32; `predict(x)` takes (n, 256), returns (n, 10)."""

    name = "mlp"
    inputs: ClassVar[Sequence[TensorSpec]] = [TensorSpec("x", "FP32", (-1, SIZES[0]))]
    outputs: ClassVar[Sequence[TensorSpec]] = [TensorSpec("y", "FP32", (-1, SIZES[-1]))]
    example: ClassVar[dict[str, Any]] = {"x": np.asarray([sample_row()], dtype=np.float32)}
    max_batch_size = MLP_BATCH_SIZE
    max_batch_delay_ms = MLP_BATCH_DELAY_MS

    def setup(self) -> None:
        self.net = NumpyMLP(int(self.config.get("seed", 0)))

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self.net.forward(x)


class KeywordMLP(Model):
    """The MLP without tensor specs: `x` comes as lists; `predict_batch` runs a batch as one array."""

    name = "mlp_keyword"
    example: ClassVar[dict[str, Any]] = {"x": [sample_row()]}
    max_batch_size = MLP_BATCH_SIZE
    max_batch_delay_ms = MLP_BATCH_DELAY_MS

    def setup(self) -> None:
        self.net = NumpyMLP(int(self.config.get("seed", 0)))

    def predict(self, x: list[list[float]]) -> dict[str, list[list[float]]]:
        return {"y": self.net.forward(x).tolist()}

    def predict_batch(self, items: Sequence[dict[str, Any]]) -> list[dict[str, list[list[float]]]]:
        rows = [len(item["x"]) for item in items]
        y = self.net.forward([row for item in items for row in item["x"]])
        starts = np.cumsum([0, *rows])
        return [{"y": y[start:end].tolist()} for start, end in itertools.pairwise(starts)]


class Echo(Model):
    """Returns its input: the cost of the framework around a model that does nothing."""

    name = "echo"
    example: ClassVar[dict[str, Any]] = {"x": [sample_row()]}

    def predict(self, x: list[list[float]]) -> dict[str, list[list[float]]]:
        return {"x": x}


class AsyncEcho(Model):
    """The echo written as `async def predict`: awaited on the server's event loop, no thread in
    between (what an `async def` FastAPI handler does with its model)."""

    name = "async_echo"
    example: ClassVar[dict[str, Any]] = {"x": [sample_row()]}

    async def predict(self, x: list[list[float]]) -> dict[str, list[list[float]]]:
        return {"x": x}


class TensorEcho(Model):
    """Returns its FP32 tensor unchanged: binary tensor transfer, both ways."""

    name = "tensor_echo"
    inputs: ClassVar[Sequence[TensorSpec]] = [TensorSpec("x", "FP32", (-1, -1))]
    outputs: ClassVar[Sequence[TensorSpec]] = [TensorSpec("y", "FP32", (-1, -1))]

    def predict(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return x


class MiniLM(Embeddings):  # type: ignore[misc]
    """all-MiniLM-L6-v2 sentence embeddings, one sentence per request, batched dynamically."""

    name = "minilm"
    max_batch_size = MINILM_BATCH_SIZE
    max_batch_delay_ms = MINILM_BATCH_DELAY_MS


class FastVectors(Model):
    """MiniLM's shape without its compute: a fixed 384-float vector per text, batched as MiniLM is, with
    a token count as cheap as the one MiniLM keeps from its batch. What a route itself costs."""

    name = "fastvectors"
    max_batch_size = MINILM_BATCH_SIZE
    max_batch_delay_ms = MINILM_BATCH_DELAY_MS
    VECTOR: ClassVar[list[float]] = [float(i) / 384 for i in range(384)]

    def predict(self, text: str) -> list[float]:
        return list(self.VECTOR)

    def predict_batch(self, items: Sequence[dict[str, Any]]) -> list[list[float]]:
        return [list(self.VECTOR) for _ in items]

    def count_tokens(self, text: str) -> int:
        return text.count(" ") + 1
