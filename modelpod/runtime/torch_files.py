"""What the two PyTorch runtimes share (TorchScript, `torch.export`): torch's datatypes as the
protocol's, arrays to tensors on the model's device and back, and a module's answer (a tensor, a
tuple or a dict of tensors) as named outputs.

torch is imported only when a file is served (`needs_extra("torch", ...)`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime.file_model import Arrays, FileModel
from modelpod.types import TensorSpec, numpy_dtype

# torch's dtype names -> Open Inference Protocol datatypes
DATATYPES = {
    "torch.bool": "BOOL",
    "torch.uint8": "UINT8",
    "torch.int8": "INT8",
    "torch.int16": "INT16",
    "torch.int32": "INT32",
    "torch.int64": "INT64",
    "torch.float16": "FP16",
    "torch.float32": "FP32",
    "torch.float64": "FP64",
}
PROBE_BATCH = 2  # rows of the zeros a module is probed with, to tell its batch dimension


def import_torch(path: Path) -> Any:
    with needs_extra("torch", f"serving {path.name}"):
        import torch

    return torch


def datatype_of_tensor(tensor: Any, where: str) -> str:
    datatype = DATATYPES.get(str(tensor.dtype))
    if datatype is None:
        raise ModelLoadError(f"{where} is a {tensor.dtype} tensor, which the protocol has no datatype for")
    return datatype


def output_names(answer: Any) -> list[str]:
    """The names a module's answer gives its tensors: a dict's keys, `output_N` for a tuple's
    items, `output` for one tensor."""
    if isinstance(answer, Mapping):
        return [str(key) for key in answer]
    if isinstance(answer, tuple | list):
        return [f"output_{index}" for index in range(len(answer))]
    return ["output"]


def flatten(answer: Any, names: list[str]) -> list[Any]:
    """A module's answer as one tensor per output, in the order of `names`."""
    if isinstance(answer, Mapping):
        if all(name in answer for name in names):
            return [answer[name] for name in names]
        answer = list(answer.values())  # renamed by a declaration: in the dict's order
    items = list(answer) if isinstance(answer, tuple | list) else [answer]
    if len(items) != len(names):
        raise ValueError(f"the module answered {len(items)} tensor(s), {len(names)} output(s) are declared")
    return items


def probe_inputs(torch: Any, specs: tuple[TensorSpec, ...]) -> list[Any]:
    """Zeros shaped like the inputs: PROBE_BATCH rows for a free first dimension, 1 for others."""
    tensors = []
    for spec in specs:
        shape = [PROBE_BATCH if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
        tensors.append(torch.zeros(shape, dtype=getattr(torch, str(numpy_dtype(spec.datatype)))))
    return tensors


def probed_outputs(
    torch: Any, module: Any, inputs: tuple[TensorSpec, ...], where: str
) -> tuple[TensorSpec, ...]:
    """The outputs of `module` as it answers zeros shaped like `inputs`: a first dimension free
    when the inputs' is and the answer has as many rows."""
    batched = bool(inputs) and all(spec.shape and spec.shape[0] < 0 for spec in inputs)
    try:
        with torch.inference_mode():
            answer = module(*probe_inputs(torch, inputs))
        names = output_names(answer)
        tensors = flatten(answer, names)
    except Exception as error:  # any error of the user's module: say what was tried
        raise ModelLoadError(
            f"{where}: could not run the module on zeros shaped like the declared inputs "
            f"({error}); declare its outputs too"
        ) from None
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        shape = [int(d) for d in tensor.shape]
        if batched and shape and shape[0] == PROBE_BATCH:
            shape[0] = -1
        specs.append(TensorSpec(name, datatype_of_tensor(tensor, f"{where} output {name!r}"), tuple(shape)))
    return tuple(specs)


class TorchFileModel(FileModel):
    """A PyTorch module from a file, run on the Runner's device with inference mode on.
    Subclasses load it (`load_module`) and describe it."""

    runtime_name: ClassVar[str] = "torch"
    module: Any = None

    def load_module(self, torch: Any) -> Any:
        raise NotImplementedError

    def setup(self) -> None:
        self.torch = import_torch(self.path)
        self.module = self.load_module(self.torch)
        self._input_names = [spec.name for spec in self.description.inputs]
        self._input_dtypes = [numpy_dtype(spec.datatype) for spec in self.description.inputs]
        self._output_names = [spec.name for spec in self.description.outputs]

    def teardown(self) -> None:
        self.module = None

    def run(self, inputs: Arrays) -> Arrays:
        torch = self.torch
        tensors = [
            torch.from_numpy(np.require(inputs[name], dtype, ["C", "W"])).to(self.device)
            for name, dtype in zip(self._input_names, self._input_dtypes, strict=True)
        ]
        with torch.inference_mode():
            answer = self.module(*tensors)
        outputs = flatten(answer, self._output_names)
        return {
            name: tensor.detach().cpu().numpy()
            for name, tensor in zip(self._output_names, outputs, strict=True)
        }
