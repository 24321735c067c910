"""Served names that are not one model: a `Router` forwards each request to one of several models,
and a `ServedPipeline` sends it through other served models, step by step, each step a request of
its own to its model (its batcher, its metrics under the protocol "pipeline")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from modelpod.errors import ModelpodError, NotFound
from modelpod.observe.events import RouteChosen, request_trace
from modelpod.runtime.runner import Runner
from modelpod.serving.execution import AnyRunner, Execution
from modelpod.serving.options import Options
from modelpod.serving.repository import HostedModel, Repository
from modelpod.serving.router import Router
from modelpod.serving.served_pipeline import ServedPipeline, name_step, pipeline_outputs, step_input
from modelpod.serving.tensor_requests import TensorRequests, is_router
from modelpod.serving.tensors import Arrays
from modelpod.types import BatchConfig, Response


class Composition:
    """Routes and pipelines over the models of one repository."""

    def __init__(self, repository: Repository, execution: Execution, tensor_requests: TensorRequests) -> None:
        self.repository = repository
        self.execution = execution
        self.tensor_requests = tensor_requests
        self._bind_pipelines()

    def _bind_pipelines(self) -> None:
        """At start-up: each pipeline's steps must be served here. A pipeline runs no model code but
        its `choose`, so it runs on this process's threads and does not batch (its steps do)."""
        served = {name: self.repository.get(name) for name in self.repository.names()}
        for hosted in served.values():
            if isinstance(hosted.probe, ServedPipeline):
                hosted.probe.bind({name: step.probe for name, step in served.items()})
                hosted.workers = 0
                hosted.batching = BatchConfig()

    def route(
        self,
        hosted: HostedModel,
        version: str,
        query_params: Mapping[str, str] | None,
        inputs: Mapping[str, Any],
    ) -> str | None:
        """The model a router forwards to; None for an ordinary model."""
        if not is_router(hosted):
            return None
        router = self.repository.instance(hosted, version)
        assert isinstance(router, Router)
        started = time.monotonic()
        target = router.choose(query_params or {}, inputs)
        if target == hosted.name or target not in self.repository.names():
            raise NotFound(f"router {hosted.name!r} routes to {target!r}, which is not served here")
        chosen = RouteChosen(hosted.name, version, target, time.monotonic() - started, request_trace.get())
        self.execution.recorder.on_route(chosen)
        return target

    async def predict(
        self,
        hosted: HostedModel,
        version: str,
        request: Mapping[str, Any],
        query_params: Mapping[str, str] | None,
        options: Options,
    ) -> Any:
        """One request through a pipeline, recorded as a request to the pipeline."""
        work = self._as_list(self._run(hosted, version, request, query_params, options))
        inputs = [request] if self.execution.recorder.wants_payloads else None  # for a capture
        return (await self.execution.observed(hosted, version, options, work, inputs))[0]

    @staticmethod
    async def _as_list(answer: Awaitable[Any]) -> list[Any]:
        """One call's answer as the answers of its calls, as a recorder is told them."""
        return [await answer]

    async def infer(
        self,
        hosted: HostedModel,
        version: str,
        inputs: Arrays,
        query_params: Mapping[str, str] | None,
        options: Options,
    ) -> Arrays:
        """Tensors through a pipeline, recorded as a request to the pipeline (for a capture: the
        calls its first model was given, and the answer of each)."""
        calls: list[Any] = []  # filled as the work runs; the recorder reads them once it is done
        tensors: list[Arrays] = []
        work = self._infer(hosted, version, inputs, query_params, options, calls, tensors)
        recorded = calls if self.execution.recorder.wants_payloads else None
        await self.execution.observed(hosted, version, options, work, recorded)
        return tensors[0]

    async def _infer(
        self,
        hosted: HostedModel,
        version: str,
        inputs: Arrays,
        query_params: Mapping[str, str] | None,
        options: Options,
        calls: list[Any],
        tensors: list[Arrays],
    ) -> list[Any]:
        """Taken as the pipeline's first model takes them (`calls`), given as its last gives them
        (`tensors`); the answer of each call."""
        pipeline = hosted.probe
        assert isinstance(pipeline, ServedPipeline)
        last = self.repository.get(pipeline.last_models()[0]).probe
        first = self.repository.get(pipeline.first_models()[0])
        calls.extend(await self.tensor_requests.calls(first, inputs))
        runs = (self._run(hosted, version, call, query_params, options) for call in calls)
        answers = await asyncio.gather(*runs)
        tensors.append(pipeline_outputs(last, answers))  # within the work: its failure is recorded
        return answers

    async def _run(
        self,
        hosted: HostedModel,
        version: str,
        request: Mapping[str, Any],
        query_params: Mapping[str, str] | None,
        options: Options,
    ) -> Any:
        """Each step is a request to its model, the Python result of one the input of the next."""
        pipeline = hosted.probe
        assert isinstance(pipeline, ServedPipeline)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        value: Any = request
        for index, step in enumerate(pipeline.steps):
            model = step if isinstance(step, str) else "choosing a branch"
            try:
                if not isinstance(step, str):
                    branch = (hosted, version, index, value, query_params or {})
                    model = await self.execution.admission.run(self._branch, *branch)
                value = await self._step(model, value, query_params, options, deadline)
            except ModelpodError as error:
                raise name_step(error, hosted.name, index, model) from None
            if isinstance(value, Response) and (value.status >= 400 or index == len(pipeline.steps) - 1):
                return value  # a step's own error answer ends the pipeline, as it would end a request
            if isinstance(value, Response):
                value = value.body
        return value

    def _branch(
        self, hosted: HostedModel, version: str, step: int, value: Any, query_params: Mapping[str, str]
    ) -> str:
        """Which model runs a branching step: the loaded pipeline's `choose` (its setup has run)."""

        def branch(runner: AnyRunner) -> str:
            assert isinstance(runner, Runner)
            assert isinstance(runner.model, ServedPipeline)
            return runner.model.branch(step, value, query_params)

        return self.execution.with_runner(hosted, version, branch)

    async def _step(
        self,
        name: str,
        value: Any,
        query_params: Mapping[str, str] | None,
        options: Options,
        deadline: float | None,
    ) -> Any:
        """One step, as a request to the step's model: its batcher, its metrics (protocol "pipeline")."""
        hosted, version = self.execution.available(name, None)
        request = step_input(value, hosted.probe)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        remaining = None if deadline is None else deadline - time.monotonic()
        step_options = Options(options.priority, remaining, "pipeline", options.traffic_key)
        work = self.execution.predict_many(hosted, version, [request], step_options)
        return (await self.execution.observed(hosted, version, step_options, work))[0]
