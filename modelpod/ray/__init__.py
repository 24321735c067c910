"""Serve modelpod models as Ray Serve deployments: the same model classes, routes and clients.

    import modelpod.ray
    deployment = modelpod.ray.deploy(IrisClassifier, num_replicas=2, ray_actor_options={"num_cpus": 0.5})
    Client(deployment.url, model="iris").predict(features=[5.1, 3.5, 1.4, 0.2])
    deployment.undeploy()

or `modelpod serve --backend ray [--ray-address ADDRESS] MODEL...`. Each replica runs the HTTP app of
`modelpod serve` (native routes and the Open Inference Protocol) around its own repository, pool
and batchers; Ray Serve's HTTP proxy spreads requests over the replicas, restarts a replica that
dies, and scales their number between bounds. gRPC is not served through Ray.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle, serve

from modelpod.ray._replica import Replica, ReplicaSpec, exclusive
from modelpod.ray._sync import start_state, stop_state
from modelpod.registry.store import Store
from modelpod.server.app import build_repository
from modelpod.server.auth import exposure_warning, load_keys
from modelpod.server.from_store import add_store_models, open_store
from modelpod.server.settings import Settings
from modelpod.serving.repository import Repository

__all__ = ["RayDeployment", "deploy", "serve_until_stopped", "undeploy"]

CONSTRUCTOR_RETRIES = 3  # a replica that cannot start (a bad import) fails the deployment quickly


@dataclass(frozen=True)
class RayDeployment:
    """A running deployment: its Ray Serve application name and the address clients use."""

    name: str
    url: str
    models: tuple[str, ...]
    store: str | None = None
    server_id: str = ""

    def undeploy(self) -> None:
        """Remove the application from Ray Serve, and its addresses from the store."""
        undeploy(self.name)
        if self.store is not None:
            store = Store(self.store)
            try:
                store.deregister(self.server_id)
            finally:
                store.close()


def deploy(
    *targets: Any,
    name: str = "modelpod",
    num_replicas: int = 1,
    autoscaling: Mapping[str, Any] | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    max_batch_size: int | None = None,
    max_batch_delay_ms: float | None = None,
    max_ongoing_requests: int = 256,
    route_prefix: str = "/",
    address: str | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> RayDeployment:
    """Deploy models as one Ray Serve application and wait until every replica serves them.

    A target is what `modelpod.serve` takes (a Model class, a predictor class or a function, or a
    `(name, target)` pair), or a string `identifier[:version]` of a model in the store at
    `settings.store`. `autoscaling` is Ray Serve's autoscaling config (e.g. `{"min_replicas": 1,
    "max_replicas": 4}`) and replaces `num_replicas`; `ray_actor_options` are each replica's
    resources (e.g. `{"num_cpus": 1}`); `max_ongoing_requests` is how many requests Ray sends one
    replica at once, which its batcher needs to fill batches. Other keyword arguments are
    `Settings` (data_path, model_pool_size, store, host and http_port for Ray's proxy...).
    Connects to the Ray cluster at `address` (or RAY_ADDRESS) unless Ray is already initialized,
    starting a local one when there is none.
    """
    settings = _settings(settings, overrides, max_batch_size, max_batch_delay_ms)
    objects = [t for t in targets if not isinstance(t, str)]
    store_models = tuple(t for t in targets if isinstance(t, str))
    repository = _checked_repository(objects, store_models, settings)
    if not ray.is_initialized():
        ray.init(address=address)
    serve.start(http_options=_http_options(settings))
    url = _proxy_url(route_prefix)
    spec = ReplicaSpec(
        targets=cloudpickle.dumps(objects),
        import_paths=_import_roots(repository.get(model).target for model in repository.names()),
        store_models=store_models,
        settings=settings.model_dump(),  # not as JSON, which would mask the API keys
        state_name=_state_name(name),
        url=url,
        server_id=str(uuid.uuid5(uuid.NAMESPACE_URL, url)),
    )
    start_state(
        spec.state_name, {model: repository.get(model).default_version for model in repository.names()}
    )
    options = _deployment_options(name, num_replicas, autoscaling, ray_actor_options, max_ongoing_requests)
    options["graceful_shutdown_timeout_s"] = settings.drain_timeout
    try:
        serve.run(Replica.options(**options).bind(spec), name=name, route_prefix=route_prefix)
    except BaseException:
        stop_state(spec.state_name)
        raise
    store = settings.store if store_models else None
    return RayDeployment(name, url, tuple(repository.names()), store, spec.server_id)


def undeploy(name: str = "modelpod") -> None:
    """Remove a deployment made by `deploy` (its replicas finish their requests first)."""
    serve.delete(name)
    stop_state(_state_name(name))


def _state_name(name: str) -> str:
    return f"modelpod-state:{name}"


def _deployment_options(
    name: str,
    num_replicas: int,
    autoscaling: Mapping[str, Any] | None,
    ray_actor_options: Mapping[str, Any] | None,
    max_ongoing_requests: int,
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": max_ongoing_requests,
        "max_constructor_retry_count": CONSTRUCTOR_RETRIES,
        "ray_actor_options": dict(ray_actor_options or {}),
    }
    if autoscaling is not None:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = num_replicas
    return options


def _settings(
    settings: Settings | None,
    overrides: Mapping[str, Any],
    max_batch_size: int | None,
    max_batch_delay_ms: float | None,
) -> Settings:
    settings = settings or Settings(**overrides)
    batching = {"max_batch_size": max_batch_size, "max_batch_delay_ms": max_batch_delay_ms}
    update: dict[str, Any] = {k: v for k, v in batching.items() if v is not None}
    # Replicas do not start where this process does: a relative path would mean another folder.
    for field in ("data_path", "api_key_file", "tls_cert", "tls_key"):
        if getattr(settings, field) is not None:
            update[field] = Path(getattr(settings, field)).resolve()
    settings = Settings(**(settings.model_dump() | update))
    if settings.http_port == 0:
        raise ValueError("the Ray backend needs a fixed HTTP port for Ray Serve's proxy (not 0)")
    return settings


def _checked_repository(
    objects: Sequence[Any], store_models: Sequence[str], settings: Settings
) -> Repository:
    """The repository every replica will build, built here first: a mistake fails before Ray starts."""
    repository = build_repository(objects, settings)
    if store_models:
        if settings.store is None:
            raise ValueError(
                "serving models from a store needs its URL: store=... / --store / MODELPOD_STORE"
            )
        store = open_store(
            settings.store, settings.data_path, settings.heartbeat_seconds, settings.allow_pickle
        )
        try:
            with exclusive(settings.data_path):
                add_store_models(repository, store, store_models)
        finally:
            store.close()
    if not repository.names():
        raise ValueError("nothing to serve: give at least one model")
    return repository


def _http_options(settings: Settings) -> dict[str, Any]:
    """Ray Serve's HTTP proxy, where modelpod's own HTTP server would listen (used when this starts Serve)."""
    options: dict[str, Any] = {"host": settings.host, "port": settings.http_port}
    if settings.tls_cert is not None and settings.tls_key is not None:
        options |= {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    return options


def _proxy_url(route_prefix: str) -> str:
    """Where Ray Serve's HTTP proxy listens (as it was started, perhaps by someone else), plus the prefix."""
    from ray.serve.context import _get_global_client  # the only way to read the proxy's options back

    http = _get_global_client().http_config
    host = socket.gethostname() if http.host in ("0.0.0.0", "::", "") else http.host
    scheme = "https" if http.ssl_certfile else "http"
    return f"{scheme}://{host}:{http.port}{route_prefix.rstrip('/')}"


def _import_roots(targets: Iterable[Any]) -> tuple[str, ...]:
    """The folders from which the targets' modules import, so that replicas import them the same way
    (a class pickled by reference is imported again in the replica; `__main__` travels by value)."""
    roots: list[str] = []
    for target in targets:
        module = sys.modules.get(getattr(target, "__module__", "") or "")
        file = getattr(module, "__file__", None)
        if module is None or file is None or module.__name__ == "__main__":
            continue
        root = Path(file).resolve().parent
        for _ in range(module.__name__.count(".") + (Path(file).name == "__init__.py")):
            root = root.parent
        if str(root) not in roots:
            roots.append(str(root))
    return tuple(roots)


def serve_until_stopped(
    targets: Sequence[Any],
    settings: Settings,
    store_models: Sequence[str] = (),
    address: str | None = None,
    name: str = "modelpod",
    route_prefix: str = "/",
    num_replicas: int = 1,
    max_replicas: int | None = None,
    replica_cpus: float | None = None,
) -> None:
    """`modelpod serve --backend ray`: deploy, serve until SIGINT or SIGTERM, then remove the deployment
    (and stop the local Ray cluster, when this process started it)."""
    started_here = address is None and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    if not ray.is_initialized():
        ray.init(address=address)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        autoscaling = None
        if max_replicas is not None:
            autoscaling = {"min_replicas": num_replicas, "max_replicas": max_replicas}
        actor_options = {"num_cpus": replica_cpus} if replica_cpus is not None else None
        deployment = deploy(*targets, *store_models, name=name, route_prefix=route_prefix,
                            num_replicas=num_replicas, autoscaling=autoscaling,
                            ray_actor_options=actor_options, settings=settings)  # fmt: skip
        replicas = f"{num_replicas}-{max_replicas}" if max_replicas else str(num_replicas)
        _say(f"HTTP listening on {deployment.url}")
        models = ", ".join(deployment.models)
        _say(f"Ray Serve application {deployment.name!r}: {replicas} replicas of {models}")
        _say("gRPC is not served through Ray: use HTTP (modelpod.Client, tritonclient.http)")
        warning = exposure_warning(settings.host, load_keys(settings))
        if warning is not None:
            _say(warning)
        _say("ready")
        while not stop.wait(0.5):
            pass
        _say("shutting down: removing the deployment")
        deployment.undeploy()
    finally:
        if started_here:
            serve.shutdown()
            ray.shutdown()
    _say("stopped")


def _say(message: str) -> None:
    print(f"modelpod: {message}", flush=True)
