"""JSON for the native routes: numpy arrays and scalars as lists and numbers, bytes as base64."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from modelpod.errors import InvalidInput

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> bytes:
    """Encode a model's result; raises TypeError naming what JSON cannot hold."""
    return orjson.dumps(value, default=_fallback, option=_OPTIONS)


def loads(body: bytes | bytearray, what: str = "the request body") -> Any:
    """Decode a request; malformed JSON is the client's error, with where it went wrong."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(f"{what} is not valid JSON: {error}") from None


def _fallback(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if hasattr(value, "tolist"):  # numpy object arrays, torch tensors
        return value.detach().cpu().tolist() if hasattr(value, "detach") else value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON")
