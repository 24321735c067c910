"""What a request may leave in a state file: checked before anything changes.

Arguments of `initialize` and `train` are stored (in `model_info.json`, `training.json`) and sent
back in every listing. A value that JSON cannot hold, or that nests deeper than a listing can send
(orjson stops at 254 levels, and a listing wraps the arguments in several of its own), would fail
every later read of that file, for every client. So such a value is refused up front, with the
place in the value that is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from modelpod.errors import InvalidInput

MAX_DEPTH = 64  # levels of lists and objects a stored value may nest
_INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson encodes
_SHOWN_KEY = 40  # characters of a key shown in an error's path


RESERVED_ARGUMENTS = frozenset({"self"})  # the method's own first parameter


def check_arguments(arguments: Mapping[str, Any], what: str) -> None:
    """Keyword arguments of a method that stores them: no reserved name, and storable values."""
    reserved = sorted(RESERVED_ARGUMENTS.intersection(arguments))
    if reserved:
        raise InvalidInput(f"{what} may not be named {', '.join(map(repr, reserved))}: the name is reserved")
    check_storable(dict(arguments), what)


def check_storable(value: Any, what: str) -> None:
    """InvalidInput naming the first part of `value` that cannot be stored as JSON."""
    pending: list[tuple[Any, str, int]] = [(value, what, 0)]
    while pending:  # a loop, not recursion: no input is deep enough to exhaust the stack
        item, where, depth = pending.pop()
        if isinstance(item, dict | list | tuple) and depth >= MAX_DEPTH:
            raise InvalidInput(f"{what} nest deeper than {MAX_DEPTH} levels (at {where}); flatten them")
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    raise InvalidInput(
                        f"{where} has a key of type {type(key).__name__} ({_shown(key)}): "
                        f"{what} are stored as JSON, whose keys are strings"
                    )
                pending.append((inner, f"{where}[{_shown(key)}]", depth + 1))
        elif isinstance(item, list | tuple):
            pending.extend((inner, f"{where}[{index}]", depth + 1) for index, inner in enumerate(item))
        else:
            _check_scalar(item, where, what)


def _check_scalar(item: Any, where: str, what: str) -> None:
    if item is None or isinstance(item, bool | str):
        return
    if isinstance(item, int):
        if not _INT_RANGE[0] <= item <= _INT_RANGE[1]:
            raise InvalidInput(f"{where} is an integer beyond 64 bits: {what} are stored as JSON numbers")
        return
    if isinstance(item, float):
        if not math.isfinite(item):
            raise InvalidInput(f"{where} is {item!r}, which JSON cannot hold")
        return
    raise InvalidInput(
        f"{where} is a {type(item).__name__}: {what} are stored as JSON, so they must be "
        "null, booleans, numbers, strings, lists or objects"
    )


def _shown(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= _SHOWN_KEY else text[: _SHOWN_KEY - 3] + "..."
