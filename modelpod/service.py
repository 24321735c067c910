"""The transport-free inference core: find the model and version, run it off the event loop, drain.

HTTP and gRPC are thin codecs around one `InferenceService`; nothing here knows about either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from modelpod import __version__
from modelpod.errors import InvalidInput, NotFound, Unavailable
from modelpod.pool import ModelPool
from modelpod.repository import HostedModel, Repository
from modelpod.router import Router
from modelpod.runner import Runner
from modelpod.tensors import Arrays, run_tensors

logger = logging.getLogger("modelpod.service")

T = TypeVar("T")
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
        self._in_flight_lock = threading.Lock()
        self._draining = False
        self._ready = True

    # -- running model code -------------------------------------------------------------------

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking model code on the worker threads, counted for a graceful drain."""
        if self._draining:
            raise Unavailable("the server is shutting down; retry on another replica", retry_after=1.0)
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(function, *args))
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _hosted(self, name: str, version: str | None) -> tuple[HostedModel, str]:
        hosted, version = self.repository.resolve(name, version)
        if hosted.unloaded:
            raise Unavailable(
                f"model {name!r} is unloaded; load it with POST /v2/repository/models/{name}/load "
                "(gRPC: RepositoryModelLoad)"
            )
        return hosted, version

    def _with_runner(self, hosted: HostedModel, version: str, use: Callable[[Runner], T]) -> T:
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
            return await self.call(target, None, method, arguments, query_params)
        return await self._run(self._predict, hosted, version, dict(arguments), query_params)

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

    def _predict(
        self,
        hosted: HostedModel,
        version: str,
        arguments: dict[str, Any],
        query_params: Mapping[str, str] | None,
    ) -> Any:
        def predict(runner: Runner) -> Any:
            if query_params is not None and runner.model.accepts_query_params():
                arguments.setdefault("query_params", dict(query_params))
            return runner.predict(**arguments)

        return self._with_runner(hosted, version, predict)

    def _initialize(self, name: str, version: str | None, config: dict[str, Any]) -> dict[str, Any]:
        hosted = self.repository.get(name)
        version = version or hosted.default_version
        info = self.repository.instance(hosted, version).initialize(**config)
        self.pool.evict((hosted.name, version), "initialized with a new config")
        return info

    def _train(self, hosted: HostedModel, version: str, options: dict[str, Any]) -> Any:
        result = self._with_runner(hosted, version, lambda runner: runner.train(**options))
        self.pool.evict((hosted.name, version), "trained: reload the new weights")
        return result

    # -- Open Inference Protocol ------------------------------------------------------------------

    async def infer(
        self, name: str, version: str | None, inputs: Arrays, query_params: Mapping[str, str] | None = None
    ) -> tuple[str, Arrays]:
        """Run tensors through one version; returns the version that ran and its outputs."""
        hosted, version = self._hosted(name, version)
        target = self._route(hosted, version, query_params, inputs)
        if target is not None:
            return await self.infer(target, None, inputs, query_params)
        outputs = await self._run(self._with_runner, hosted, version, lambda r: run_tensors(r, inputs))
        return version, outputs

    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        hosted, resolved = self.repository.resolve(name, version)
        model = self.repository.instance(hosted, resolved)
        return {
            "name": hosted.name,
            "versions": [resolved] if version else self.repository.versions(name),
            "platform": "modelpod",
            "inputs": [spec.as_dict() for spec in model.input_specs()],
            "outputs": [spec.as_dict() for spec in model.output_specs()],
        }

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
            "versions": [{"version": v, "loaded": (name, v) in loaded} for v in versions],
            "available": not hosted.unloaded,
        }

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
        with self._in_flight_lock:
            return self._in_flight

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self.pool.close()
