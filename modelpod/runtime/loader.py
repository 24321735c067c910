"""Find what to serve from a command-line reference: `path/to/file.py:Class`, `pkg.module:Class`, a
model file (`model.onnx`, `iris.joblib`: see runtime/formats.py), each optionally named:
`name=path/to/file.py:Class`, `iris=model.joblib`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelpod.runtime.formats import model_file
from modelpod.runtime.objects import load_object

_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)=(?P<ref>.+)$")


def parse_reference(
    reference: str, runtime: str | None = None, allow_pickle: bool = False, **options: Any
) -> tuple[str | None, Any]:
    """`[name=]module_or_file:attribute` -> (name or None, the object it names); `[name=]PATH` of a
    model file -> (name or None, its `ModelFile`), `runtime` forcing its format."""
    match = _NAMED.match(reference)
    name, ref = (match.group("name"), match.group("ref")) if match else (None, reference)
    if is_model_file(ref) or (runtime is not None and ":" not in ref):
        return name, model_file(ref, runtime, allow_pickle, **options)
    return name, load_object(ref)


def is_model_file(reference: str) -> bool:
    """A reference that names an existing file or folder other than Python source is a model file."""
    path = Path(reference)
    return path.suffix != ".py" and (path.is_file() or path.is_dir()) and ":" not in path.name
