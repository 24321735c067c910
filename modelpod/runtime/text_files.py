"""What the runtimes of text models (Hugging Face transformers, sentence-transformers) share: a
BYTES tensor as texts, and a tokenizer's limit enforced with a clear 400 instead of a silent cut.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from modelpod.errors import InvalidInput
from modelpod.types import TensorSpec

TEXT = "text"
TEXT_INPUT = TensorSpec(TEXT, "BYTES", (-1,))
_UNBOUNDED = 1_000_000  # tokenizers that know no limit say int(1e30)


def texts(array: np.ndarray[Any, Any]) -> list[str]:
    """A BYTES tensor (bytes from V2, str from the native routes) -> one text per row."""
    values = array.reshape(-1) if array.ndim else array.reshape(1)
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def token_limit(*limits: Any) -> int | None:
    """The smallest of the limits that are set and bounded; None when none is."""
    bounded = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < _UNBOUNDED]
    return min(bounded) if bounded else None


def check_lengths(counts: Sequence[int], limit: int | None, hint: str) -> None:
    """InvalidInput (400) naming the first text longer than `limit` tokens."""
    if limit is None:
        return
    for index, count in enumerate(counts):
        if count > limit:
            raise InvalidInput(
                f"text {index} is {count} tokens, more than the model's limit of {limit}; {hint}"
            )


def truthy(value: Any) -> bool:
    """A runtime option's yes: true, 1, yes, on (as text from the command line, or a bool)."""
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")
