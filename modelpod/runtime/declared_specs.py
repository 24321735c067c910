"""Inputs and outputs declared for a model file that cannot tell them itself (a TorchScript archive
knows its arguments' names, not their datatypes or shapes).

A declaration is the V2 metadata's own shape, as JSON or as a mapping:

    {"inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
     "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]}

found, first match wins, in the runtime options `inputs=` / `outputs=` (text such as
`x:FP32[-1,8] mask:BOOL[-1,8]`, or lists of such mappings from a config file), in a sidecar file
next to the model file (`model.pt.json`), or in the archive itself (`modelpod.json` saved with
`torch.jit.save(..., _extra_files={"modelpod.json": ...})`).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelpod.errors import ModelLoadError
from modelpod.types import TensorSpec

_SPEC = re.compile(r"([A-Za-z_][\w.-]*):([A-Z0-9]+)\[([-0-9, ]*)\]")
ARCHIVED = "modelpod.json"  # the declaration's name inside an archive


def sidecar(path: Path) -> Path:
    """The declaration file next to a model file: `model.pt` -> `model.pt.json`."""
    return path.with_name(path.name + ".json")


def parse_specs(value: Any, where: str) -> tuple[TensorSpec, ...]:
    """`x:FP32[-1,8] y:INT64[-1]` (any separator between specs), or a list of mappings or specs."""
    try:
        if isinstance(value, str):
            found = _SPEC.findall(value)
            if not found or _SPEC.sub("", value).strip(" ,;"):
                raise ValueError(f"expected NAME:DATATYPE[DIMS] ..., e.g. x:FP32[-1,8], not {value!r}")
            return tuple(
                TensorSpec(name, datatype, tuple(int(d) for d in dims.split(",") if d.strip()))
                for name, datatype, dims in found
            )
        if isinstance(value, Sequence):
            return tuple(s if isinstance(s, TensorSpec) else TensorSpec(**dict(s)) for s in value)
    except (TypeError, ValueError) as error:
        raise ModelLoadError(f"{where}: {error}") from None
    raise ModelLoadError(f"{where}: expected a list of tensors, not {type(value).__name__}")


def _from_mapping(document: Any, where: str) -> dict[str, tuple[TensorSpec, ...]]:
    if not isinstance(document, Mapping):
        raise ModelLoadError(f"{where}: expected an object with inputs and outputs")
    unknown = set(document) - {"inputs", "outputs"}
    if unknown:
        raise ModelLoadError(f"{where}: unknown field(s) {sorted(unknown)}; expected inputs, outputs")
    return {key: parse_specs(value, f"{where} {key}") for key, value in document.items()}


def _read_json(text: str | bytes, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise ModelLoadError(f"{where} is not JSON: {error}") from None


def _archived(path: Path) -> str | bytes | None:
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(f"/extra/{ARCHIVED}"):
                return archive.read(name)
    return None


def declared(path: Path, options: Mapping[str, Any]) -> dict[str, tuple[TensorSpec, ...]]:
    """What is declared for `path` -> {"inputs": ..., "outputs": ...}, either or both or neither."""
    found: dict[str, tuple[TensorSpec, ...]] = {}
    side = sidecar(path)
    if path.is_file():
        text = _archived(path)
        if text is not None:
            found.update(_from_mapping(_read_json(text, f"{path}:{ARCHIVED}"), f"{path}:{ARCHIVED}"))
    if side.is_file():
        found.update(_from_mapping(_read_json(side.read_text(), str(side)), str(side)))
    for key in ("inputs", "outputs"):
        if options.get(key) is not None:
            found[key] = parse_specs(options[key], f"runtime option {key}")
    return found
