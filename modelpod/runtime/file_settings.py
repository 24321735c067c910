"""How one model file is served, as a config file or a repository's settings file writes it:

    runtime: torchscript                 # force a runtime (default: the file's format)
    options: {inputs: "x:FP32[-1,8]"}    # the runtime's options (--runtime-option)
    batching: {max_batch_size: 16, max_batch_delay_ms: 2, max_queue_size: 256}
    workers: 2                           # worker processes (0: the server's threads)
    processing: scaling.py:Scaled        # a subclass of the runtime's class that serves the file
                                         # (or package.module:Class); a file relative to the settings

checked here, with errors that name where they come from (`models.yaml: models[1].batching: ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

FILE_FIELDS = ("runtime", "options", "batching", "workers", "processing")
BATCH_FIELDS = ("max_batch_size", "max_batch_delay_ms", "max_queue_size")


def mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping, not {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def processing_reference(where: str, value: Any, folder: Path) -> str:
    """`file.py:Class` (relative to `folder`) or `package.module:Class`, with the file made absolute."""
    module_part, sep, attribute = str(value).rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not module_part or not attribute:
        raise ValueError(f"{where}.processing: expected FILE.py:Class or package.module:Class, not {value!r}")
    if module_part.endswith(".py") or "/" in module_part:
        module_part = str((folder / module_part).resolve())
    return f"{module_part}:{attribute}"


def file_settings(
    entry: Mapping[str, Any], where: str, folder: Path = Path(".")
) -> tuple[str | None, dict[str, Any]]:
    """(the runtime forced or None, the options the runtime gets, batching and workers included, and
    `processing`, the class reference, when one is named)."""
    unknown = sorted(set(entry) - set(FILE_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {', '.join(FILE_FIELDS)}")
    runtime = entry.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise ValueError(f"{where}.runtime: expected a runtime's name, e.g. onnx")
    options = mapping(f"{where}.options", entry.get("options") or {})
    if "processing" in options:  # the field is checked and made absolute; an option would be neither
        raise ValueError(f"{where}.options.processing: name the class in the field processing instead")
    batching = mapping(f"{where}.batching", entry.get("batching") or {})
    wrong = sorted(set(batching) - set(BATCH_FIELDS))
    if wrong:
        raise ValueError(f"{where}.batching: unknown field(s) {wrong}; known: {', '.join(BATCH_FIELDS)}")
    for key, value in batching.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}.batching.{key}: expected a number >= 0, not {value!r}")
    workers = entry.get("workers")
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
        raise ValueError(f"{where}.workers: expected a whole number >= 0, not {workers!r}")
    chosen = {**options, **batching, **({"workers": workers} if workers is not None else {})}
    if entry.get("processing") is not None:
        chosen["processing"] = processing_reference(where, entry["processing"], folder)
    return runtime, chosen
