"""Requests whose answer is a stream of items: a `predict` that yields, for one request on a model
thread (`ItemPump`), or for a batch of them (`BatchedStream` through the version's streaming batcher),
or a sequence of the version's running batch for a model that takes steps (`TokenBatches`).
A model that does not yield streams one item; a router forwards the stream; a pipeline answers once.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from modelpod.errors import InvalidInput, ModelpodError
from modelpod.observe.events import RequestDone, request_trace
from modelpod.observe.item_tape import ItemTape
from modelpod.runtime.batchers import STREAMS
from modelpod.runtime.batching import Batcher
from modelpod.runtime.inputs import check_field_names
from modelpod.runtime.items import DONE
from modelpod.runtime.model import Model
from modelpod.runtime.runner import Runner
from modelpod.runtime.steps import takes_steps
from modelpod.serving.channels import BatchedStream, Channel, ItemPump, feed
from modelpod.serving.composition import Composition
from modelpod.serving.execution import AnyRunner, Execution, remaining, snake
from modelpod.serving.options import DEFAULT_OPTIONS, Options
from modelpod.serving.repository import HostedModel
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.serving.tensor_requests import TensorRequests
from modelpod.serving.tensors import Arrays, outputs_of
from modelpod.serving.token_batching import TokenBatches, sequence_items
from modelpod.workers.process_runner import ProcessRunner


@dataclass
class Ending:
    """Set by a caller that closes a stream because it has all it wants (a stop sequence, a token
    limit): the stream is then recorded as answered, not as cancelled by a client gone away."""

    enough: bool = False


class Streams:
    """The streaming side of the service: `stream` and `infer_stream`."""

    def __init__(
        self, execution: Execution, composition: Composition, tensor_requests: TensorRequests
    ) -> None:
        self.execution = execution
        self.tensor_requests = tensor_requests
        self.composition = composition
        self.repository = execution.repository
        self.admission = execution.admission
        self.token_batches = TokenBatches(execution.recorder)

    def running(self) -> dict[tuple[str, str], int]:
        """Sequences in running batches now, per version (token-level batching)."""
        return self.token_batches.running()

    def waiting(self) -> dict[tuple[str, str], int]:
        """Sequences waiting to join a running batch, per version."""
        return self.token_batches.waiting()

    def close(self) -> None:
        self.token_batches.close()

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
        ending: Ending | None = None,
    ) -> AsyncGenerator[Any, None]:
        """`predict`'s items as the model yields them (see `InferenceService.stream`)."""
        if not isinstance(arguments, Mapping) or not all(isinstance(key, str) for key in arguments):
            raise InvalidInput("the arguments must be an object of keyword arguments, named by strings")
        hosted, version = self.execution.available(name, version)
        target = self.composition.route(hosted, version, query_params, arguments)
        if target is not None:
            routed = self.stream(target, None, arguments, query_params, options, ending)
            async with contextlib.aclosing(routed):
                async for item in routed:
                    yield item
            return
        if isinstance(hosted.probe, ServedPipeline):  # its steps answer, not a model: one item
            yield await self.composition.predict(hosted, version, arguments, query_params, options)
            return
        request = dict(arguments)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        items = self._recorded(hosted, version, request, options, ending or Ending())
        async with contextlib.aclosing(items):
            async for item in items:
                yield item

    async def _recorded(
        self, hosted: HostedModel, version: str, request: dict[str, Any], options: Options, ending: Ending
    ) -> AsyncGenerator[Any, None]:
        """The stream's items, its end recorded once: how it ended, how long it took, how many items."""
        started, count, outcome, message = time.monotonic(), 0, "cancelled", ""
        recorder = self.execution.recorder
        tape = ItemTape(recorder.stream_budget) if recorder.wants_payloads else None  # for a capture
        items = self._items(hosted, version, request, options)
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    count += 1
                    if tape is not None:
                        tape.add(item)
                    yield item
            outcome = "ok"
        except ModelpodError as error:
            outcome, message = snake(type(error).__name__), str(error)
            raise
        except Exception:
            outcome = "error"
            raise
        finally:  # also when closed early: a GeneratorExit or CancelledError leaves it "cancelled"
            if outcome == "cancelled" and ending.enough:
                outcome = "ok"
            seconds = time.monotonic() - started
            if tape is not None:
                tape.closed = ending.enough
            event = RequestDone(
                hosted.name, version, options.protocol, outcome, seconds, message, count, request_trace.get(),
                inputs=None if tape is None else [request],
                outputs=None if tape is None else [tape.items],
                tape=tape,
            )  # fmt: skip
            recorder.on_request(event)

    async def infer_stream(
        self, name: str, version: str | None, inputs: Arrays, options: Options = DEFAULT_OPTIONS
    ) -> AsyncGenerator[tuple[str, Arrays], None]:
        """Tensors in; the version that ran, and output tensors for each item the model yields. One
        row per request: each row's answer would be a stream of its own."""
        hosted, resolved = self.execution.available(name, version)
        requests = await self.tensor_requests.calls(hosted, inputs)
        if len(requests) != 1:
            raise InvalidInput(
                f"model {name!r} streams its answers: send one row per request, not {len(requests)}"
            )
        items = self.stream(name, resolved, requests[0], options=options)
        async with contextlib.aclosing(items):
            async for item in items:
                yield resolved, outputs_of(hosted.probe, [item])

    async def _items(
        self, hosted: HostedModel, version: str, request: dict[str, Any], options: Options
    ) -> AsyncGenerator[Any, None]:
        check_field_names(request)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        probe, batching = hosted.probe, hosted.batching.enabled
        if takes_steps(probe) and hosted.workers == 0:
            items = self._stepped(hosted, version, request, options, deadline)
        elif batching and probe.streams_batches() and hosted.workers == 0:
            items = self._batched(hosted, version, request, options, deadline)
        elif batching and not probe.is_streaming():  # one answer: batched with the other requests
            yield (await self.execution.predict_many(hosted, version, [request], options))[0]
            return
        else:
            items = self._own(hosted, version, request, deadline)
        async with contextlib.aclosing(items):
            async for item in items:
                yield item

    async def _own(
        self, hosted: HostedModel, version: str, request: dict[str, Any], deadline: float | None
    ) -> AsyncGenerator[Any, None]:
        """A request's own generator: opened and advanced on the model threads, item by item."""
        self.admission.enter()
        opener = functools.partial(self._open, hosted, version, request)
        pump = ItemPump(self.admission.executor, opener, self.admission.leave)
        try:
            await pump.open(remaining(deadline))
            while (item := await pump.next(remaining(deadline))) is not DONE:
                yield item
        finally:
            pump.close()

    def _open(
        self, hosted: HostedModel, version: str, request: dict[str, Any], hold: contextlib.ExitStack
    ) -> Iterator[Any] | AsyncGenerator[Any, None]:
        """(On a model thread) the version's runner, held until the stream closes, and its items."""
        factory = functools.partial(self.repository.runner, hosted, version)
        runner = hold.enter_context(self.execution.pool.use((hosted.name, version), factory))
        if isinstance(runner, ProcessRunner):  # worker processes send a stream's items all at once
            result = runner.predict(**request)
            return iter(result if self.streams(hosted.name, version) else [result])
        return runner.stream(request)

    async def _batched(
        self,
        hosted: HostedModel,
        version: str,
        request: dict[str, Any],
        options: Options,
        deadline: float | None,
    ) -> AsyncGenerator[Any, None]:
        """A request to a model whose `predict_batch` yields: queued with others, run in one batch,
        its items handed over as the batch yields them. A batch streams to its end before the next."""
        self.admission.enter()
        channel, future = Channel(), None
        try:
            future = self._batcher(hosted, version).submit_async(
                BatchedStream(request, channel), priority=options.priority, deadline=deadline
            )
            future.add_done_callback(channel.settle)
            while (item := await channel.next(remaining(deadline))) is not DONE:
                yield item
        finally:
            channel.close()  # the batch sends it nothing more
            if future is not None:
                future.cancel()  # and drops it if it is still queued
            self.admission.leave()

    async def _stepped(
        self,
        hosted: HostedModel,
        version: str,
        request: dict[str, Any],
        options: Options,
        deadline: float | None,
    ) -> AsyncGenerator[Any, None]:
        """A sequence of the version's running batch (token-level batching)."""

        def hold_model(hold: contextlib.ExitStack) -> Model:
            factory = functools.partial(self.repository.runner, hosted, version)
            runner = hold.enter_context(
                self.execution.pool.use((hosted.name, version), factory, hosted.memory_budget)
            )
            assert isinstance(runner, Runner)  # running batches run in this process (workers == 0)
            return runner.model

        batch = self.token_batches.batch(hosted.name, version, hold_model, hosted.batching.max_queue_size)
        self.admission.enter()
        items = sequence_items(batch, request, options.priority, lambda: remaining(deadline))
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    yield item
        finally:
            self.admission.leave()

    def _batcher(self, hosted: HostedModel, version: str) -> Batcher:
        run = functools.partial(self._run_batch, hosted, version)
        observer = functools.partial(self.execution.observe_batch, hosted.name, version)
        key = (hosted.name, version)
        return self.execution.batchers.batcher(key, hosted.batching, run, STREAMS, observer)

    def _run_batch(
        self, hosted: HostedModel, version: str, requests: list[BatchedStream], rows: list[int]
    ) -> list[None]:
        """One batch of streams (a row each: `rows` are all 1)."""

        def run(runner: AnyRunner) -> None:
            assert isinstance(runner, Runner)  # streaming batches run in this process (workers == 0)
            pairs = runner.stream_batch([request.inputs for request in requests])
            feed(pairs, [request.channel for request in requests], f"{hosted.name}:{version}")

        self.execution.with_runner(hosted, version, run)
        return [None] * len(requests)
