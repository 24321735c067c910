"""The transport-free inference core: find the model and version, run it off the event loop, drain.

HTTP and gRPC are thin codecs around one `InferenceService`; nothing here knows about either.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from modelpod import __version__
from modelpod import timing as timings
from modelpod.batching import BatchConfig, Batcher
from modelpod.errors import InvalidInput, ModelpodError, NotFound, Timeout, Unavailable
from modelpod.inputs import check_field_names
from modelpod.isolation import ProcessRunner
from modelpod.metrics import ServerMetrics
from modelpod.pool import ModelPool
from modelpod.recent import RecentActivity
from modelpod.repository import HostedModel, Repository
from modelpod.request_cost import CostLimits, DecodeBudget, check_cost, cost_of
from modelpod.router import Router
from modelpod.runner import Runner, check_train_options
from modelpod.served_pipeline import ServedPipeline, name_step, pipeline_outputs, step_input
from modelpod.stacking import rows_of
from modelpod.statistics import Statistics
from modelpod.storable import check_arguments
from modelpod.stream_serving import BatchedStream, Channel, ItemPump, feed
from modelpod.streaming import DONE
from modelpod.tensors import (
    Arrays,
    advertised_specs,
    batches,
    call_plan,
    certain_rows,
    outputs_of,
    requests_of,
)
from modelpod.training import TrainingJob, TrainingJobs
from modelpod.types import Response, TensorSpec
from modelpod.waiting import WaitingRoom

logger = logging.getLogger("modelpod.service")

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What a request may ask beyond its inputs: how urgent it is, and how long it may take."""

    priority: int = 0
    timeout: float | None = None  # seconds from arrival; past it the request is answered Timeout
    protocol: str = "python"  # which edge it came through, for the metrics


DEFAULT_OPTIONS = Options()
SMALL_REQUEST = 4096
"""Rows plus elements a tensor request may have and still be expanded (or its answers stacked) on the
event loop: anything larger goes to a thread, so that health checks and other requests keep moving."""
PLATFORM = "modelpod"


class ServerFacts(NamedTuple):
    name: str
    version: str
    extensions: Sequence[str]


class ModelFacts(NamedTuple):
    name: str
    versions: Sequence[str]
    platform: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]


def request_options(priority: Any = None, timeout: Any = None, protocol: str = "python") -> Options:
    """Options from what a transport received (header or parameter text), checked."""
    try:
        chosen_priority = int(priority) if priority not in (None, "") else 0
        seconds = float(timeout) if timeout not in (None, "") else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite priority
        raise InvalidInput(
            f"priority must be an integer and timeout a number, not {priority!r}, {timeout!r}"
        ) from None
    if seconds is not None and not seconds >= 0:  # also refuses NaN
        raise InvalidInput(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return Options(chosen_priority, timings.clamp_wait(seconds), protocol)


METHODS = ("predict", "initialize", "train", "training", "log")
EXTENSIONS = ("binary_tensor_data", "model_repository", "modelpod_native")


class InferenceService:
    """Everything a transport can ask of the server, as plain Python calls."""

    def __init__(
        self,
        repository: Repository,
        pool: ModelPool,
        max_workers: int = 12,
        name: str = "modelpod",
        slow_ms: float = 1000.0,
        limits: CostLimits | None = None,
    ) -> None:
        self.repository = repository
        self.pool = pool
        self.name = name
        self.limits = limits or CostLimits()  # what one tensor request may cost (modelpod.request_cost)
        self.slow_ms = slow_ms  # requests to a model that take longer are logged with their breakdown
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="modelpod-model")
        self._in_flight = 0
        self._lock = threading.Lock()  # guards the in-flight count and the batchers
        self._draining = False
        self._ready = True
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._waiting_rooms: dict[tuple[str, str], WaitingRoom] = {}  # for the models that do not batch
        self._stream_batchers: dict[tuple[str, str], Batcher] = {}  # for models whose predict_batch yields
        self.statistics = Statistics()
        self.training = TrainingJobs(
            on_start=lambda job: self.metrics.training_started(job.model, job.version),
            on_end=self.training_ended,
        )
        self.recent = RecentActivity()  # the status page's last few minutes
        self.metrics = ServerMetrics(pool, self._queue_depths, lambda: self.in_flight)
        self._bind_pipelines()

    # -- running model code -------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run blocking model code on the worker threads, counted for a graceful drain."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()  # the request id follows the work onto the thread
        call = functools.partial(context.run, function, *args)
        return await self._await(lambda: loop.run_in_executor(self._executor, call), timeout)

    async def _await(self, start: Callable[[], asyncio.Future[T]], timeout: float | None) -> T:
        """Wait for work started by `start`, counted in flight; past `timeout`, answer Timeout."""
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica", retry_after=1.0)
        if timeout is not None and timeout <= 0:
            raise Timeout("the request's deadline had passed when it arrived")
        with self._lock:
            self._in_flight += 1
        try:
            return await asyncio.wait_for(start(), timeout)
        except TimeoutError:
            raise Timeout(f"no answer within the request's timeout of {timeout:g} s") from None
        finally:
            with self._lock:
                self._in_flight -= 1

    def _batcher(self, hosted: HostedModel, version: str) -> Batcher | None:
        """The batcher of one version, made on first use; None for a model that does not batch."""
        if not hosted.batching.enabled:
            return None
        return self._batcher_in(self._batchers, hosted, version, self._run_batch, "")

    def _batcher_in(
        self,
        batchers: dict[tuple[str, str], Batcher],
        hosted: HostedModel,
        version: str,
        run: Callable[[HostedModel, str, list[Any]], Sequence[Any]],
        kind: str,
    ) -> Batcher:
        """The batcher of one version in `batchers`, made on first use, running batches with `run`."""
        key = (hosted.name, version)
        with self._lock:
            batcher = batchers.get(key)
            if batcher is None:
                observer = functools.partial(self._observe_batch, hosted.name, version)
                batcher = batchers[key] = Batcher(
                    functools.partial(run, hosted, version), hosted.batching,
                    name=f"{hosted.name}:{version}{kind}", observer=observer,
                )  # fmt: skip
        return batcher

    def _run_batch(self, hosted: HostedModel, version: str, items: list[dict[str, Any]]) -> list[Any]:
        return self._with_runner(hosted, version, lambda r: r.predict_batch(items, skip_errors=True))

    async def _predict_many(
        self, hosted: HostedModel, version: str, requests: list[dict[str, Any]], options: Options
    ) -> list[Any]:
        """Run requests through the version's batcher, or as one call on a worker thread."""
        for request in requests:
            check_field_names(request)
        batcher = self._batcher(hosted, version)
        tensor = hosted.probe.is_tensor_model()
        timing = timings.current.get()
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        if batcher is None:
            rows = sum(rows_of(r) for r in requests) if tensor else len(requests)
            submitted = time.monotonic()
            leave_waiting = self._waiting_room(hosted, version).enter()  # refused at once when full

            def run(runner: Runner | ProcessRunner) -> list[Any]:
                leave_waiting()
                timings.call_deadline.set(deadline)  # a worker past it is replaced (this is a copied context)
                started = time.monotonic()

                def observe() -> None:
                    compute = time.monotonic() - started
                    self._observe_batch(hosted.name, version, rows, compute, [started - submitted])
                    if timing is not None:
                        timing.ran(started - submitted, compute)

                try:
                    if tensor or len(requests) == 1:
                        answers = [runner.predict(**request) for request in requests]
                    else:
                        answers = runner.predict_batch(requests)
                except InvalidInput:
                    raise  # refused before the model ran: no compute to count
                except ModelpodError:
                    observe()
                    raise
                observe()
                return answers

            try:
                return await self._run(self._with_runner, hosted, version, run, timeout=options.timeout)
            finally:
                leave_waiting()  # given up before it ran (a timeout, a client gone): its place is free
        futures = [
            batcher.submit_async(
                r,
                rows=rows_of(r) if tensor else 1,
                priority=options.priority,
                deadline=deadline,
                timing=timing if len(requests) == 1 else None,  # several rows: their batches differ
            )
            for r in requests
        ]

        def gather() -> asyncio.Future[list[Any]]:
            return futures[0] if len(futures) == 1 else asyncio.gather(*futures)

        try:
            outcome = await self._await(gather, options.timeout)
        finally:
            for future in futures:
                future.cancel()  # a caller that gave up frees its place in the queue
        return [outcome] if len(futures) == 1 else outcome

    def _observe_batch(self, model: str, version: str, rows: int, compute: float, waits: list[float]) -> None:
        self.statistics.batch(model, version, rows, compute, waits)
        self.metrics.batch(model, version, rows, compute, waits)
        self.recent.batch(model, version, rows)

    async def _observed(self, hosted: HostedModel, version: str, options: Options, work: Awaitable[T]) -> T:
        """Count a request's outcome and time, for the statistics extension and the metrics."""
        started = time.monotonic()
        outcome = "ok"
        message = ""
        try:
            return await work
        except ModelpodError as error:
            outcome = _snake(type(error).__name__)
            message = str(error)  # what the client was told, never more
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            seconds = time.monotonic() - started
            self.statistics.request(hosted.name, version, outcome == "ok", seconds)
            self.metrics.request(hosted.name, version, options.protocol, outcome, seconds)
            self.recent.request(hosted.name, version, outcome, seconds, message)
            timing = timings.current.get()
            if timing is not None:
                timing.model, timing.version, timing.answered = hosted.name, version, time.monotonic()

    def _queue_depths(self) -> dict[tuple[str, str], int]:
        """Rows or requests waiting per version: in its batchers (plain and streaming) or for a thread."""
        with self._lock:
            rooms = list(self._waiting_rooms.items())
            batchers = [*self._batchers.items(), *self._stream_batchers.items()]
        depths: Counter[tuple[str, str]] = Counter()
        for key, room in rooms:
            depths[key] += room.waiting
        for key, batcher in batchers:
            depths[key] += batcher.queued_rows
        return dict(depths)

    def _waiting_room(self, hosted: HostedModel, version: str) -> WaitingRoom:
        """Where requests to a version that does not batch wait for a thread, at most `max_queue_size`."""
        key = (hosted.name, version)
        with self._lock:
            room = self._waiting_rooms.get(key)
            if room is None:
                name = f"{hosted.name}:{version}"
                room = self._waiting_rooms[key] = WaitingRoom(name, hosted.batching.max_queue_size)
        return room

    def model_statistics(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The statistics extension's document for one version, or every version of a model."""
        hosted, resolved = self.repository.resolve(name, version)
        versions = [resolved] if version else self.repository.versions(name)
        return self.statistics.document(hosted.name, versions)

    def _hosted(self, name: str, version: str | None) -> tuple[HostedModel, str]:
        hosted, version = self.repository.resolve(name, version)
        if hosted.unloaded:
            raise Unavailable(
                f"model {name!r} is unloaded; load it with POST /v2/repository/models/{name}/load "
                "(gRPC: RepositoryModelLoad)"
            )
        return hosted, version

    def _with_runner(
        self, hosted: HostedModel, version: str, use: Callable[[Runner | ProcessRunner], T]
    ) -> T:
        factory = functools.partial(self.repository.runner, hosted, version)
        with self.pool.use((hosted.name, version), factory, hosted.memory_budget) as runner:
            return use(runner)

    # -- the model's own methods ----------------------------------------------------------------

    async def call(
        self,
        name: str,
        version: str | None,
        method: str,
        arguments: Mapping[str, Any],
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> Any:
        """`predict`, `initialize`, `train` (starts a job), `training` (that job) or `log` on one
        version, with keyword arguments."""
        if method not in METHODS:
            raise NotFound(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(arguments, Mapping) or not all(isinstance(key, str) for key in arguments):
            raise InvalidInput("the arguments must be an object of keyword arguments, named by strings")
        if method == "initialize":
            return await self._run(self._initialize, name, version, dict(arguments))
        hosted, version = self._hosted(name, version)
        if method == "log":
            return await self._run(lambda: self.repository.instance(hosted, version).log())
        if method == "train":
            return await self._run(self.start_training, hosted, version, dict(arguments))
        if method == "training":
            return await self._run(self.training_job, hosted.name, version)
        target = self._route(hosted, version, query_params, arguments)
        if target is not None:
            return await self.call(target, None, method, arguments, query_params, options)
        if isinstance(hosted.probe, ServedPipeline):
            work = self._run_pipeline(hosted, version, arguments, query_params, options)
            return await self._observed(hosted, version, options, work)
        request = dict(arguments)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        answers = await self._observed(
            hosted, version, options, self._predict_many(hosted, version, [request], options)
        )
        return answers[0]

    @staticmethod
    def _is_router(hosted: HostedModel) -> bool:
        return isinstance(hosted.target, type) and issubclass(hosted.target, Router)

    def _route(
        self,
        hosted: HostedModel,
        version: str,
        query_params: Mapping[str, str] | None,
        inputs: Mapping[str, Any],
    ) -> str | None:
        """The model a router forwards to; None for an ordinary model."""
        if not self._is_router(hosted):
            return None
        router = self.repository.instance(hosted, version)
        assert isinstance(router, Router)
        target = router.choose(query_params or {}, inputs)
        if target == hosted.name or target not in self.repository.names():
            raise NotFound(f"router {hosted.name!r} routes to {target!r}, which is not served here")
        return target

    def _initialize(self, name: str, version: str | None, config: dict[str, Any]) -> dict[str, Any]:
        hosted = self.repository.get(name)
        version = version or hosted.default_version
        check_arguments(config, "initialize() arguments")  # before the call: `self` cannot even reach it
        info = self.repository.instance(hosted, version).initialize(**config)
        self.pool.evict((hosted.name, version), "initialized with a new config")
        return info

    # -- training jobs --------------------------------------------------------------------------

    def start_training(self, hosted: HostedModel, version: str, options: dict[str, Any]) -> dict[str, Any]:
        """Start training `version` in the background; its document says how to follow it.

        The job trains an instance of its own: the loaded one keeps serving until the job
        succeeds, then the pool reloads the version with what `train` saved."""
        check_arguments(options, "training arguments")  # before any state changes: they are stored
        instance = self.repository.instance(hosted, version)
        check_train_options(instance, options)
        job = TrainingJob(hosted.name, version, options, log_start=len(instance.log()))

        def train() -> Any:
            with Runner(instance, **hosted.runner_options) as runner:
                result = runner.train(**options)
            self.pool.evict((hosted.name, version), "trained: reload the new weights")
            return result

        self.training.start(job, self.repository.folder(hosted.name, version), train, instance.log)
        return job.as_dict()

    def training_ended(self, job: TrainingJob) -> None:
        """Called on the job's thread when a job ends (its state is saved by then)."""
        self.metrics.training_ended(job.model, job.version, job.state)

    def training_job(self, name: str, version: str) -> dict[str, Any] | None:
        """The version's latest training job with its progress; None if it was never trained."""
        job = self.training.get(name, version, self.repository.folder(name, version))
        return None if job is None else job.as_dict()

    def training_progress(
        self, name: str, version: str, after: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """What the version's latest job reported past its entry `after`, and the job's document."""
        job, reported = self.training.follow(name, version, self.repository.folder(name, version))
        if job is None:
            return [], None
        if reported is None:  # a job that ended, or ran elsewhere: its reports are in the log on disk
            reported = self.repository.instance(self.repository.get(name), version).log()[job.log_start :]
        return reported[after:], job.as_dict()

    # -- pipelines of served models (modelpod.served_pipeline) -------------------------------------

    def _bind_pipelines(self) -> None:
        """At start-up: each pipeline's steps must be served here. A pipeline runs no model code but
        its `choose`, so it runs on this process's threads and does not batch (its steps do)."""
        served = {name: self.repository.get(name) for name in self.repository.names()}
        for hosted in served.values():
            if isinstance(hosted.probe, ServedPipeline):
                hosted.probe.bind({name: step.probe for name, step in served.items()})
                hosted.workers = 0
                hosted.batching = BatchConfig()

    async def _run_pipeline(
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
                    model = await self._run(self._branch, hosted, version, index, value, query_params or {})
                value = await self._pipeline_step(model, value, query_params, options, deadline)
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

        def branch(runner: Runner | ProcessRunner) -> str:
            assert isinstance(runner, Runner)
            assert isinstance(runner.model, ServedPipeline)
            return runner.model.branch(step, value, query_params)

        return self._with_runner(hosted, version, branch)

    async def _pipeline_step(
        self,
        name: str,
        value: Any,
        query_params: Mapping[str, str] | None,
        options: Options,
        deadline: float | None,
    ) -> Any:
        """One step, as a request to the step's model: its batcher, its metrics (protocol "pipeline")."""
        hosted, version = self._hosted(name, None)
        request = step_input(value, hosted.probe)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        remaining = None if deadline is None else deadline - time.monotonic()
        step_options = Options(options.priority, remaining, "pipeline")
        work = self._predict_many(hosted, version, [request], step_options)
        return (await self._observed(hosted, version, step_options, work))[0]

    async def _infer_pipeline(
        self,
        hosted: HostedModel,
        version: str,
        inputs: Arrays,
        query_params: Mapping[str, str] | None,
        options: Options,
    ) -> Arrays:
        """Tensors through a pipeline: taken as its first model takes them, given as its last gives them."""
        pipeline = hosted.probe
        assert isinstance(pipeline, ServedPipeline)
        last = self.repository.get(pipeline.last_models()[0]).probe
        requests = await self._tensor_requests(self.repository.get(pipeline.first_models()[0]), inputs)
        results = await asyncio.gather(
            *(self._run_pipeline(hosted, version, r, query_params, options) for r in requests)
        )
        return pipeline_outputs(last, results)

    # -- streams: a predict that yields --------------------------------------------------------------

    def streams(self, name: str, version: str | None = None) -> bool:
        """Whether a model's answer is a stream of items (what Triton calls a decoupled model)."""
        hosted, _ = self.repository.resolve(name, version)
        return hosted.probe.is_streaming() or hosted.probe.streams_batches()

    async def stream(
        self,
        name: str,
        version: str | None,
        arguments: Mapping[str, Any],
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> AsyncGenerator[Any, None]:
        """`predict`'s items as the model yields them; a model that does not yield gives one item.

        Close it (`aclose`, or cancel the task iterating it) to stop early: the model's generator is
        closed where it runs (its `finally` runs), its slot is freed, and the stream is counted as
        cancelled. An error, before the first item or midway, raises from the iteration. A deadline
        (`options.timeout`) bounds the whole stream."""
        if not isinstance(arguments, Mapping) or not all(isinstance(key, str) for key in arguments):
            raise InvalidInput("the arguments must be an object of keyword arguments, named by strings")
        hosted, version = self._hosted(name, version)
        target = self._route(hosted, version, query_params, arguments)
        if target is not None:
            routed = self.stream(target, None, arguments, query_params, options)
            async with contextlib.aclosing(routed):
                async for item in routed:
                    yield item
            return
        if isinstance(hosted.probe, ServedPipeline):  # its steps answer, not a model: one item
            yield await self.call(hosted.name, version, "predict", arguments, query_params, options)
            return
        request = dict(arguments)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        started, count, outcome, message = time.monotonic(), 0, "cancelled", ""
        items = self._stream_items(hosted, version, request, options)
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    count += 1
                    yield item
            outcome = "ok"
        except ModelpodError as error:
            outcome, message = _snake(type(error).__name__), str(error)
            raise
        except Exception:
            outcome = "error"
            raise
        finally:  # also when closed early: a GeneratorExit or CancelledError leaves it "cancelled"
            seconds = time.monotonic() - started
            served = outcome in ("ok", "cancelled")  # a client that stops reading is no failure
            self.statistics.request(hosted.name, version, served, seconds)
            self.metrics.stream(hosted.name, version, options.protocol, outcome, seconds, count)
            self.recent.request(hosted.name, version, "ok" if served else outcome, seconds, message)

    async def infer_stream(
        self, name: str, version: str | None, inputs: Arrays, options: Options = DEFAULT_OPTIONS
    ) -> AsyncGenerator[tuple[str, Arrays], None]:
        """Tensors in; the version that ran, and output tensors for each item the model yields. One
        row per request: each row's answer would be a stream of its own."""
        hosted, resolved = self._hosted(name, version)
        requests = await self._tensor_requests(hosted, inputs)
        if len(requests) != 1:
            raise InvalidInput(
                f"model {name!r} streams its answers: send one row per request, not {len(requests)}"
            )
        items = self.stream(name, resolved, requests[0], options=options)
        async with contextlib.aclosing(items):
            async for item in items:
                yield resolved, outputs_of(hosted.probe, [item])

    async def _stream_items(
        self, hosted: HostedModel, version: str, request: dict[str, Any], options: Options
    ) -> AsyncGenerator[Any, None]:
        check_field_names(request)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        probe, batching = hosted.probe, hosted.batching.enabled
        if batching and probe.streams_batches() and hosted.workers == 0:
            items = self._batched_stream(hosted, version, request, options, deadline)
        elif batching and not probe.is_streaming():  # one answer: batched with the other requests
            yield (await self._predict_many(hosted, version, [request], options))[0]
            return
        else:
            items = self._own_stream(hosted, version, request, deadline)
        async with contextlib.aclosing(items):
            async for item in items:
                yield item

    async def _own_stream(
        self, hosted: HostedModel, version: str, request: dict[str, Any], deadline: float | None
    ) -> AsyncGenerator[Any, None]:
        """A request's own generator: opened and advanced on the worker threads, item by item."""
        self._enter_stream()
        pump = ItemPump(
            self._executor, functools.partial(self._open_stream, hosted, version, request), self._leave_stream
        )
        try:
            await pump.open(_remaining(deadline))
            while (item := await pump.next(_remaining(deadline))) is not DONE:
                yield item
        finally:
            pump.close()

    def _open_stream(
        self, hosted: HostedModel, version: str, request: dict[str, Any], hold: contextlib.ExitStack
    ) -> Iterator[Any] | AsyncGenerator[Any, None]:
        """(On a worker thread) the version's runner, held until the stream closes, and its items."""
        factory = functools.partial(self.repository.runner, hosted, version)
        runner = hold.enter_context(self.pool.use((hosted.name, version), factory))
        if isinstance(runner, ProcessRunner):  # worker processes send a stream's items all at once
            result = runner.predict(**request)
            return iter(result if self.streams(hosted.name, version) else [result])
        return runner.stream(request)

    async def _batched_stream(
        self,
        hosted: HostedModel,
        version: str,
        request: dict[str, Any],
        options: Options,
        deadline: float | None,
    ) -> AsyncGenerator[Any, None]:
        """A request to a model whose `predict_batch` yields: queued with others, run in one batch,
        its items handed over as the batch yields them. A batch streams to its end before the next."""
        self._enter_stream()
        channel, future = Channel(), None
        try:
            future = self._stream_batcher(hosted, version).submit_async(
                BatchedStream(request, channel), priority=options.priority, deadline=deadline
            )
            future.add_done_callback(channel.settle)
            while (item := await channel.next(_remaining(deadline))) is not DONE:
                yield item
        finally:
            channel.close()  # the batch sends it nothing more
            if future is not None:
                future.cancel()  # and drops it if it is still queued
            self._leave_stream()

    def _stream_batcher(self, hosted: HostedModel, version: str) -> Batcher:
        return self._batcher_in(self._stream_batchers, hosted, version, self._run_stream_batch, " (streams)")

    def _run_stream_batch(
        self, hosted: HostedModel, version: str, requests: list[BatchedStream]
    ) -> list[None]:
        def run(runner: Runner | ProcessRunner) -> None:
            assert isinstance(runner, Runner)  # streaming batches run in this process (workers == 0)
            pairs = runner.stream_batch([request.inputs for request in requests])
            feed(pairs, [request.channel for request in requests], f"{hosted.name}:{version}")

        self._with_runner(hosted, version, run)
        return [None] * len(requests)

    def _enter_stream(self) -> None:
        """A stream is in flight from its start until its model is closed (a drain waits for it)."""
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica", retry_after=1.0)
        with self._lock:
            self._in_flight += 1

    def _leave_stream(self) -> None:
        with self._lock:
            self._in_flight -= 1

    # -- Open Inference Protocol ------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: str | None,
        inputs: Arrays,
        query_params: Mapping[str, str] | None = None,
        options: Options = DEFAULT_OPTIONS,
    ) -> tuple[str, Arrays]:
        """Run tensors through one version; returns the version that ran and its outputs."""
        hosted, version = self._hosted(name, version)
        target = self._route(hosted, version, query_params, inputs)
        if target is not None:
            return await self.infer(target, None, inputs, query_params, options)
        if isinstance(hosted.probe, ServedPipeline):
            outputs = self._infer_pipeline(hosted, version, inputs, query_params, options)
            return version, await self._observed(hosted, version, options, outputs)
        requests = await self._tensor_requests(hosted, inputs)
        work = self._predict_many(hosted, version, requests, options)
        results = await self._observed(hosted, version, options, work)
        if len(requests) == 1 and not large_tensors(inputs):
            return version, outputs_of(hosted.probe, results)
        return version, await asyncio.to_thread(outputs_of, hosted.probe, results)  # off the event loop

    def decode_budget(self, name: str, version: str | None) -> DecodeBudget:
        """What a V2 request's tensors may cost as they are decoded: their bytes, and for a model of
        keyword arguments the calls their shapes certainly mean (checked again, whole, in `infer`)."""
        limit = self.limits.decoded_bytes()
        try:
            hosted, _ = self.repository.resolve(name, version)
        except ModelpodError:
            return DecodeBudget(limit)  # answered NotFound once decoded
        model = hosted.probe
        if isinstance(model, ServedPipeline) or self._is_router(hosted) or model.is_tensor_model():
            return DecodeBudget(limit)
        batching = hosted.batching.enabled or batches(model)
        rows = functools.partial(_certain_rows, model, batching)
        return DecodeBudget(limit, rows, self.limits.rows(hosted.batching), hosted.name)

    async def _tensor_requests(self, hosted: HostedModel, inputs: Arrays) -> list[dict[str, Any]]:
        """The calls tensors mean to a model, their cost checked first from the shapes alone; a large
        expansion runs on a thread, so that the event loop keeps answering."""
        model = hosted.probe
        batching = hosted.batching.enabled or batches(model)
        calls, boxed = call_plan(model, inputs, batching)
        cost = cost_of(inputs, calls, boxed)
        check_cost(cost, self.limits, hosted.batching, hosted.name)
        if calls + cost.elements <= SMALL_REQUEST:
            return requests_of(model, inputs, batching)
        return await asyncio.to_thread(requests_of, model, inputs, batching)

    def server_facts(self) -> ServerFacts:
        """What the server says of itself; the edges give it the protocol's shape."""
        return ServerFacts(self.name, __version__, EXTENSIONS)

    def model_facts(self, name: str, version: str | None = None) -> ModelFacts:
        """What a model (one version, or all of them) says of itself, for the metadata calls."""
        hosted, resolved = self.repository.resolve(name, version)
        versions = [resolved] if version else self.repository.versions(name)
        return ModelFacts(hosted.name, versions, PLATFORM, *advertised_specs(hosted.probe))

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model's configuration in Triton's shape (what `tritonclient`'s get_model_config reads)."""
        hosted, _ = self.repository.resolve(name, version)
        batching = hosted.batching
        inputs, outputs = advertised_specs(hosted.probe)
        config: dict[str, Any] = {
            "name": hosted.name,
            "platform": PLATFORM,
            "backend": "python",
            "max_batch_size": batching.max_batch_size if batching.enabled else 0,
            "input": [_config_tensor(spec) for spec in inputs],
            "output": [_config_tensor(spec) for spec in outputs],
        }
        if batching.enabled:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": round(batching.max_batch_delay_ms * 1000),
                "preferred_batch_size": list(batching.preferred_batch_sizes),
                "default_queue_policy": {"max_queue_size": batching.max_queue_size},
            }
        return config

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Loaded without error (or not tried yet); a pipeline when every model of its steps is ready."""
        try:
            hosted, resolved = self._hosted(name, version)
        except (NotFound, Unavailable):
            return False
        if isinstance(hosted.probe, ServedPipeline):
            return all(self.model_ready(step) for step in hosted.probe.models())
        return (hosted.name, resolved) not in self.pool.load_errors

    def load_error(self, name: str, version: str | None = None) -> str | None:
        """Why a version failed to load, while it stays unloaded; None when it loaded (or was never tried)."""
        hosted, resolved = self.repository.resolve(name, version)
        return self.pool.load_errors.get((hosted.name, resolved))

    def ready(self) -> bool:
        """Ready once the server has loaded its models, until it starts shutting down."""
        return self._ready and not self._draining

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    # -- the repository extension and versions ------------------------------------------------------

    async def load_model(self, name: str) -> None:
        """Load the default version now, and accept requests for the model again."""
        hosted = self.repository.get(name)
        hosted.unloaded = False
        await self._run(self._with_runner, hosted, hosted.default_version, lambda runner: None)

    async def unload_model(self, name: str) -> None:
        """Unload every loaded version; requests are refused until the model is loaded again."""
        hosted = self.repository.get(name)
        hosted.unloaded = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self.pool.evict_model, name)

    def repository_index(self) -> list[dict[str, Any]]:
        index = []
        for name in self.repository.names():
            hosted = self.repository.get(name)
            for version in self.repository.versions(name):
                key = (name, version)
                broken = self.pool.load_errors.get(key) or self.repository.version_error(name, version)
                state = "UNAVAILABLE" if hosted.unloaded or broken else "READY"
                reason = "unloaded" if hosted.unloaded else broken or ""
                index.append({"name": name, "version": version, "state": state, "reason": reason})
        return index

    async def set_default(self, name: str, version: str) -> dict[str, Any]:
        """Load and warm `version`, then make it the default; in-flight requests finish on the old one."""
        hosted, version = self.repository.resolve(name, version)
        previous = hosted.default_version
        await self._run(self._switch_default, hosted, previous, version)
        logger.info("default version of %s: %s -> %s", name, previous, version)
        return {"name": name, "default_version": version, "previous": previous}

    def _switch_default(self, hosted: HostedModel, previous: str, version: str) -> None:
        with self.pool.pinned((hosted.name, previous)):  # the old version serves until the swap
            self._with_runner(hosted, version, lambda runner: None)
            self.repository.set_default(hosted.name, version)
        self.pool.trim(keep=(hosted.name, version))

    def models(self) -> list[dict[str, Any]]:
        """Every served model with its versions, default and what is loaded (the native listing)."""
        return [self.describe(name) for name in self.repository.names()]

    def describe(self, name: str) -> dict[str, Any]:
        hosted = self.repository.get(name)
        loaded = set(self.pool.loaded())
        document = {
            "name": name,
            "default_version": hosted.default_version,
            "versions": [self._describe_version(name, v, loaded) for v in self.repository.versions(name)],
            "available": not hosted.unloaded,
            "batching": hosted.batching.as_dict(),
        }
        if hosted.default_error is not None:
            document["default_error"] = hosted.default_error
        return document

    def _describe_version(self, name: str, version: str, loaded: set[tuple[str, str]]) -> dict[str, Any]:
        """One version's entry in a listing. What is wrong with its files (a damaged file, a link out
        of the data path) is its `error`: one bad version never fails the listing of the others."""
        entry: dict[str, Any] = {
            "version": version,
            "loaded": (name, version) in loaded,
            "batch_sizes": self._batch_sizes(name, version),
            "training": None,
            "load_error": self.pool.load_errors.get((name, version)),
        }
        error = self.repository.version_error(name, version)
        if error is None:
            entry["training"] = self.training_job(name, version)
            if entry["training"] is None:
                error = self.training.problem(name, version, self.repository.folder(name, version))
        if error is not None:
            entry["error"] = error
        return entry

    def _batch_sizes(self, name: str, version: str) -> dict[str, int]:
        """Rows per batch run -> how many batches (streaming ones too), for a batching version."""
        sizes: Counter[int] = Counter()
        for batchers in (self._batchers, self._stream_batchers):
            batcher = batchers.get((name, version))
            if batcher is not None:
                sizes.update(batcher.batch_sizes)
        return {str(size): count for size, count in sorted(sizes.items())}

    # -- shutdown ------------------------------------------------------------------------------------

    def start_draining(self) -> None:
        """Refuse new work from now on; what is running goes on."""
        self._draining = True

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight model calls to finish; False if some were still running at `timeout`."""
        self.start_draining()
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.in_flight == 0

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def close(self) -> None:
        for batcher in [*self._batchers.values(), *self._stream_batchers.values()]:
            batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": list(spec.shape)}


def _certain_rows(model: Any, batching: bool, name: str, shape: Sequence[int]) -> int | None:
    return certain_rows(model, name, shape, batching)


def large_tensors(arrays: Mapping[str, Any]) -> bool:
    """Whether tensors hold enough values that converting them belongs on a thread, off the loop."""
    return sum(getattr(array, "size", 0) for array in arrays.values()) > SMALL_REQUEST


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _snake(name: str) -> str:
    """`ModelLoadError` -> `model_load_error`: an error class as a metric label value."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
