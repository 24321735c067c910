"""Join tensor requests along their first dimension, and cut a batched output back into one per request."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def rows_of(inputs: Mapping[str, Any]) -> int:
    """How many rows a tensor request carries: the first dimension of its inputs (1 for scalars)."""
    for value in inputs.values():
        shape = getattr(value, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return 1


def stack(
    items: Sequence[Mapping[str, Any]], rows: Sequence[int] | None = None
) -> tuple[dict[str, Any], Sequence[int]] | None:
    """One request holding every item's rows, and each item's row count (`rows` when the caller
    counted them already, as a batcher does when a request is submitted); None if they do not join."""
    names = list(items[0])
    if any(list(item) != names for item in items):
        return None
    if rows is None:
        rows = [rows_of(item) for item in items]
    joined: dict[str, Any] = {}
    for name in names:
        values = [item[name] for item in items]
        if any(getattr(v, "ndim", 0) == 0 for v in values):
            return None
        if any(
            v.shape[1:] != values[0].shape[1:] or v.shape[0] != r for v, r in zip(values, rows, strict=True)
        ):
            return None
        joined[name] = _concatenate(values)
    return joined, rows


def split(output: Any, rows: Sequence[int]) -> list[Any]:
    """The batched output of `stack`ed inputs, one part per request (arrays, tuples or mappings)."""
    if isinstance(output, Mapping):
        parts = {key: split(value, rows) for key, value in output.items()}
        return [{key: parts[key][i] for key in parts} for i in range(len(rows))]
    if isinstance(output, tuple):
        columns = [split(value, rows) for value in output]
        return [tuple(column[i] for column in columns) for i in range(len(rows))]
    if getattr(output, "shape", None) is None or len(output.shape) == 0 or output.shape[0] != sum(rows):
        raise ValueError(f"a batched output must have {sum(rows)} rows, one per input row")
    bounds = np.cumsum([0, *rows])
    return [output[start:end] for start, end in itertools.pairwise(bounds)]


def _concatenate(values: list[Any]) -> Any:
    if type(values[0]).__module__.startswith("torch"):
        import torch

        return torch.cat(values, dim=0)
    return np.concatenate(values, axis=0)
