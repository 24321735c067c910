"""Device selection: where a model runs.

    select_device()            # the CUDA GPU with the most free memory, else MPS, else CPU
    select_device("cuda")      # a CUDA GPU, the one with the most free memory -> "cuda:1"
    select_device("cuda:0")    # exactly that one, checked to exist
    select_device("cpu")       # always works, with or without torch

torch is optional: it is imported only inside `select_device`, and only when it is installed.
Measuring free memory (`torch.cuda.mem_get_info`) creates a CUDA context on each visible GPU;
limit the candidates with CUDA_VISIBLE_DEVICES where that matters.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from typing import Any

from modelpod.errors import ModelLoadError

ACCEPTED_FORMS = '"cpu", "cuda", "cuda:N" (N a GPU index), "mps"'
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def torch_available() -> bool:
    """True when torch is installed; torch itself is not imported."""
    return importlib.util.find_spec("torch") is not None


def select_device(requested: str | None = None) -> str:
    """The device to run on: `requested` when given (checked), else the best one available.

    Raises ValueError for an unknown device string, or for a device that is not available here.
    """
    if requested is None or not str(requested).strip():
        return _best_device()
    device = str(requested).strip().lower()
    if device == "cpu":
        return "cpu"
    if device not in ("mps", "cuda") and not _CUDA_INDEX.match(device):
        raise ValueError(f"unknown device {requested!r}: use one of {ACCEPTED_FORMS}")
    if not torch_available():
        raise ValueError(f"device {requested!r} needs torch, which is not installed; use 'cpu'")
    import torch

    if device == "mps":
        if not _mps_available(torch):
            raise ValueError("device 'mps' was requested but MPS is not available here; use 'cpu'")
        return "mps"
    count = _cuda_count(torch)
    if count == 0:
        raise ValueError(f"device {requested!r} was requested but CUDA is not available here")
    match = _CUDA_INDEX.match(device)
    if match is None:
        return f"cuda:{_most_free_cuda(torch, count)}"
    index = int(match.group(1))
    if index >= count:
        raise ValueError(
            f"device {requested!r} does not exist: {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        )
    return f"cuda:{index}"


def _best_device() -> str:
    if not torch_available():
        return "cpu"
    import torch

    count = _cuda_count(torch)
    if count > 0:
        return f"cuda:{_most_free_cuda(torch, count)}"
    if _mps_available(torch):
        return "mps"
    return "cpu"


def _cuda_count(torch: Any) -> int:
    """Number of usable CUDA devices; 0 when CUDA is missing."""
    if not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def _most_free_cuda(torch: Any, count: int) -> int:
    """Index of the CUDA device with the most free memory; the lowest index wins a tie.

    A device whose free memory cannot be read ranks last.
    """
    best, best_free = 0, -1
    for index in range(count):
        try:
            free, _total = torch.cuda.mem_get_info(index)
        except RuntimeError:
            continue
        if int(free) > best_free:
            best, best_free = index, int(free)
    return best


def _mps_available(torch: Any) -> bool:
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    return bool(mps is not None and mps.is_available())


def load_custom_ops(paths: Sequence[str]) -> None:
    """Load torch custom operator libraries (`torch.ops.load_library`), before a model's setup."""
    if not paths:
        return
    try:
        import torch
    except ImportError as error:
        raise ModelLoadError("custom_ops need torch: pip install 'modelpod[torch]'") from error
    for path in paths:
        try:
            torch.ops.load_library(path)
        except (OSError, RuntimeError) as error:
            raise ModelLoadError(f"cannot load custom operator library {path!r}: {error}") from error
