"""What one tensor request may cost the server, judged from its shapes before any work is done.

A request of a few bytes can claim a great deal: `shape [4294967296, 0]` is an empty array, but to a
model of keyword arguments it is four billion calls; two million empty BYTES elements weigh 8 MB on
the wire but are two million Python objects once decoded, and two million calls. So each request is
measured three ways, by arithmetic on its shapes (no cost that grows with the data):

- rows: the calls a keyword-argument model gets (one per row); bounded by what the model's queue
  can hold (`max_queue_size`, at least its `max_batch_size`), or `max_request_rows`;
- elements: the values its tensors claim, a zero dimension counted as one (so a huge row count of
  empty rows is still huge); bounded by the message size limit (every value takes at least one
  byte on the wire), or `max_request_elements`;
- decoded bytes: what the values take in memory as the model gets them (a Python object for each
  value a keyword model is given, an object for each BYTES element); bounded by the message size
  limit, or `max_request_decoded_bytes`.

Past a bound the request is refused with `PayloadTooLarge` (413 / RESOURCE_EXHAUSTED), naming the
bound and the setting that raises it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpod.errors import PayloadTooLarge
from modelpod.types import BatchConfig

DEFAULT_MESSAGE_SIZE = 512 * 1024**2  # the server's own default for max_message_size
PYTHON_VALUE_BYTES = 32  # a boxed number or empty bytes object and the list slot pointing at it
BYTES_ELEMENT_BYTES = 64  # a decoded BYTES element: a bytes object and its slot in an object array
ROW_BYTES = 512  # a row's own request: its dict of fields, its future, its place in a batch


@dataclass(frozen=True)
class CostLimits:
    """The bounds a server sets; None derives each from the model's batching or the message limit."""

    max_rows: int | None = None
    max_elements: int | None = None
    max_decoded_bytes: int | None = None
    message_size: int | None = DEFAULT_MESSAGE_SIZE  # None: the server has no message limit

    def rows(self, batching: BatchConfig) -> int:
        if self.max_rows is not None:
            return self.max_rows
        return max(batching.max_queue_size, batching.max_batch_size)

    def elements(self) -> int | None:
        return self.max_elements if self.max_elements is not None else self.message_size

    def decoded_bytes(self) -> int | None:
        return self.max_decoded_bytes if self.max_decoded_bytes is not None else self.message_size


@dataclass(frozen=True)
class Cost:
    rows: int  # the calls the request means (1 for a tensor model, which gets the arrays whole)
    elements: int  # values claimed, a zero dimension counted as one
    decoded_bytes: int


def cost_of(inputs: Mapping[str, np.ndarray[Any, Any]], rows: int, boxed: Collection[str]) -> Cost:
    """The cost of tensors that make `rows` calls; the inputs in `boxed` reach the model as Python
    values (a keyword model's lists and numbers), the others as arrays."""
    elements = decoded = 0
    for name, array in inputs.items():
        claimed = array.size or math.prod([max(dim, 1) for dim in array.shape])  # size 0: count the rest
        elements += claimed
        if array.dtype.hasobject:
            decoded += claimed * BYTES_ELEMENT_BYTES
        else:
            boxing = PYTHON_VALUE_BYTES if name in boxed else 0  # the values as objects, beside the array
            decoded += claimed * (array.dtype.itemsize + boxing)
    return Cost(rows, elements, decoded + (rows * ROW_BYTES if rows > 1 else 0))


class DecodeBudget:
    """What one request's tensors may cost as they are decoded, charged from each tensor's datatype
    and shape before its data is read: ten million empty BYTES elements are refused before ten
    million objects are made. `rows_of` says how many calls a tensor's shape certainly means to its
    model (None: it depends on the other inputs); more than `max_rows` is refused there too."""

    def __init__(
        self,
        limit: int | None,
        rows_of: Callable[[str, Sequence[int]], int | None] | None = None,
        max_rows: int = 0,
        model: str = "",
    ) -> None:
        self.limit = limit
        self.spent = 0
        self._rows_of, self._max_rows, self._model = rows_of, max_rows, model

    def charge(self, name: str, datatype: str, shape: Sequence[int], itemsize: int) -> None:
        if self.limit is not None:
            each = BYTES_ELEMENT_BYTES if datatype == "BYTES" else itemsize
            self.spent += math.prod(shape) * each
            if self.spent > self.limit:
                raise PayloadTooLarge(
                    f"input {name!r}: the request's tensors take at least {self.spent} bytes decoded; "
                    f"at most {self.limit} are allowed: send less per request, or raise "
                    "MODELPOD_MAX_REQUEST_DECODED_BYTES (--max-request-decoded-bytes)"
                )
        rows = None if self._rows_of is None else self._rows_of(name, shape)
        if rows is not None and rows > self._max_rows:
            raise PayloadTooLarge(_too_many_rows(rows, self._max_rows, self._model))


def check_cost(cost: Cost, limits: CostLimits, batching: BatchConfig, model: str) -> None:
    """Refuse a request that costs more than the limits allow, naming the limit and its setting."""
    rows = limits.rows(batching)
    if cost.rows > rows:
        raise PayloadTooLarge(_too_many_rows(cost.rows, rows, model))
    elements = limits.elements()
    if elements is not None and cost.elements > elements:
        raise PayloadTooLarge(
            f"the request's tensors claim {cost.elements} elements (a zero dimension counted as one); "
            f"at most {elements} are allowed: raise MODELPOD_MAX_REQUEST_ELEMENTS (--max-request-elements)"
        )
    decoded = limits.decoded_bytes()
    if decoded is not None and cost.decoded_bytes > decoded:
        raise PayloadTooLarge(
            f"the request's tensors take about {cost.decoded_bytes} bytes decoded for model {model!r}; "
            f"at most {decoded} are allowed: send less per request, or raise "
            "MODELPOD_MAX_REQUEST_DECODED_BYTES (--max-request-decoded-bytes)"
        )


def _too_many_rows(rows: int, limit: int, model: str) -> str:
    return (
        f"the request carries {rows} rows, and model {model!r} runs one call per row; at most {limit} "
        "are allowed (by default the model's max_queue_size): send fewer rows per request, or raise "
        "MODELPOD_MAX_REQUEST_ROWS (--max-request-rows)"
    )
