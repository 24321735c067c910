"""The keyword check before a model's call accepts and refuses exactly what `Signature.bind` does."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from modelpod.errors import InvalidInput
from modelpod.runtime.keywords import KeywordCheck


def plain(x: Any, y: Any = 1) -> None: ...
def keyword_only(*, x: Any, y: Any = 1) -> None: ...
def open_ended(x: Any, **rest: Any) -> None: ...
def with_args(x: Any, *args: Any) -> None: ...
def positional_only(x: Any, /, y: Any) -> None: ...
def positional_only_default(x: Any = 0, /, y: Any = 1) -> None: ...
def positional_only_open(x: Any = 0, /, **rest: Any) -> None: ...
def nothing() -> None: ...


FUNCTIONS = [plain, keyword_only, open_ended, with_args, positional_only, positional_only_default,
             positional_only_open, nothing]  # fmt: skip
FIELDS = [{}, {"x": 1}, {"y": 2}, {"x": 1, "y": 2}, {"x": 1, "z": 3}, {"args": 1}, {"x": 1, "rest": 2}]


def _bind_error(function: Callable[..., Any], fields: dict[str, Any]) -> str | None:
    try:
        inspect.signature(function).bind(**fields)
    except TypeError as error:
        return f"f: {error}"
    return None


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("fields", FIELDS, ids=lambda fields: ",".join(fields) or "none")
def test_the_check_refuses_what_bind_refuses_with_binds_message(
    function: Callable[..., Any], fields: dict[str, Any]
) -> None:
    expected = _bind_error(function, fields)
    check = KeywordCheck(inspect.signature(function))
    if expected is None:
        check.check(fields, "f")
        return
    with pytest.raises(InvalidInput) as raised:
        check.check(fields, "f")
    assert raised.value.message == expected


def test_without_a_signature_the_call_itself_decides() -> None:
    KeywordCheck(None).check({"anything": 1}, "f")
