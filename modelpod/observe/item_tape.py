"""A stream's items as payload capture keeps them: the first ones, until they add up to a size budget.

A stream may be long (a generation of thousands of tokens) or endless; what a capture keeps of it
must be bounded while it streams, not when it ends. The serving core adds each item it sends to a
tape while a recorder wants payloads; the tape keeps references to the items until their estimated
size passes the budget, then only counts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_BUDGET = 16 * 1024 * 1024  # bytes kept of a stream when the capture sets no size limit


class ItemTape:
    """The items of one stream: the first kept (by reference), every one counted."""

    __slots__ = ("budget", "closed", "count", "items", "size")

    def __init__(self, budget: int | None) -> None:
        self.budget = DEFAULT_BUDGET if budget is None else budget
        self.items: list[Any] = []
        self.size = 0
        self.count = 0
        self.closed = False  # the caller had what it wanted and closed the stream (a stop sequence)

    def add(self, item: Any) -> None:
        self.count += 1
        if self.count != len(self.items) + 1:
            return  # already over the budget: later items are only counted
        size = approximate_size(item)
        if self.size + size <= self.budget:
            self.items.append(item)
            self.size += size

    @property
    def complete(self) -> bool:
        """Whether every item the stream sent is kept."""
        return len(self.items) == self.count


def approximate_size(value: Any, depth: int = 0) -> int:
    """Bytes a value takes, roughly, as a capture would store it (arrays and bytes by their data,
    text by its characters, containers by their contents)."""
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if depth > 8:
        return 64
    if isinstance(value, Mapping):
        return sum(len(str(key)) + approximate_size(item, depth + 1) for key, item in value.items())
    if isinstance(value, list | tuple):
        return sum(approximate_size(item, depth + 1) for item in value) + len(value)
    return 8
