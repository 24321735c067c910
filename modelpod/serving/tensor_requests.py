"""Tensor requests admitted by their cost: what a request's tensors may cost as they are decoded (a
`DecodeBudget` the edges hand the decoder), and the model calls they mean, their whole cost checked
from the shapes before they are made. Large expansions and answers go to a thread, so the event
loop keeps answering health checks and other requests."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from modelpod.errors import ModelpodError
from modelpod.protocol.cost import CostLimits, DecodeBudget, check_cost, cost_of
from modelpod.runtime.model import Model
from modelpod.serving.repository import HostedModel, Repository
from modelpod.serving.router import Router
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.serving.tensors import Arrays, batches, call_plan, certain_rows, outputs_of, requests_of

SMALL_REQUEST = 4096
"""Rows plus elements a tensor request may have and still be expanded (or its answers stacked) on the
event loop: anything larger goes to a thread, so that health checks and other requests keep moving."""


class TensorRequests:
    """The cost bounds of one server, applied to the tensor requests of its repository's models."""

    def __init__(self, repository: Repository, limits: CostLimits) -> None:
        self.repository = repository
        self.limits = limits

    def decode_budget(self, name: str, version: str | None) -> DecodeBudget:
        """What a V2 request's tensors may cost as they are decoded: their bytes, and for a model of
        keyword arguments the calls their shapes certainly mean (checked again, whole, in `calls`)."""
        limit = self.limits.decoded_bytes()
        try:
            hosted, _ = self.repository.resolve(name, version)
        except ModelpodError:
            return DecodeBudget(limit)  # answered NotFound once decoded
        model = hosted.probe
        if isinstance(model, ServedPipeline) or is_router(hosted) or model.is_tensor_model():
            return DecodeBudget(limit)
        batching = hosted.batching.enabled or batches(model)
        rows = functools.partial(_certain_rows, model, batching)
        return DecodeBudget(limit, rows, self.limits.rows(hosted.batching), hosted.name)

    async def calls(self, hosted: HostedModel, inputs: Arrays) -> list[dict[str, Any]]:
        """The calls tensors mean to a model, their cost checked first from the shapes alone."""
        model = hosted.probe
        batching = hosted.batching.enabled or batches(model)
        count, boxed = call_plan(model, inputs, batching)
        cost = cost_of(inputs, count, boxed)
        check_cost(cost, self.limits, hosted.batching, hosted.name)
        if count + cost.elements <= SMALL_REQUEST:
            return requests_of(model, inputs, batching)
        return await asyncio.to_thread(requests_of, model, inputs, batching)

    @staticmethod
    async def outputs(model: Model, calls: int, inputs: Arrays, results: Sequence[Any]) -> Arrays:
        """The answers as output tensors: stacked on a thread when there are many."""
        if calls == 1 and not large_tensors(inputs):
            return outputs_of(model, results)
        return await asyncio.to_thread(outputs_of, model, results)


def is_router(hosted: HostedModel) -> bool:
    return isinstance(hosted.target, type) and issubclass(hosted.target, Router)


def large_tensors(arrays: Mapping[str, Any]) -> bool:
    """Whether tensors hold enough values that converting them belongs on a thread, off the loop."""
    return sum(getattr(array, "size", 0) for array in arrays.values()) > SMALL_REQUEST


def _certain_rows(model: Any, batching: bool, name: str, shape: Sequence[int]) -> int | None:
    return certain_rows(model, name, shape, batching)
