"""`RemoteModel`: one object for a model wherever it lives.

- `MyModel(k=3, serve=True)` gives a proxy holding the original, created on first use.
- With no store attached, `predict` (and `predict_stream`) runs the original in-process, through a Runner.
- After `store.apply(proxy)`, and while a server serves that version, `predict` calls the server.
- `store.load(identifier)` gives a proxy that calls a live server, or loads the original locally.

`proxy.route` says which path the last call took ("local", or "remote <address>"); a change of
route is logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from modelpod.errors import Interrupted, InvalidInput, ModelLoadError, Unavailable
from modelpod.runtime.adapters import as_model
from modelpod.runtime.model import DEFAULT_VERSION, Model, class_path
from modelpod.runtime.objects import load_object
from modelpod.runtime.runner import Runner

if TYPE_CHECKING:
    from modelpod.client import Client
    from modelpod.registry.store import ModelRecord, Store

logger = logging.getLogger("modelpod.registry.remote")

LOCAL = "local"
_NOTHING: Any = object()
_PROTOCOL_PREFERENCE = {"grpc": 0, "http": 1}


class RemoteModel:
    """Stands for a model: runs it here, or calls the server that serves it, whichever is right."""

    def __init__(
        self,
        identifier: str,
        version: str,
        config: dict[str, Any],
        *,
        factory: Callable[[], Model] | None = None,
        store: Store | None = None,
        record: ModelRecord | None = None,
        refresh_seconds: float = 2.0,
    ) -> None:
        self.identifier = identifier
        self.version = version
        self.config = config
        self.store = store
        self.record = record
        self.refresh_seconds = refresh_seconds
        self.route: str | None = None
        self._factory = factory
        self._original: Model | None = None
        self._runner: Runner | None = None
        self._clients: dict[str, Client] = {}
        self._checked_at = -float("inf")
        self._addresses: list[str] = []
        self._unreachable: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def from_constructor(
        cls, model_class: type[Model], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> RemoteModel:
        """What `MyModel(..., serve=True)` returns: the constructor's arguments are kept, not run."""
        version = str(args[0]) if args else str(kwargs.get("version", DEFAULT_VERSION))
        config = {k: v for k, v in kwargs.items() if k not in ("version", "name", "data_path")}
        identifier = str(kwargs.get("name") or model_class.default_name())
        return cls(identifier, version, config, factory=lambda: model_class(*args, **kwargs))

    @classmethod
    def from_record(cls, store: Store, record: ModelRecord) -> RemoteModel:
        return cls(record.identifier, record.version, dict(record.config), store=store, record=record)

    # -- the original, loaded on first use ------------------------------------------------------

    @property
    def original(self) -> Model:
        """The model itself, created (or materialized from the store) the first time it is needed."""
        with self._lock:
            if self._original is None:
                self._original = self._load_original()
            return self._original

    def _load_original(self) -> Model:
        if self._factory is not None:
            return self._factory()
        if self.store is None or self.record is None:  # pragma: no cover - the constructors set one
            raise ModelLoadError(f"nothing to load for {self.identifier}")
        self.store.materialize(self.record, self.store.data_path)
        target = self.store.model_class(self.record)
        return as_model(target, self.record.version, name=self.identifier, data_path=self.store.data_path)

    @property
    def uuid(self) -> str | None:
        return self.record.uuid if self.record is not None else None

    # -- the model's methods --------------------------------------------------------------------

    def predict(self, **inputs: Any) -> Any:
        """Predict where the model lives now: on a live server if there is one, else here."""
        return self._call("predict", inputs)

    def predict_stream(self, **inputs: Any) -> Generator[Any, None, None]:
        """A streaming model's items, as they come, from where the model lives now (as `predict`).
        A server that cannot be reached before the first item is passed over for the next place."""
        for address in self._live_addresses():
            items = self._client(address).predict_stream(**inputs)
            with contextlib.closing(items):
                try:
                    first = next(items, _NOTHING)
                except Interrupted:
                    raise  # it may have run there: running it again here could do it twice
                except Unavailable as error:  # never reached the server: try the next place
                    self._skip(address, error)
                    continue
                self._set_route(f"remote {address}")
                if first is not _NOTHING:
                    yield first
                    yield from items
                return
        self._set_route(LOCAL)
        yield from self._local().predict_stream(**inputs)

    def log(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("log", {})
        return result

    def _call(self, method: str, inputs: dict[str, Any]) -> Any:
        for address in self._live_addresses():
            try:
                result = getattr(self._client(address), method)(**inputs)
            except Interrupted:
                raise  # it may have run there: running it again here could do it twice
            except Unavailable as error:  # never reached the server: try the next place
                self._skip(address, error)
                continue
            self._set_route(f"remote {address}")
            return result
        self._set_route(LOCAL)
        if method == "log":
            return self.original.log()
        return self._local().predict(**inputs)

    def _skip(self, address: str, error: Unavailable) -> None:
        logger.info("%s:%s: %s is unreachable (%s)", self.identifier, self.version, address, error)
        self._unreachable.add(address)

    def _live_addresses(self) -> list[str]:
        """Servers announcing this version in the store, gRPC first (looked up every `refresh_seconds`)."""
        if self.store is None or self.record is None:
            return []
        if time.monotonic() - self._checked_at >= self.refresh_seconds:
            live = self.store.endpoints(self.identifier, self.version)
            live.sort(key=lambda e: _PROTOCOL_PREFERENCE.get(e.protocol, 9))
            self._addresses = [e.address for e in live]
            self._unreachable.clear()
            self._checked_at = time.monotonic()
        return [a for a in self._addresses if a not in self._unreachable]

    def _set_route(self, route: str) -> None:
        if route != self.route:
            logger.info("%s:%s now runs %s", self.identifier, self.version, route)
            self.route = route

    def _local(self) -> Runner:
        if self._runner is None:
            self._runner = Runner(self.original)
        return self._runner

    def _client(self, address: str) -> Client:
        if address not in self._clients:
            from modelpod.client import Client

            # One retry: when a server refuses, the next place (or this process) is the better retry.
            self._clients[address] = Client(address, model=self.identifier, version=self.version, retries=1)
        return self._clients[address]

    def close(self) -> None:
        """Unload the local original and close connections to servers."""
        if self._runner is not None:
            self._runner.close()
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    # -- the store -----------------------------------------------------------------------------

    def apply_to(self, store: Store) -> ModelRecord:
        """Record the original in `store` first (no dangling reference), then attach to it."""
        if self.record is not None and self.store is store:
            return self.record
        record = store.apply(self.original)
        self.store, self.record, self.version = store, record, record.version
        self._checked_at = -float("inf")
        return record

    def encode(self) -> str | bytes:
        """A reference string once applied (`modelpod://identifier/version/uuid`); else the original
        itself, as its class and config."""
        if self.record is not None:
            return self.record.reference
        original = self.original
        source = original.source()
        document: dict[str, Any] = {
            "class": class_path(source),
            "name": self.identifier,
            "version": self.version,
            "config": original.config,
        }
        return json.dumps(document).encode()

    @staticmethod
    def decode(value: str | bytes, store: Store | None = None) -> RemoteModel:
        """The proxy for what `encode()` gave: a reference needs the store it points into."""
        if isinstance(value, str):
            if store is None:
                raise InvalidInput(f"decoding {value!r} needs the store it refers to")
            return store.load_reference(value)
        try:
            document = json.loads(value)
            model_class = load_object(document["class"])
        except (ValueError, KeyError, TypeError) as error:
            raise InvalidInput(f"not an encoded modelpod model: {error}") from None
        kwargs = {**document["config"], "name": document["name"]}
        return RemoteModel.from_constructor(model_class, (document["version"],), kwargs)

    def __repr__(self) -> str:
        where = self.route or "not used yet"
        return f"<RemoteModel {self.identifier}:{self.version} ({where})>"
