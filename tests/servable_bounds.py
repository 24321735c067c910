"""Models for the request-bound tests: keyword models with and without hints, batching and not."""

from __future__ import annotations

from typing import Any

from modelpod import Model


class Unhinted(Model):
    """`predict(self, x)`, no declared inputs, no hints, no batching: it takes whatever it is given."""

    name = "unhinted"

    def predict(self, x):  # type: ignore[no-untyped-def]  # unhinted on purpose: what the tests probe
        values = x if isinstance(x, list) else [x]
        return {"y": [float(v) * 2 for v in values], "calls": 1}


class Words(Model):
    """A keyword model that takes one string per call, without batching: a 1-D tensor is many calls."""

    name = "words"

    def predict(self, text: str) -> str:
        return text.upper()


class Batched(Model):
    """A batching keyword model: rows of a tensor reach it together, in batches."""

    name = "batched"
    max_batch_size = 8
    max_queue_size = 64

    def predict(self, x: float) -> float:
        return x + 1

    def predict_batch(self, items: list[dict[str, Any]]) -> list[float]:
        return [float(item["x"]) + 1 for item in items]
