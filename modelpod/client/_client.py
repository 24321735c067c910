"""`Client`: a served model, used as if it were the model itself (`AsyncClient` is its asyncio twin).

Both share everything but I/O: operations are built by `ClientBase`, retry decisions are
`Backoff`'s, wire formats are the transports' pure codecs. What is left in each class is
the sending, the sleeping between attempts and the closing.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import os
import time
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from modelpod.client._grpc import GRPCTransport
from modelpod.client._http import HTTPTransport
from modelpod.client._operations import (
    Array,
    Call,
    Infer,
    Live,
    Metadata,
    ModelInfo,
    Models,
    Operation,
    Ready,
    single_model,
    training_outcome,
    training_pauses,
)
from modelpod.client._retry import Backoff
from modelpod.client._security import Security
from modelpod.client._transport import AsyncTransport, Transport
from modelpod.errors import ModelpodError

T = TypeVar("T")
C = TypeVar("C", bound="ClientBase[Any]")
TransportT = TypeVar("TransportT", bound=Transport | AsyncTransport)


class _Family(Generic[TransportT]):
    """What a client shares with the clients made from it: the connection and the discovered model."""

    def __init__(self, transport: TransportT) -> None:
        self.transport: TransportT = transport
        self.model: str | None = None
        self.closed = False

    def open(self) -> TransportT:
        if self.closed:
            raise RuntimeError(f"the client for {self.transport.address} is closed")
        return self.transport


class ClientBase(abc.ABC, Generic[TransportT]):
    """Configuration and the operations a client sends; no I/O."""

    def __init__(
        self,
        address: str,
        model: str | None = None,
        version: str | int | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        api_key: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
    ) -> None:
        self._timeout = checked_timeout(timeout)
        self._backoff = Backoff(retries)
        http, where, tls = transport_of(address)
        security = Security.of(api_key, tls, tls_ca)
        self._family: _Family[TransportT] = _Family(self._connect(http, where, security))
        self._owner = True
        self._model = model
        self._version = None if version is None else str(version)

    @abc.abstractmethod
    def _connect(self, http: bool, address: str, security: Security) -> TransportT:
        """The transport for an address: HTTP or gRPC, blocking or asyncio."""

    @property
    def address(self) -> str:
        """Where the server is: `http(s)://host:port` or `host:port` (gRPC)."""
        return self._family.transport.address

    @property
    def timeout(self) -> float | None:
        """Seconds each request may take (per attempt); None waits for ever."""
        return self._timeout

    def version(self: C, version: str | int) -> C:
        """The same model at another version, over the same connection."""
        return self._derive(_version=str(version))

    def model(self: C, name: str, version: str | int | None = None) -> C:
        """Another model (at its default version unless `version` is given), over the same connection."""
        return self._derive(_model=name, _version=None if version is None else str(version))

    def with_timeout(self: C, seconds: float | None) -> C:
        """This client with another timeout, over the same connection.

        Timeouts are set here, not per call: a `timeout=` keyword would collide with the
        model's own keyword arguments.
        """
        return self._derive(_timeout=checked_timeout(seconds))

    def _derive(self: C, **changes: Any) -> C:
        child = copy.copy(self)
        child.__dict__.update(changes, _owner=False)
        return child

    def _call(self, name: str, method: str, arguments: Mapping[str, Any]) -> Call:
        return Call(name, self._version, method, arguments)

    def _infer(
        self, name: str, inputs: Mapping[str, Array], outputs: Sequence[str] | None, id: str | None
    ) -> Infer:
        return Infer(name, self._version, dict(inputs), tuple(outputs or ()), id)

    @property
    def _for_a_model(self) -> bool:
        """`ready()` asks about a model when one was named (or a version), else about the server."""
        return self._model is not None or self._version is not None

    def _discovered(self, models: list[ModelInfo]) -> str:
        self._family.model = single_model(models, self.address)
        return self._family.model

    def __repr__(self) -> str:
        where = [repr(self.address)]
        if self._model is not None:
            where.append(f"model={self._model!r}")
        if self._version is not None:
            where.append(f"version={self._version!r}")
        return f"{type(self).__name__}({', '.join(where)})"


class Client(ClientBase[Transport]):
    """A model served by modelpod, used as if it were here: `Client("localhost:50051").predict(x=1)`.

    `address` picks the transport: `http://host:port` or `https://…` speaks HTTP, `host:port`
    speaks gRPC, and `grpcs://host:port` gRPC over TLS. `model` may be left out when the server
    serves exactly one model; `version` out for the model's default version. `timeout` is
    seconds per attempt (None: no limit); `retries` is how many times a request that is safe
    to repeat is sent again while the server is unavailable (0.1 s doubling to 2 s, jittered;
    `Retry-After` honoured). `initialize` and `train` are never sent again; `predict` and
    `infer` only when the server refused them before running them.

    `api_key` is sent with every request (`Authorization: Bearer …` / `authorization`
    metadata); it defaults to the `MODELPOD_API_KEY` environment variable. `tls_ca` is the PEM
    file of the authority that signed the server's certificate (default: the system's); given
    with a `host:port` address, it also turns TLS on for gRPC.

    Errors are those of `modelpod.errors`, with the server's message: `NotFound`,
    `InvalidInput`, `ModelError` (with the server's `error_id`), `Unavailable` (also when the
    server cannot be reached), `Timeout`, `Conflict`, `Unauthenticated`, `Forbidden`.

    `version()`, `model()` and `with_timeout()` return clients that share this one's
    connection; close this one (or use it as a context manager) when done.
    """

    def _connect(self, http: bool, address: str, security: Security) -> Transport:
        return HTTPTransport(address, security) if http else GRPCTransport(address, security)

    # -- the model's own methods -----------------------------------------------------------------

    def initialize(self, **config: Any) -> Any:
        """Create (or re-create) this version with `config`; returns what the server recorded."""
        return self._send(self._call(self._name(), "initialize", config))

    def train(self, **options: Any) -> Any:
        """Train this version on the server and wait for the job to end; returns what the model's
        `train` returned, or raises the job's error. `log()` shows its progress meanwhile."""
        job: dict[str, Any] | None = self.start_training(**options)
        pauses = training_pauses()
        while job is not None and job["state"] == "running":
            time.sleep(next(pauses))
            job = self.training()
        return training_outcome(job)

    def start_training(self, **options: Any) -> dict[str, Any]:
        """Start training this version in the background; returns the job (`state` "running").
        `Conflict` if the version is training already."""
        job: dict[str, Any] = self._send(self._call(self._name(), "train", options))
        return job

    def training(self) -> dict[str, Any] | None:
        """This version's latest training job: state, times, result or error, last progress."""
        job: dict[str, Any] | None = self._send(self._call(self._name(), "training", {}))
        return job

    def predict(self, **inputs: Any) -> Any:
        """Run the model's `predict` with keyword arguments; arrays and bytes travel exactly."""
        return self._send(self._call(self._name(), "predict", inputs))

    def predict_stream(self, **inputs: Any) -> Generator[Any, None, None]:
        """The items of a model whose `predict` yields, each as soon as the server has it (a model
        that does not yield gives its answer as the one item): `for item in client.predict_stream(...)`.

        Leaving the loop early closes the stream, and the server stops the model's generator. An
        error midway raises after the items before it. `timeout` bounds the wait for each item, not
        the whole stream; a stream is sent again only when the server refused it before any item."""
        call = self._call(self._name(), "predict", inputs)
        transport, attempt = self._family.open(), 0
        while True:
            items = transport.stream(call, self._timeout)
            with contextlib.closing(items):
                try:
                    first = next(items)
                except StopIteration:
                    return
                except ModelpodError as error:
                    wait = self._backoff.delay(call.retry, attempt, error)
                    if wait is None:
                        raise
                else:
                    yield first
                    yield from items
                    return
            time.sleep(wait)
            attempt += 1

    def log(self) -> Any:
        """What training reported so far."""
        return self._send(self._call(self._name(), "log", {}))

    def traffic(self) -> dict[str, Any]:
        """The model's traffic policy between its versions (split, sticky, shadow, rollout), its
        shadow's results and its rollout's window and decisions."""
        policy: dict[str, Any] = self._send(Call(self._name(), None, "traffic", {}))
        return policy

    def set_traffic(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the model's traffic policy (an admin key's), e.g. `{"split": {"1": 90, "2": 10}}`;
        `{}` removes it. Returns the policy as `traffic()` shows it."""
        changed: dict[str, Any] = self._send(
            Call(self._name(), None, "set_traffic", {"policy": dict(policy)})
        )
        return changed

    # -- Open Inference Protocol and the server ----------------------------------------------------

    def infer(
        self,
        inputs: Mapping[str, Array],
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Array]:
        """Run tensors through the model; returns the named outputs (all of them by default)."""
        return self._send(self._infer(self._name(), inputs, outputs, request_id))

    def metadata(self) -> dict[str, Any]:
        """The model's name, versions, platform, inputs and outputs."""
        return self._send(Metadata(self._name(), self._version))

    def ready(self) -> bool:
        """Whether the model (version) is ready; the server's readiness when no model was named."""
        return self._send(Ready(self._name(), self._version) if self._for_a_model else Ready())

    def live(self) -> bool:
        """Whether the server is alive."""
        return self._send(Live())

    def models(self) -> list[ModelInfo]:
        """Every model the server serves, with its versions."""
        return self._send(Models())

    # -- plumbing --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (a no-op on clients made by `version()`, `model()`, `with_timeout()`)."""
        if self._owner and not self._family.closed:
            self._family.closed = True
            self._family.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _name(self) -> str:
        return self._model or self._family.model or self._discovered(self._send(Models()))

    def _send(self, operation: Operation[T]) -> T:
        transport, attempt = self._family.open(), 0
        while True:
            try:
                return transport.send(operation, self._timeout)
            except ModelpodError as error:
                wait = self._backoff.delay(operation.retry, attempt, error)
                if wait is None:
                    raise
            time.sleep(wait)
            attempt += 1


def transport_of(address: str) -> tuple[bool, str, bool]:
    """Whether an address is HTTP, the address as its transport wants it, and whether it asks for TLS."""
    scheme, found, rest = address.partition("://")
    if not found:
        return False, address, False
    if scheme in ("http", "https"):
        return True, address, scheme == "https"  # httpx reads TLS from the scheme itself
    if scheme in ("grpc", "grpcs"):
        return False, rest, scheme == "grpcs"
    raise ValueError(
        f"unsupported address {address!r}: use http://host:port, https://…, host:port or grpcs://… (gRPC)"
    )


def checked_timeout(seconds: float | None) -> float | None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, not {seconds!r}")
    return seconds
