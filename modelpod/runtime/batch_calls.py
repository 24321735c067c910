"""Many requests in one call: a model's own `predict_batch`, or a tensor model's rows stacked into
one `predict` and cut back per request. With `skip_errors`, a failing request's place holds its
error and the others still get answers (the failing ones found by calling each alone)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from modelpod.errors import InvalidInput, ModelError, ModelpodError
from modelpod.runtime.calls import ModelCalls, as_item_error
from modelpod.runtime.inputs import Prepared
from modelpod.runtime.items import collect_batch, model_items
from modelpod.runtime.stacking import split, stack


def chunk_results(
    calls: ModelCalls,
    chunk: Sequence[Mapping[str, Any]],
    offset: int,
    skip_errors: bool,
    rows: Sequence[int] | None = None,
) -> list[Any]:
    """Each item's result; `rows`, when given, are the items' row counts (a batcher's, counted when
    each was submitted)."""
    prepared: list[Prepared] = []
    failures: dict[int, ModelpodError] = {}
    for index, item in enumerate(chunk):
        where = f"item {offset + index}: "
        try:
            if not isinstance(item, Mapping):
                raise InvalidInput(
                    f"{where}expected a mapping of input names to values, got {type(item).__name__}"
                )
            prepared.append(calls.prepare(item, where))
        except ModelpodError as error:
            if not skip_errors:
                raise
            failures[index] = error
    kept_rows = None if rows is None else [r for i, r in enumerate(rows) if i not in failures]
    outputs = batch_outputs(calls, [p.values for p in prepared], skip_errors, kept_rows)
    results: list[Any] = []
    good = iter(zip(prepared, outputs, strict=True))
    for index in range(len(chunk)):
        if index in failures:
            results.append(failures[index])
            continue
        done, output = next(good)
        if isinstance(output, ModelpodError):
            if not skip_errors:
                raise output
            results.append(output)
        else:
            results.append(calls.safe_finish(done, output, skip_errors))
    return results


def batch_outputs(
    calls: ModelCalls, items: list[dict[str, Any]], skip_errors: bool, rows: Sequence[int] | None = None
) -> list[Any]:
    if not items:
        return []
    if calls.model.has_batch():
        batch: Callable[..., Any] = calls.model.predict_batch  # type: ignore[attr-defined]
        try:
            outputs = calls.call_model(batch, (items,), {})
        except ModelpodError:
            if not skip_errors:
                raise
            return [calls.isolated(item) for item in items]  # find the failing items one by one
        if isinstance(outputs, Generator):  # a streaming batch, gathered per request
            pairs = model_items(outputs, calls.call_model, calls.label)
            outputs = collect_batch(pairs, len(items), calls.label)
        if not isinstance(outputs, Sequence) or len(outputs) != len(items):
            count = len(outputs) if isinstance(outputs, Sequence) else type(outputs).__name__
            raise ModelError(
                f"{calls.model!r}.predict_batch returned {count} results for {len(items)} requests"
            )
        return [as_item_error(o) for o in outputs]
    if calls.model.is_tensor_model() and len(items) > 1 and not calls.model.is_streaming():
        stacked = stack(items, rows)
        if stacked is not None:
            return _stacked_outputs(calls, *stacked, items, skip_errors)
    if skip_errors:
        return [calls.isolated(item) for item in items]
    return [calls.call_predict(item) for item in items]


def _stacked_outputs(
    calls: ModelCalls,
    joined: dict[str, Any],
    rows: Sequence[int],
    items: list[dict[str, Any]],
    skip_errors: bool,
) -> list[Any]:
    """One call for every request of a tensor model, its output cut back per request."""
    try:
        output = calls.call_model(calls.model.predict, (), joined)
    except ModelpodError:
        if not skip_errors:
            raise
        return [calls.isolated(item) for item in items]  # find the failing items one by one
    try:
        return split(output, rows)
    except ValueError as error:
        raise ModelError(f"model {calls.label} cannot be batched: {error}") from None
