"""Running requests on one model version: through its batcher, or on a model thread when it does
not batch; each request's outcome and each run's batch published once to the recorders."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from modelpod.errors import ModelpodError, Unavailable
from modelpod.observe import timing as timings
from modelpod.observe.events import BatchDone, Recorder, RequestDone, request_trace
from modelpod.runtime.batchers import Batchers
from modelpod.runtime.batching import Batcher
from modelpod.runtime.deadline import call_deadline
from modelpod.runtime.inputs import check_field_names
from modelpod.runtime.runner import Runner
from modelpod.runtime.stacking import rows_of
from modelpod.serving.admission import Admission
from modelpod.serving.computing import Computing
from modelpod.serving.inline import InlineGate
from modelpod.serving.options import Options
from modelpod.serving.pool import ModelPool
from modelpod.serving.repository import HostedModel, Repository
from modelpod.workers.handle import take_worker_seconds
from modelpod.workers.process_runner import ProcessRunner

T = TypeVar("T")
AnyRunner = Runner | ProcessRunner
_NOT_HERE: Any = object()  # `_awaited`'s answer for a model that cannot be awaited on this loop


class Execution:
    """Runs requests for the versions of a repository, loaded through its pool."""

    def __init__(
        self,
        repository: Repository,
        pool: ModelPool,
        admission: Admission,
        batchers: Batchers,
        recorder: Recorder,
        inline: InlineGate | None = None,
    ) -> None:
        self.repository = repository
        self.pool = pool
        self.admission = admission
        self.batchers = batchers
        self.recorder = recorder
        self.inline = inline or InlineGate()

    def available(self, name: str, version: str | None) -> tuple[HostedModel, str]:
        """The model and resolved version a request is for; Unavailable while the model is unloaded."""
        hosted, version = self.repository.resolve(name, version)
        if hosted.unloaded:
            raise Unavailable(
                f"model {name!r} is unloaded; load it with POST /v2/repository/models/{name}/load "
                "(gRPC: RepositoryModelLoad)"
            )
        return hosted, version

    def with_runner(self, hosted: HostedModel, version: str, use: Callable[[AnyRunner], T]) -> T:
        """(On a model thread) `use` the version's runner, loaded if need be and held meanwhile."""
        factory = functools.partial(self.repository.runner, hosted, version)
        with self.pool.use((hosted.name, version), factory, hosted.memory_budget) as runner:
            return use(runner)

    def batcher(self, hosted: HostedModel, version: str) -> Batcher | None:
        """The version's batcher, made on first use; None for a model that does not batch."""
        if not hosted.batching.enabled:
            return None
        run = functools.partial(self._run_batch, hosted, version)
        observer = functools.partial(self.observe_batch, hosted.name, version)
        return self.batchers.batcher((hosted.name, version), hosted.batching, run, observer=observer)

    def _run_batch(
        self, hosted: HostedModel, version: str, items: list[dict[str, Any]], rows: list[int]
    ) -> list[Any]:
        return self.with_runner(
            hosted, version, lambda r: r.predict_batch(items, skip_errors=True, rows=rows)
        )

    async def predict_many(
        self, hosted: HostedModel, version: str, requests: list[dict[str, Any]], options: Options
    ) -> list[Any]:
        """Run requests through the version's batcher, awaited on the event loop (an `async def
        predict` loaded in this process), or as one call on a model thread."""
        for request in requests:
            check_field_names(request)
        batcher = self.batcher(hosted, version)
        if (
            len(requests) == 1
            and hosted.inlines
            and self.inline.takes((hosted.name, version), batcher, self.admission.in_flight)
        ):
            answer = self._inline(hosted, version, requests[0], batcher is not None, options)
            if answer is not _NOT_HERE:
                return [answer]
        if batcher is not None:
            return await self._batched(batcher, hosted, requests, options)
        if len(requests) == 1 and hosted.awaits:  # read once, when the model was added
            answer = await self._awaited(hosted, version, requests[0], options)
            if answer is not _NOT_HERE:
                return [answer]
        return await self._on_thread(hosted, version, requests, options)

    async def _awaited(
        self, hosted: HostedModel, version: str, request: dict[str, Any], options: Options
    ) -> Any:
        """An `async def predict`'s answer, awaited on the event loop once its version is loaded (on a
        model thread: loading blocks), even the first request, so that the resources a model binds
        to its loop live on this one; `_NOT_HERE` for a version in worker processes."""
        key = (hosted.name, version)
        for _ in range(2):  # (a version evicted between its load and its use is loaded again once)
            with self.pool.use_if_loaded(key) as runner:
                if isinstance(runner, Runner):
                    return await self._on_loop(runner, hosted, version, request, options)
                if runner is not None:
                    return _NOT_HERE
            await self.admission.run(self.with_runner, hosted, version, lambda runner: None)
        return _NOT_HERE

    async def _on_loop(
        self, runner: Runner, hosted: HostedModel, version: str, request: dict[str, Any], options: Options
    ) -> Any:
        """An `async def predict` awaited on the event loop: no thread, no queue, the same records."""
        with self._computing(hosted, version, 1, time.monotonic()):
            return await self.admission.here(lambda: runner.predict_async(**request), options.timeout)

    def _inline(
        self, hosted: HostedModel, version: str, request: dict[str, Any], batches: bool, options: Options
    ) -> Any:
        """The answer computed here, on the event loop, as the batcher or a model thread would compute
        it; `_NOT_HERE` when the version is not loaded in this process or the request has many rows."""
        if hosted.probe.is_tensor_model() and rows_of(request) != 1:
            return _NOT_HERE
        with self.pool.use_if_loaded((hosted.name, version)) as runner:
            if not isinstance(runner, Runner):
                return _NOT_HERE
            token = call_deadline.set(_deadline(options))
            try:
                with (
                    self.admission.counted(options.timeout),
                    self._computing(hosted, version, 1, time.monotonic()),
                    self.inline.timed((hosted.name, version), on_loop=True, counts=not batches),
                ):
                    if not batches:
                        return runner.predict(**request)
                    answer = runner.predict_batch([request], skip_errors=True, rows=[1])[0]
            finally:
                call_deadline.reset(token)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _computing(self, hosted: HostedModel, version: str, rows: int, submitted: float) -> Computing:
        """Around a model's run outside a batcher (see `Computing`)."""
        return Computing(self.observe_batch, hosted.name, version, rows, submitted)

    async def _on_thread(
        self, hosted: HostedModel, version: str, requests: list[dict[str, Any]], options: Options
    ) -> list[Any]:
        """A model that does not batch: one call per request on a model thread, its wait bounded."""
        tensor = hosted.probe.is_tensor_model()
        deadline = _deadline(options)
        rows = sum(rows_of(r) for r in requests) if tensor else len(requests)
        submitted = time.monotonic()
        room = self.batchers.waiting_room((hosted.name, version), hosted.batching.max_queue_size)
        leave_waiting = room.enter()  # refused at once when full

        def run(runner: AnyRunner) -> list[Any]:
            leave_waiting()
            call_deadline.set(deadline)  # a worker past it is replaced (this is a copied context)
            alone = len(requests) == 1 and rows == 1 and isinstance(runner, Runner)  # (a worker's: no)
            timed = self.inline.timed((hosted.name, version), on_loop=False, counts=alone)
            with self._computing(hosted, version, rows, submitted), timed:
                if tensor or len(requests) == 1:
                    return [runner.predict(**request) for request in requests]
                return runner.predict_batch(requests)

        try:
            return await self.admission.run(self.with_runner, hosted, version, run, timeout=options.timeout)
        finally:
            leave_waiting()  # given up before it ran (a timeout, a client gone): its place is free

    async def _batched(
        self, batcher: Batcher, hosted: HostedModel, requests: list[dict[str, Any]], options: Options
    ) -> list[Any]:
        tensor = hosted.probe.is_tensor_model()
        timing = timings.current.get()
        deadline = _deadline(options)
        futures = [
            batcher.submit_async(
                r,
                rows=rows_of(r) if tensor else 1,
                priority=options.priority,
                deadline=deadline,
                timing=timing if len(requests) == 1 else None,  # several rows: their batches differ
                trace=request_trace.get(),
            )
            for r in requests
        ]

        def gather() -> asyncio.Future[list[Any]]:
            return futures[0] if len(futures) == 1 else asyncio.gather(*futures)

        try:
            outcome = await self.admission.wait(gather, options.timeout)
        finally:
            for future in futures:
                future.cancel()  # a caller that gave up frees its place in the queue
        return [outcome] if len(futures) == 1 else outcome

    def observe_batch(
        self, model: str, version: str, rows: int, compute: float, waits: list[float], traces: list[Any]
    ) -> None:
        worker = take_worker_seconds()  # None unless this thread's batch ran in a worker process
        self.inline.observe((model, version), rows, compute)
        self.recorder.on_batch(BatchDone(model, version, rows, compute, waits, traces, worker))

    async def observed(
        self,
        hosted: HostedModel,
        version: str,
        options: Options,
        work: Awaitable[T],
        inputs: list[Any] | None = None,
    ) -> T:
        """Publish a request's outcome and time once it is answered (with its `inputs`, the model's
        calls, and what they answered, when a recorder wants payloads)."""
        started = time.monotonic()
        outcome = "ok"
        message = ""
        answers = None
        try:
            answers = await work
            return answers
        except ModelpodError as error:
            outcome = snake(type(error).__name__)
            message = str(error)  # what the client was told, never more
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            seconds = time.monotonic() - started
            payloads = self.recorder.wants_payloads
            self.recorder.on_request(
                RequestDone(
                    hosted.name,
                    version,
                    options.protocol,
                    outcome,
                    seconds,
                    message,
                    trace=request_trace.get(),
                    inputs=inputs if payloads else None,
                    outputs=answers if payloads else None,  # type: ignore[arg-type]  # the answers
                )
            )
            timing = timings.current.get()
            if timing is not None:
                timing.model, timing.version, timing.answered = hosted.name, version, time.monotonic()


def _deadline(options: Options) -> float | None:
    return None if options.timeout is None else time.monotonic() + options.timeout


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (never negative); None without one."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def snake(name: str) -> str:
    """`ModelLoadError` -> `model_load_error`: an error class as a metric label value."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
