"""What a client can ask a server, as plain values: the words both transports speak.

A client method builds one operation; a transport turns it into an HTTP request or a gRPC
message and its answer back into the result type the operation names. Each operation says
whether it is safe to send again (`Retry`), so the retry loop needs to know nothing else.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy.typing as npt

from modelpod.errors import InvalidInput, ModelError, ModelpodError, from_error_name

T = TypeVar("T")
Array = npt.NDArray[Any]


class Retry(enum.Enum):
    """When an operation may be sent again after a failure."""

    NEVER = "never"
    """It may change state (`initialize`, `train`): the caller decides."""

    IF_REFUSED = "if refused"
    """Only when the server refused it before running it (`predict`, `infer`)."""

    ALWAYS = "always"
    """It only reads (`metadata`, `ready`, `live`, `models`, `log`): also when a connection broke."""


class Operation(Generic[T]):
    """One request to a server; `T` is what the transport returns for it."""

    @property
    def retry(self) -> Retry:
        return Retry.ALWAYS


@dataclass(frozen=True)
class Call(Operation[Any]):
    """One of the model's own methods, with keyword arguments (the native service)."""

    model: str
    version: str | None
    method: str
    arguments: Mapping[str, Any]

    @property
    def retry(self) -> Retry:
        if self.method in ("initialize", "train"):
            return Retry.NEVER
        return Retry.IF_REFUSED if self.method in ("predict", "set_traffic") else Retry.ALWAYS


@dataclass(frozen=True)
class Infer(Operation[dict[str, Array]]):
    """Open Inference Protocol tensors in, the output tensors out (all when `outputs` is empty)."""

    model: str
    version: str | None
    inputs: Mapping[str, Array]
    outputs: tuple[str, ...] = ()
    id: str | None = None

    @property
    def retry(self) -> Retry:
        return Retry.IF_REFUSED


@dataclass(frozen=True)
class Metadata(Operation[dict[str, Any]]):
    """A model's Open Inference Protocol metadata: name, versions, platform, inputs, outputs."""

    model: str
    version: str | None


@dataclass(frozen=True)
class Ready(Operation[bool]):
    """Whether one model (version) is ready, or the server when `model` is None."""

    model: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class Live(Operation[bool]):
    """Whether the server is alive."""


@dataclass(frozen=True)
class ModelInfo:
    """One served model as `Client.models()` lists it, the same over HTTP and gRPC."""

    name: str
    versions: tuple[str, ...] = field(default=())
    available: bool = True
    """False while the model is unloaded (`POST /v2/repository/models/{name}/unload`)."""


@dataclass(frozen=True)
class Models(Operation[list[ModelInfo]]):
    """The server's models and their versions."""


def single_model(models: Iterable[ModelInfo], address: str) -> str:
    """The name of the only model a server serves; otherwise tell the caller to choose one."""
    names = [model.name for model in models]
    if len(names) == 1:
        return names[0]
    if not names:
        raise InvalidInput(f"the server at {address} serves no models")
    raise InvalidInput(
        f"the server at {address} serves {len(names)} models ({', '.join(names)});"
        " pass model= to choose one, e.g. Client(address, model=" + repr(names[0]) + ")"
    )


def training_pauses() -> Iterator[float]:
    """Seconds between looks at a running training job: quick at first, then twice a second."""
    yield from (0.05, 0.1, 0.2, 0.4)
    while True:
        yield 0.5


def training_outcome(job: Mapping[str, Any] | None) -> Any:
    """What an ended training job gives its caller: what `train` returned, or the job's error."""
    if job is None:
        raise ModelpodError("the server has no record of the training job it started")
    if job["state"] == "succeeded":
        return job.get("result")
    message = f"training {job.get('model')} version {job.get('version')} failed: {job.get('error')}"
    kind = job.get("error_kind")
    error = None if kind == "ModelError" else from_error_name(kind, message)
    raise error or ModelError(message, job.get("error_id"))
