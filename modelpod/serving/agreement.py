"""Whether a shadow version's answer agrees with the served one, per output: exact for labels, text
and bytes, within a tolerance for floating-point numbers; a model's own `compare(served, shadow)`
decides for it when it has one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

RELATIVE = 1e-5  # floats agree within numpy's default tolerances: a rounding difference is no change
ABSOLUTE = 1e-8
ANSWER = "answer"  # the output name of an answer that is not an object of named outputs


def agreement(served: Any, shadow: Any, compare: Any = None) -> dict[str, bool]:
    """Per output (an object's keys; else one output, "answer"): did the shadow agree?"""
    if compare is not None:
        verdict = compare(served, shadow)
        if isinstance(verdict, Mapping):
            return {str(output): bool(agreed) for output, agreed in verdict.items()}
        return {ANSWER: bool(verdict)}
    if isinstance(served, Mapping) and isinstance(shadow, Mapping):
        outputs = set(served) | set(shadow)
        return {str(o): o in served and o in shadow and agrees(served[o], shadow[o]) for o in outputs}
    return {ANSWER: agrees(served, shadow)}


def agrees(served: Any, shadow: Any) -> bool:
    """One output: arrays and floats within tolerance, containers item by item, the rest exactly."""
    if isinstance(served, np.ndarray) or isinstance(shadow, np.ndarray):
        return _arrays_agree(np.asarray(served), np.asarray(shadow))
    if _is_float(served) or _is_float(shadow):
        if not (_is_number(served) and _is_number(shadow)):
            return False
        return math.isclose(served, shadow, rel_tol=RELATIVE, abs_tol=ABSOLUTE) or served == shadow
    if isinstance(served, Mapping) and isinstance(shadow, Mapping):
        return served.keys() == shadow.keys() and all(agrees(served[k], shadow[k]) for k in served)
    if isinstance(served, list | tuple) and isinstance(shadow, list | tuple):
        return len(served) == len(shadow) and all(agrees(a, b) for a, b in zip(served, shadow, strict=True))
    try:
        return bool(served == shadow)
    except Exception:  # an object whose == is not a plain yes or no: not known to agree
        return False


def _arrays_agree(served: np.ndarray, shadow: np.ndarray) -> bool:
    if served.shape != shadow.shape:
        return False
    if served.dtype.kind in "fc" and shadow.dtype.kind in "fciu":
        return bool(np.allclose(served, shadow, rtol=RELATIVE, atol=ABSOLUTE, equal_nan=True))
    return bool(np.array_equal(served, shadow))


def _is_float(value: Any) -> bool:
    return isinstance(value, float | np.floating)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
