"""One process, two edges: HTTP and gRPC started around one inference service, stopped gracefully."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import uvicorn

from modelpod.extras import needs_extra
from modelpod.observe import logs
from modelpod.protocol.cost import CostLimits
from modelpod.server.auth import exposure_warning, grpc_interceptors, load_keys
from modelpod.server.capturing import count_in, start_capture
from modelpod.server.edge_requests import EdgeRequests
from modelpod.server.grpc_server import start_grpc_server
from modelpod.server.http import create_app
from modelpod.server.http_connections import ConnectionLimits, guarded_protocol
from modelpod.server.quota_edges import QuotaInterceptor
from modelpod.server.settings import Settings
from modelpod.server.tls import load_tls
from modelpod.serving.pool import ModelPool
from modelpod.serving.quotas import Quotas, parse_quotas
from modelpod.serving.repository import Repository
from modelpod.serving.repository_watch import RepositoryWatch
from modelpod.serving.service import InferenceService
from modelpod.serving.traffic_policy import parse_flag

if TYPE_CHECKING:
    from modelpod.observe.tracing import Tracing
    from modelpod.server.from_store import Announcer

logger = logging.getLogger("modelpod.server")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the model server decides when and how to stop."""

    def install_signal_handlers(self) -> None:  # older uvicorn
        return

    def capture_signals(self) -> Any:  # newer uvicorn
        import contextlib

        return contextlib.nullcontext()


class ModelServer:
    """HTTP and gRPC around one `InferenceService`. `start()`, then `stop()` to drain and exit."""

    def __init__(
        self, repository: Repository, settings: Settings, announcer: Announcer | None = None
    ) -> None:
        self.settings = settings
        self.announcer = announcer
        self.keys = load_keys(settings)  # first: bad keys or TLS files stop the server before it loads
        self.tls = load_tls(settings)
        self.pool = ModelPool(settings.model_pool_size, settings.model_pool_memory)
        self.edge = EdgeRequests()  # the requests both edges are answering
        limits = CostLimits(settings.max_request_rows, settings.max_request_elements,
                            settings.max_request_decoded_bytes, settings.max_message_size)  # fmt: skip
        self.tracing = start_tracing() if settings.otel else None
        self.capture = start_capture(settings, repository)
        recorders = [r for r in (self.tracing, self.capture) if r is not None]
        self.service = InferenceService(
            repository, self.pool, settings.rpc_max_workers, slow_ms=settings.slow_ms, limits=limits,
            recorders=recorders, tracer=self.tracing, inline_ms=settings.inline_ms,
        )  # fmt: skip
        self.service.execution.inline.lone_at_edge = self.edge.at_most_one
        if self.capture is not None:
            count_in(self.service.metrics.registry, self.capture)
        if settings.traffic:
            self.service.configure_traffic(parse_flag(settings.traffic))
        self.service.traffic.shadowing.max_in_flight = settings.shadow_max_in_flight
        self.quotas = Quotas(parse_quotas(settings.quotas or ""))
        self.http_port = 0
        self.grpc_port = 0
        self._http: _Uvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._grpc: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Listen on both ports, then load each model's default version."""
        self.service.set_ready(False)
        await self._start_http()
        try:
            self._grpc, self.grpc_port = await start_grpc_server(
                self.service,
                self.settings.host,
                self.settings.grpc_port,
                self.settings.max_message_size,
                [*grpc_interceptors(self.keys), *self._quota_interceptors()],
                self.tls.grpc_credentials() if self.tls is not None else None,
                self.settings.max_connections,
                self.edge,
            )
        except OSError:
            await self.stop(quiet=True)
            raise
        host = self.settings.host
        scheme, over_tls = ("https", " (TLS)") if self.tls is not None else ("http", "")
        _say(f"HTTP listening on {scheme}://{host}:{self.http_port}")
        _say(f"gRPC listening on {host}:{self.grpc_port}{over_tls}")
        warning = exposure_warning(host, self.keys)
        if warning is not None:
            logger.warning("%s", warning)
            _say(warning)
        _tune_garbage_collection()
        await self._load_defaults()
        self.service.set_ready(True)
        if self.announcer is not None:
            await self.announcer.start(host, self.http_port, self.grpc_port, tls=self.tls is not None)
            _say(f"announced in the store {self.announcer.store}")
        _say("ready")

    def _quota_interceptors(self) -> list[QuotaInterceptor]:
        """Counted after the keys' check, as over HTTP; none without quotas."""
        return [QuotaInterceptor(self.quotas, self.keys, self.service.recorder)] if self.quotas else []

    async def _start_http(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.settings.host, self.settings.http_port))
        except OSError as error:
            sock.close()
            where = f"{self.settings.host}:{self.settings.http_port}"
            raise OSError(f"cannot listen on {where} for HTTP: {error.strerror}") from None
        self.http_port = sock.getsockname()[1]
        settings = self.settings
        limits = ConnectionLimits(
            settings.max_header_size, settings.keep_alive_timeout, settings.max_connections
        )
        _allow_open_files(4 * settings.max_connections + 256)  # HTTP to twice the cap, gRPC, files
        config = uvicorn.Config(
            create_app(
                self.service,
                settings.max_message_size,
                self.keys,
                settings.body_timeout,
                settings.max_parsed_size,
                self.quotas,
            ),
            http=guarded_protocol(limits, self.edge),
            timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # a float works
            log_level=self.settings.log_level,
            log_config=None,  # logging is configured once, by modelpod.observe.logs
            access_log=False,
            lifespan="off",
            proxy_headers=False,  # listening on its own address, not behind a proxy it should trust
            timeout_graceful_shutdown=int(self.settings.drain_timeout) or None,
            ssl_certfile=self.tls.cert if self.tls is not None else None,
            ssl_keyfile=self.tls.key if self.tls is not None else None,
        )
        self._http = _Uvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises why uvicorn could not start
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def _load_defaults(self) -> None:
        for name in self.service.repository.names():
            started = time.perf_counter()
            try:
                await self.service.load_model(name)
            except Exception as error:  # one broken model must not stop the others
                logger.error("%s", error)
                _say(str(error))
                continue
            version = self.service.repository.get(name).default_version
            _say(f"loaded {name}:{version} in {time.perf_counter() - started:.2f} s")

    async def stop(self, quiet: bool = False) -> None:
        """Refuse new requests, let in-flight ones finish (up to the drain timeout), then close."""
        timeout = self.settings.drain_timeout
        if self.announcer is not None:  # first, so that proxies stop sending requests here
            await self.announcer.stop()
        self.service.start_draining()
        drained = await self.service.drain(timeout)
        if self._http is not None:
            self._http.should_exit = True
        if self._grpc is not None:
            await self._grpc.stop(grace=timeout)
        if self._http_task is not None:
            await self._http_task
        await asyncio.get_running_loop().run_in_executor(None, self.service.close)
        if self.capture is not None:  # what is queued is written before the process exits
            await asyncio.get_running_loop().run_in_executor(None, self.capture.close)
        if self.tracing is not None:  # the last spans leave before the process does
            await asyncio.get_running_loop().run_in_executor(None, self.tracing.shutdown)
        if not quiet:
            _say("stopped" if drained else "stopped (some requests were still running at the drain timeout)")


async def run_server(
    repository: Repository,
    settings: Settings,
    announcer: Announcer | None = None,
    watch: RepositoryWatch | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    server = ModelServer(repository, settings, announcer)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if watch is not None and settings.repository_poll > 0:
        await watch.start(server.service, settings.repository_poll)
    await stop.wait()
    _say("shutting down: finishing requests in flight")
    if watch is not None:
        await watch.stop()
    await server.stop()


def serve(
    *targets: Any,
    settings: Settings | None = None,
    store_models: Sequence[str] = (),
    runtime: str | None = None,
    runtime_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> None:
    """Serve models over HTTP and gRPC until stopped: `serve(MyModel, http_port=8080)`.

    A target is a Model class, a predictor class or a function, or a `(name, target)` pair;
    `store_models` are `identifier[:version]` references into the store at `settings.store`;
    `runtime` and `runtime_options` (--runtime, --runtime-option) reach the repository's models.
    """
    settings = settings or Settings(**overrides)
    logs.configure(settings.log_level, settings.log_format)
    repository = build_repository(targets, settings)
    announcer = _announcer(repository, settings, store_models) if store_models else None
    watch = None
    if settings.repository is not None:  # its models, and a poller of the folder when asked for
        watch = RepositoryWatch(settings.repository, repository, settings.allow_pickle,
                                dict(runtime_options or {}), runtime)  # fmt: skip
        watch.add_all()
    if not repository.names() and not (watch is not None and settings.repository_poll > 0):
        raise ValueError("nothing to serve: give at least one model")
    with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
        runner.run(run_server(repository, settings, announcer, watch))


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio's own loop by default. uvloop, measured against it on the benchmarks' load (64
    connections, 2 cores): as fast over HTTP, 7% faster over gRPC, but when the loop is saturated it
    leaves some connections unread for many turns: p99 300-450 ms against 25-35 ms for a model
    computed on the loop (an echo at 64 in flight), the median the same."""
    if name != "uvloop":
        return None
    with needs_extra("server", "MODELPOD_EVENT_LOOP=uvloop"):
        import uvloop

    return uvloop.new_event_loop


def _announcer(repository: Repository, settings: Settings, store_models: Sequence[str]) -> Announcer:
    """Adds the store's models to the repository; what announces, while serving, where they are."""
    if settings.store is None:
        raise ValueError("serving models from a store needs its URL: --store / MODELPOD_STORE")
    with needs_extra("store", "--store"):  # the store is optional: imported only when it is used
        from modelpod.server.from_store import Announcer, add_store_models, open_store

    store = open_store(settings.store, settings.data_path, settings.heartbeat_seconds, settings.allow_pickle)
    return Announcer(store, add_store_models(repository, store, store_models), settings.heartbeat_seconds)


def build_repository(targets: Iterable[Any], settings: Settings) -> Repository:
    batching = {
        "max_batch_size": settings.max_batch_size,
        "max_batch_delay_ms": settings.max_batch_delay_ms,
        "max_queue_size": settings.max_queue_size,
    }
    # The service logs slow requests with their breakdown; the runners' own warning would repeat it.
    repository = Repository(settings.data_path, {"slow_ms": math.inf}, batching, settings.workers,
                            settings.model_timeout)  # fmt: skip
    for target in targets:
        name, model = target if isinstance(target, tuple) else (None, target)
        repository.add(model, name)
    return repository


def start_tracing() -> Tracing:
    """OpenTelemetry for `--otel`, imported only then; the process's tracer provider too, so that a
    model's own instrumentation joins the requests' traces."""
    with needs_extra("otel", "--otel"):
        from opentelemetry import trace

        from modelpod.observe import tracing as otel

    tracing = otel.configured()
    trace.set_tracer_provider(tracing.provider)
    return tracing


def _tune_garbage_collection() -> None:
    """Every request allocates many short-lived objects; with the default thresholds the collector
    runs so often, over every module the server imported, that it sets the tail latency (measured:
    p99 130 ms -> 20 ms, throughput +50% under load). So: what exists now (the imported libraries,
    the servers) moves out of the collector's sight, and young collections run less often. Models
    load afterwards, so an evicted model's cycles are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def _allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files towards `needed` (as far as the hard limit
    allows), so that the connection cap, not the descriptor limit, is what refuses clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target < needed:
        logger.warning(
            "open files are limited to %d; MODELPOD_MAX_CONNECTIONS wants about %d: lower it, or raise "
            "the limit (ulimit -n)",
            target,
            needed,
        )


def _say(message: str) -> None:
    print(f"modelpod: {message}", flush=True)
