"""Which keyword arguments a model's method takes, checked before each call.

`inspect.Signature.bind` names a missing or unknown field exactly, but it walks the parameters in
Python on every call: several microseconds of every request, on the event loop when the model is
computed there. The names a signature takes by keyword, and those it needs, are read once; a call
whose fields pass both set comparisons is bound as `bind` would bind it, and only a call that
fails them is handed to `bind`, for its message."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from modelpod.errors import InvalidInput

_BY_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class KeywordCheck:
    """A signature's keyword parameters: `check(fields)` raises InvalidInput as `bind` would."""

    def __init__(self, signature: inspect.Signature | None) -> None:
        self.signature = signature
        parameters = list(signature.parameters.values()) if signature is not None else []
        self.required = frozenset(
            p.name for p in parameters if p.kind in _BY_KEYWORD and p.default is inspect.Parameter.empty
        )
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        self.accepted = None if open_ended else frozenset(p.name for p in parameters if p.kind in _BY_KEYWORD)
        # `bind` refuses a positional-only parameter's name as a keyword, even one with a default
        # and `**rest` to take it: such signatures are left to `bind` on every call
        self.comparable = not any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in parameters)

    def check(self, fields: Mapping[str, Any], label: str) -> None:
        signature = self.signature
        if signature is None:
            return  # builtins without a signature: the call itself decides
        if self.comparable:
            names = fields.keys()
            if names >= self.required and (self.accepted is None or names <= self.accepted):
                return
        try:
            signature.bind(**fields)
        except TypeError as error:
            raise InvalidInput(f"{label}: {error}") from None
