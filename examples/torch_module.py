"""A tiny torch module served as a tensor model: Linear(8, 16) -> ReLU -> Linear(16, 3).

    pip install torch
    python examples/torch_module.py

The module is built in `setup` from `seed` (default 0) on the runner's device, so two instances
with the same config hold the same weights. torch is imported inside the methods only: the
file imports without it.

`predict(x)` takes an (n, 8) array or tensor (one (8,) row is taken as n = 1) and answers in
kind: a numpy input gets a float32 numpy array, a tensor input the module's own output tensor
(on the device, in the dtype the runner's autocast produced). NaN inputs are let through, so
the runner's NaN check has something to find. After each call `last_call` records what the
forward pass saw (inference mode, grad, autocast, output dtype), for tests of the runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelpod.errors import InvalidInput
from modelpod.runtime.model import Model
from modelpod.types import TensorSpec

if TYPE_CHECKING:
    import torch

IN_FEATURES = 8
HIDDEN = 16
OUT_FEATURES = 3


class TinyTorch(Model):
    """Two linear layers on `self.device`, deterministic from the config's `seed`."""

    name = "tiny-torch"
    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [TensorSpec("x", "FP32", (-1, IN_FEATURES))]
    outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [
        TensorSpec("y", "FP32", (-1, OUT_FEATURES))
    ]
    example: ClassVar[Mapping[str, Any] | None] = {
        "x": np.linspace(-1.0, 1.0, IN_FEATURES, dtype=np.float32).reshape(1, IN_FEATURES)
    }

    module: torch.nn.Module | None = None
    last_call: dict[str, Any]

    def setup(self) -> None:
        import torch

        with torch.random.fork_rng(devices=[]):  # seed the weights without touching global state
            torch.manual_seed(int(self.config.get("seed", 0)))
            module = torch.nn.Sequential(
                torch.nn.Linear(IN_FEATURES, HIDDEN),
                torch.nn.ReLU(),
                torch.nn.Linear(HIDDEN, OUT_FEATURES),
            )
        self.module = module.to(self.device).eval()
        self.last_call = {}

    def predict(self, x: Any) -> Any:
        """`x`: (n, 8) numbers as a numpy array, a tensor or nested lists; returns (n, 3)."""
        import torch

        output = self._forward(_batch(x, "", self.device))
        return output if isinstance(x, torch.Tensor) else _numpy(output)

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Many requests, one forward pass; each answer in the kind its request came in."""
        import torch

        fields = [_field(item, index) for index, item in enumerate(items)]
        if not fields:
            return []
        batches = [_batch(x, f"item {index}: ", self.device) for index, x in enumerate(fields)]
        outputs = torch.split(self._forward(torch.cat(batches)), [len(b) for b in batches])
        return [
            out if isinstance(x, torch.Tensor) else _numpy(out)
            for x, out in zip(fields, outputs, strict=True)
        ]

    def teardown(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        if self.module is None:
            raise RuntimeError("TinyTorch.setup() has not run")
        y: torch.Tensor = self.module(x)
        device_type = x.device.type
        self.last_call = {
            "inference_mode": torch.is_inference_mode_enabled(),
            "grad_enabled": torch.is_grad_enabled(),
            "autocast": torch.is_autocast_enabled(device_type),
            "device": str(y.device),
            "dtype": str(y.dtype).removeprefix("torch."),
            "rows": len(y),
        }
        return y


def _field(item: Mapping[str, Any], index: int) -> Any:
    try:
        return item["x"]
    except (KeyError, TypeError):
        raise InvalidInput(f"item {index}: expected a request with an 'x' field") from None


def _batch(x: Any, where: str, device: str) -> torch.Tensor:
    """`x` as a float32 (n, 8) tensor on `device`, or an InvalidInput saying what is wrong."""
    import torch

    try:
        tensor = torch.as_tensor(x, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise InvalidInput(f"{where}x must be an (n, {IN_FEATURES}) array of numbers: {error}") from None
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise InvalidInput(f"{where}x must hold real numbers, got {tensor.dtype}")
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2 or tensor.shape[1] != IN_FEATURES:
        raise InvalidInput(f"{where}x must have shape (n, {IN_FEATURES}), got {tuple(tensor.shape)}")
    return tensor.to(torch.float32)


def _numpy(tensor: torch.Tensor) -> Any:
    return tensor.detach().float().cpu().numpy()


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(TinyTorch) as runner:
        print(runner.predict(x=np.ones((2, IN_FEATURES), dtype=np.float32)))
