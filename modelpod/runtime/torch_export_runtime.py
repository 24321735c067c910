"""Serve a `torch.export` archive (`.pt2`, `torch.export.save`) with torch (the `torch` extra).

An exported program records everything the metadata needs: the inputs are `forward`'s arguments
with the datatypes and shapes it was exported with, a dimension exported as dynamic
(`torch.export.Dim`) free (-1); the outputs are named by the answer's dict keys, else `output` or
`output_0`, `output_1`, .... A declaration (`--runtime-option outputs=...`, a sidecar
`model.pt2.json`, see `declared_specs`) renames or reshapes them. Requests are batched when every
input and output has a free first dimension, i.e. the first dimension was exported as dynamic.

The program's module is moved to the Runner's device; a program that baked a device into its
graph (a tensor created on "cpu" inside `forward`) runs on that device alone: export it there.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from modelpod.errors import ModelLoadError
from modelpod.runtime.declared_specs import declared
from modelpod.runtime.file_model import HANDOFF, Description, batch_first, file_key
from modelpod.runtime.torch_files import TorchFileModel, datatype_of_tensor, import_torch, output_names
from modelpod.types import TensorSpec


def load_program(torch: Any, path: Path) -> Any:
    try:
        return torch.export.load(str(path))
    except Exception as error:  # torch raises many types for a damaged or foreign archive
        raise ModelLoadError(f"{path} is not a torch.export archive torch can load: {error}") from None


def _spec(name: str, value: Any, where: str) -> TensorSpec:
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise ModelLoadError(f"{where} {name!r} is a {type(value).__name__}, not a tensor")
    shape = tuple(d if isinstance(d, int) else -1 for d in value.shape)  # a symbol is a dynamic dimension
    return TensorSpec(name, datatype_of_tensor(value, f"{where} {name!r}"), shape)


def describe_program(program: Any, where: str) -> Description:
    nodes = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    inputs = tuple(
        _spec(name, nodes[name].meta.get("val"), f"{where}: input")
        for name in program.graph_signature.user_inputs
    )
    values = [arg.meta.get("val") for arg in next(n for n in program.graph.nodes if n.op == "output").args[0]]
    values = values[len(values) - len(program.graph_signature.user_outputs) :]  # mutated buffers come first
    spec = program.call_spec.out_spec
    if spec is not None and spec.type is dict:
        names = [str(key) for key in spec.context]
    else:
        names = output_names(values if len(values) != 1 else values[0])
    outputs = tuple(_spec(name, value, f"{where}: output") for name, value in zip(names, values, strict=True))
    return Description(inputs, outputs, batchable=batch_first((*inputs, *outputs)))


@lru_cache(maxsize=64)
def _describe(path: str, stamp: tuple[int, int]) -> Description:
    program = load_program(import_torch(Path(path)), Path(path))
    HANDOFF.put(("torch-export", path, stamp), program)  # the first setup takes it: read once
    return describe_program(program, path)


class TorchExportModel(TorchFileModel):
    """A program saved by `torch.export.save`. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "torch-export"
    platform: ClassVar[str] = "pytorch_export"

    def describe(self) -> Description:
        found = _describe(*file_key(self.path))
        wanted = declared(self.path, self.config)
        for key, have in (("inputs", found.inputs), ("outputs", found.outputs)):
            if key in wanted and len(wanted[key]) != len(have):
                raise ModelLoadError(
                    f"{self.path}: {len(wanted[key])} {key} declared, the program has {len(have)}"
                )
        inputs = wanted.get("inputs", found.inputs)
        outputs = wanted.get("outputs", found.outputs)
        return Description(inputs, outputs, batchable=batch_first((*inputs, *outputs)))

    def load_module(self, torch: Any) -> Any:
        program = HANDOFF.take(("torch-export", *file_key(self.path)))
        if program is None:
            program = load_program(torch, self.path)
        return program.module().to(self.device)
