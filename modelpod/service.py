"""The transport-free inference core: find the model and version, run it off the event loop, drain.

HTTP and gRPC are thin codecs around one `InferenceService`; nothing here knows about either.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from modelpod import __version__
from modelpod.batching import Batcher
from modelpod.errors import InvalidInput, ModelpodError, NotFound, Timeout, Unavailable
from modelpod.isolation import ProcessRunner
from modelpod.metrics import ServerMetrics
from modelpod.pool import ModelPool
from modelpod.repository import HostedModel, Repository
from modelpod.router import Router
from modelpod.runner import Runner
from modelpod.stacking import rows_of
from modelpod.statistics import Statistics
from modelpod.tensors import Arrays, outputs_of, requests_of
from modelpod.types import TensorSpec

logger = logging.getLogger("modelpod.service")

T = TypeVar("T")


@dataclass(frozen=True)
class Options:
    """What a request may ask beyond its inputs: how urgent it is, and how long it may take."""

    priority: int = 0
    timeout: float | None = None  # seconds from arrival; past it the request is answered Timeout
    protocol: str = "python"  # which edge it came through, for the metrics


DEFAULT_OPTIONS = Options()
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
    except (TypeError, ValueError):
        raise InvalidInput(
            f"priority must be an integer and timeout a number, not {priority!r}, {timeout!r}"
        ) from None
    if seconds is not None and not seconds >= 0:  # also refuses NaN
        raise InvalidInput(f"timeout must be a non-negative number of seconds, not {timeout!r}")
    return Options(chosen_priority, seconds, protocol)


METHODS = ("predict", "initialize", "train", "log")
EXTENSIONS = ("binary_tensor_data", "model_repository", "modelpod_native")


class InferenceService:
    """Everything a transport can ask of the server, as plain Python calls."""

    def __init__(
        self, repository: Repository, pool: ModelPool, max_workers: int = 12, name: str = "modelpod"
    ) -> None:
        self.repository = repository
        self.pool = pool
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="modelpod-model")
        self._in_flight = 0
        self._lock = threading.Lock()  # guards the in-flight count and the batchers
        self._draining = False
        self._ready = True
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self.statistics = Statistics()
        self.metrics = ServerMetrics(pool, self._queue_depths, lambda: self.in_flight)

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
        key = (hosted.name, version)
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                run = functools.partial(self._run_batch, hosted, version)
                observer = functools.partial(self._observe_batch, hosted.name, version)
                batcher = self._batchers[key] = Batcher(
                    run, hosted.batching, name=f"{hosted.name}:{version}", observer=observer
                )
        return batcher

    def _run_batch(self, hosted: HostedModel, version: str, items: list[dict[str, Any]]) -> list[Any]:
        return self._with_runner(hosted, version, lambda r: r.predict_batch(items, skip_errors=True))

    async def _predict_many(
        self, hosted: HostedModel, version: str, requests: list[dict[str, Any]], options: Options
    ) -> list[Any]:
        """Run requests through the version's batcher, or as one call on a worker thread."""
        batcher = self._batcher(hosted, version)
        tensor = hosted.probe.is_tensor_model()
        if batcher is None:
            rows = sum(rows_of(r) for r in requests) if tensor else len(requests)
            submitted = time.monotonic()

            def run(runner: Runner | ProcessRunner) -> list[Any]:
                started = time.monotonic()

                def observe() -> None:
                    compute = time.monotonic() - started
                    self._observe_batch(hosted.name, version, rows, compute, [started - submitted])

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

            return await self._run(self._with_runner, hosted, version, run, timeout=options.timeout)
        deadline = None if options.timeout is None else time.monotonic() + options.timeout
        futures = [
            batcher.submit_async(
                r, rows=rows_of(r) if tensor else 1, priority=options.priority, deadline=deadline
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

    async def _observed(self, hosted: HostedModel, version: str, options: Options, work: Awaitable[T]) -> T:
        """Count a request's outcome and time, for the statistics extension and the metrics."""
        started = time.monotonic()
        outcome = "ok"
        try:
            return await work
        except ModelpodError as error:
            outcome = _snake(type(error).__name__)
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            seconds = time.monotonic() - started
            self.statistics.request(hosted.name, version, outcome == "ok", seconds)
            self.metrics.request(hosted.name, version, options.protocol, outcome, seconds)

    def _queue_depths(self) -> dict[tuple[str, str], int]:
        with self._lock:
            batchers = dict(self._batchers)
        return {key: batcher.queued_rows for key, batcher in batchers.items()}

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
        with self.pool.use((hosted.name, version), factory) as runner:
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
        """`predict`, `initialize`, `train` or `log` on one version, with keyword arguments."""
        if method not in METHODS:
            raise NotFound(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
        if not isinstance(arguments, Mapping):
            raise InvalidInput("the arguments must be an object of keyword arguments")
        if method == "initialize":
            return await self._run(self._initialize, name, version, dict(arguments))
        hosted, version = self._hosted(name, version)
        if method == "log":
            return await self._run(lambda: self.repository.instance(hosted, version).log())
        if method == "train":
            return await self._run(self._train, hosted, version, dict(arguments))
        target = self._route(hosted, version, query_params, arguments)
        if target is not None:
            return await self.call(target, None, method, arguments, query_params, options)
        request = dict(arguments)
        if query_params is not None and hosted.query_params:
            request.setdefault("query_params", dict(query_params))
        answers = await self._observed(
            hosted, version, options, self._predict_many(hosted, version, [request], options)
        )
        return answers[0]

    def _route(
        self,
        hosted: HostedModel,
        version: str,
        query_params: Mapping[str, str] | None,
        inputs: Mapping[str, Any],
    ) -> str | None:
        """The model a router forwards to; None for an ordinary model."""
        if not (isinstance(hosted.target, type) and issubclass(hosted.target, Router)):
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
        info = self.repository.instance(hosted, version).initialize(**config)
        self.pool.evict((hosted.name, version), "initialized with a new config")
        return info

    def _train(self, hosted: HostedModel, version: str, options: dict[str, Any]) -> Any:
        if hosted.workers > 0:  # workers only predict: train here, and let them reload what it saved
            with Runner(self.repository.instance(hosted, version), **hosted.runner_options) as runner:
                result = runner.train(**options)
            self.pool.evict((hosted.name, version), "trained: reload the new weights")
            return result
        result = self._with_runner(hosted, version, lambda runner: runner.train(**options))
        self.pool.evict((hosted.name, version), "trained: reload the new weights")
        return result

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
        work = self._predict_many(hosted, version, requests_of(hosted.probe, inputs), options)
        results = await self._observed(hosted, version, options, work)
        return version, outputs_of(hosted.probe, results)

    def server_facts(self) -> ServerFacts:
        """What the server says of itself; the edges give it the protocol's shape."""
        return ServerFacts(self.name, __version__, EXTENSIONS)

    def model_facts(self, name: str, version: str | None = None) -> ModelFacts:
        """What a model (one version, or all of them) says of itself, for the metadata calls."""
        hosted, resolved = self.repository.resolve(name, version)
        versions = [resolved] if version else self.repository.versions(name)
        return ModelFacts(
            hosted.name, versions, PLATFORM, hosted.probe.input_specs(), hosted.probe.output_specs()
        )

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model's configuration in Triton's shape (what `tritonclient`'s get_model_config reads)."""
        hosted, _ = self.repository.resolve(name, version)
        batching = hosted.batching
        config: dict[str, Any] = {
            "name": hosted.name,
            "platform": PLATFORM,
            "backend": "python",
            "max_batch_size": batching.max_batch_size if batching.enabled else 0,
            "input": [_config_tensor(spec) for spec in hosted.probe.input_specs()],
            "output": [_config_tensor(spec) for spec in hosted.probe.output_specs()],
        }
        if batching.enabled:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": round(batching.max_batch_delay_ms * 1000),
                "preferred_batch_size": list(batching.preferred_batch_sizes),
                "default_queue_policy": {"max_queue_size": batching.max_queue_size},
            }
        return config

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            hosted, resolved = self._hosted(name, version)
        except (NotFound, Unavailable):
            return False
        return (hosted.name, resolved) not in self.pool.load_errors

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
                state = "UNAVAILABLE" if hosted.unloaded or key in self.pool.load_errors else "READY"
                reason = "unloaded" if hosted.unloaded else self.pool.load_errors.get(key, "")
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
        versions = self.repository.versions(name)
        return {
            "name": name,
            "default_version": hosted.default_version,
            "versions": [
                {"version": v, "loaded": (name, v) in loaded, "batch_sizes": self._batch_sizes(name, v)}
                for v in versions
            ],
            "available": not hosted.unloaded,
            "batching": hosted.batching.as_dict(),
        }

    def _batch_sizes(self, name: str, version: str) -> dict[str, int]:
        """Rows per batch run -> how many batches, for a batching version ({} otherwise)."""
        batcher = self._batchers.get((name, version))
        return {str(size): count for size, count in sorted(batcher.batch_sizes.items())} if batcher else {}

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
        for batcher in self._batchers.values():
            batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": list(spec.shape)}


def _snake(name: str) -> str:
    """`ModelLoadError` -> `model_load_error`: an error class as a metric label value."""
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
