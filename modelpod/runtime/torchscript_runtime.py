"""Serve a TorchScript archive (`torch.jit.save`) with torch (the `torch` extra).

An archive knows its arguments' names but not their datatypes or shapes, so the inputs are
declared (see `declared_specs`): `--runtime-option inputs="x:FP32[-1,8]"`, a sidecar
`model.pt.json` holding `{"inputs": [...], "outputs": [...]}` in the V2 metadata's shape, or
`modelpod.json` saved in the archive (`torch.jit.save(m, path, _extra_files={"modelpod.json": ...})`).
Outputs not declared are found by running the module once on zeros shaped like the inputs: a dict's
keys name them, else `output` (one tensor) or `output_0`, `output_1`, ... (a tuple).

The module runs on the Runner's device (`map_location`), under `torch.inference_mode()`; requests
are batched when every input and output has a free first dimension.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from modelpod.errors import ModelLoadError
from modelpod.runtime.declared_specs import declared, sidecar
from modelpod.runtime.file_model import HANDOFF, Description, batch_first, file_key
from modelpod.runtime.torch_files import TorchFileModel, import_torch, probed_outputs
from modelpod.types import TensorSpec


def load_archive(torch: Any, path: Path, device: str = "cpu") -> Any:
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated, and still what people ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as error:
        raise ModelLoadError(f"{path} is not a TorchScript archive torch can load: {error}") from None


def argument_names(module: Any) -> list[str]:
    """The names of `forward`'s arguments, `self` aside."""
    return [argument.name for argument in module.forward.schema.arguments[1:]]


@lru_cache(maxsize=64)
def _probed(path: str, stamp: tuple[int, int], inputs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    torch = import_torch(Path(path))
    module = load_archive(torch, Path(path))
    names = argument_names(module)
    if names != [spec.name for spec in inputs]:
        raise ModelLoadError(
            f"{path}: forward takes {names}, the declared inputs are {[spec.name for spec in inputs]}"
        )
    outputs = probed_outputs(torch, module, inputs, path)
    HANDOFF.put(("torchscript", path, stamp), module)  # the first setup takes it: read once
    return outputs


class TorchScriptModel(TorchFileModel):
    """A TorchScript module. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "torchscript"
    platform: ClassVar[str] = "pytorch_libtorch"  # Triton's name for TorchScript models

    def describe(self) -> Description:
        found = declared(self.path, self.config)
        if "inputs" not in found:
            raise ModelLoadError(
                f"{self.path}: a TorchScript archive does not record its inputs' datatypes and shapes; "
                f'declare them: --runtime-option inputs="x:FP32[-1,8]", '
                f"or a sidecar {sidecar(self.path).name} "
                'holding {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]}'
            )
        inputs = found["inputs"]
        outputs = found.get("outputs")
        if outputs is None:
            outputs = _probed(*file_key(self.path), inputs)
        return Description(inputs, outputs, batchable=batch_first((*inputs, *outputs)))

    def load_module(self, torch: Any) -> Any:
        module = HANDOFF.take(("torchscript", *file_key(self.path)))
        return load_archive(torch, self.path, self.device) if module is None else module.to(self.device)
