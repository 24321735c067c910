"""One Ray Serve replica: the HTTP app of `modelpod serve`, around an inference service of its own.

Ray Serve's proxy takes the HTTP request, picks a replica and hands it the ASGI request; the
replica answers it with the very Starlette app `modelpod serve` uses, so the routes, the codecs and
the errors are the same by construction. Inside, the replica is a modelpod server without its
listeners: a repository, an LRU pool of loaded versions, a batcher per version, model threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import cloudpickle, serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelpod.ray._sync import SharedChanges
from modelpod.registry.store import Store
from modelpod.server.app import _tune_garbage_collection, build_repository
from modelpod.server.auth import load_keys
from modelpod.server.from_store import add_store_models, open_store
from modelpod.server.http import create_app
from modelpod.server.settings import Settings
from modelpod.serving.pool import ModelPool
from modelpod.serving.quotas import Quotas, parse_quotas
from modelpod.serving.repository import Repository
from modelpod.serving.service import InferenceService
from modelpod.serving.traffic_policy import parse_flag

logger = logging.getLogger("modelpod.ray")

_REQUEST_ID = b"x-request-id"


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything a replica needs, sent by `deploy` to every replica Ray starts."""

    targets: bytes  # the served classes and functions, [(name or None, target)], cloudpickled
    import_paths: tuple[str, ...]  # folders their modules import from, put first on sys.path
    store_models: tuple[str, ...]  # `identifier[:version]` references into settings.store
    settings: dict[str, Any]  # modelpod.server.settings.Settings, its fields' values
    state_name: str  # the deployment's SharedState actor
    url: str  # the address clients use (Ray's HTTP proxy), recorded in the store
    server_id: str  # one id for the whole deployment in the store's endpoint table


class ModelpodReplica:
    """What Ray Serve runs in each replica's actor."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.settings = Settings(**spec.settings)
        logging.getLogger("modelpod").setLevel(self.settings.log_level.upper())
        repository, self.store, self.served = _build_repository(spec, self.settings)
        pool = ModelPool(self.settings.model_pool_size, self.settings.model_pool_memory)
        self.changes = SharedChanges(spec.state_name)
        self.service = InferenceService(
            repository,
            pool,
            self.settings.rpc_max_workers,
            slow_ms=self.settings.slow_ms,
            changes=self.changes,
        )
        self.changes.attach(self.service)
        if self.settings.traffic:  # as `modelpod serve` does; then the policies shared by the replicas
            self.service.configure_traffic(parse_flag(self.settings.traffic))
        self.service.traffic.shadowing.max_in_flight = self.settings.shadow_max_in_flight
        self.quotas = Quotas(parse_quotas(self.settings.quotas or ""))  # counted per replica
        self.keys = load_keys(self.settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def __serve_build_asgi_app__(self) -> ASGIApp:
        """Called by Ray Serve once the replica exists and before it gets requests: load, then serve."""
        self.service.set_ready(False)
        await self.changes.catch_up()  # a replica started later follows what the others changed
        await self.changes.load_defaults()
        self._tasks.append(asyncio.create_task(self.changes.follow()))
        if self.store is not None and self.served:
            self._tasks.append(asyncio.create_task(self._announce(self.store)))
        _tune_garbage_collection()
        self.service.set_ready(True)
        return _for_ray_proxy(
            create_app(
                self.service,
                self.settings.max_message_size,
                self.keys,
                self.settings.body_timeout,
                self.settings.max_parsed_size,
                self.quotas,
            )
        )

    async def _announce(self, store: Store) -> None:
        """Record the deployment's address for each served version, and keep it fresh.

        Every replica does this under the deployment's one id, so the address lives as long as any
        replica does; it is removed when the deployment is (`RayDeployment.undeploy`)."""
        while True:
            try:
                for identifier, version in self.served:
                    await asyncio.to_thread(
                        store.register_endpoint,
                        self.spec.server_id,
                        identifier,
                        version,
                        "http",
                        self.spec.url,
                    )
            except Exception as error:  # a store outage must not take the replica down
                logger.warning("recording this deployment in the store failed: %s", error)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    def check_health(self) -> None:
        """Ray Serve asks periodically; a replica that stopped following the others is replaced."""
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"a background task of the replica stopped: {task!r}")

    def __del__(self) -> None:
        """Ray Serve calls this after the replica's requests have finished (scale-down, deletion)."""
        self.close()

    def close(self) -> None:
        if getattr(self, "_closed", True):  # closed already, or never fully constructed
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self.service.start_draining()
        self.service.close()
        if self.store is not None:
            self.store.close()


def _build_repository(
    spec: ReplicaSpec, settings: Settings
) -> tuple[Repository, Store | None, list[tuple[str, str]]]:
    sys.path[:0] = [path for path in spec.import_paths if path not in sys.path]
    repository = build_repository(cloudpickle.loads(spec.targets), settings)
    if not spec.store_models:
        return repository, None, []
    assert settings.store is not None  # deploy checked it
    store = open_store(settings.store, settings.data_path, settings.heartbeat_seconds, settings.allow_pickle)
    with exclusive(settings.data_path):
        served = add_store_models(repository, store, spec.store_models)
    return repository, store, served


@contextlib.contextmanager
def exclusive(data_path: Path) -> Iterator[None]:
    """One process at a time lays store versions out in a data path (replicas on one node share it)."""
    data_path.mkdir(parents=True, exist_ok=True)
    with (data_path / ".modelpod-materialize.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _for_ray_proxy(app: ASGIApp) -> ASGIApp:
    """The app as Ray's proxy needs it. The proxy gives every request an `X-Request-Id` (the client's,
    or a new one) and puts it on the response itself: the app, which uses the same id, leaves it out
    so that it is sent once. Messages travel to the proxy pickled: a body sent straight from an
    array's memory (a memoryview) is copied into bytes first."""

    async def for_ray(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                message["headers"] = [(key, value) for key, value in headers if key.lower() != _REQUEST_ID]
            elif message["type"] == "http.response.body" and not isinstance(message.get("body", b""), bytes):
                message["body"] = bytes(message["body"])
            await send(message)

        await app(scope, receive, sending)

    return for_ray


Replica: Any = serve.deployment(serve.ingress()(ModelpodReplica))
