"""The exception tree, and the one table that maps each error to HTTP and gRPC.

    ModelpodError
     ├── InvalidInput        400  INVALID_ARGUMENT   the request is wrong; the message names the field
     ├── Unauthenticated     401  UNAUTHENTICATED    no API key, or one the server does not know
     ├── Forbidden           403  PERMISSION_DENIED  the key's role may not do this
     ├── NotFound            404  NOT_FOUND          unknown model, version or route
     ├── Conflict            409  FAILED_PRECONDITION the model is busy with something exclusive (training)
     ├── PayloadTooLarge     413  RESOURCE_EXHAUSTED  the request body is over the limit
     ├── ModelError          500  INTERNAL            the model raised; carries an error id that is in the log
     │    └── ProcessorError                          a pre/post-processor raised; names the processor
     ├── ModelLoadError      503  UNAVAILABLE         the model could not be loaded
     ├── Unavailable         503  UNAVAILABLE         overloaded or shutting down; may carry retry_after
     │    ├── RateLimited     429  RESOURCE_EXHAUSTED  the caller is over its quota; carries retry_after
     │    └── Interrupted                             (client side) the connection broke mid-request
     ├── Timeout             504  DEADLINE_EXCEEDED   the request's deadline passed
     └── BodyTimeout         408  DEADLINE_EXCEEDED   the request body did not arrive in time (HTTP)

Transports never decide a status themselves: they ask `http_status` and `grpc_status_name`.
"""

from __future__ import annotations

import uuid


class ModelpodError(Exception):
    """Base of every error modelpod raises on purpose."""

    from_model = False  # True for a model's own error answer, which a server passes on as it is

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidInput(ModelpodError):
    """The request cannot be run as it is: a missing, extra or malformed field."""


class Unauthenticated(ModelpodError):
    """The server wants an API key (`Authorization: Bearer KEY`) and got none it knows."""


class Forbidden(ModelpodError):
    """The API key is known, but its role may not do this (a `predict` key asking to train, say)."""


class NotFound(ModelpodError):
    """No such model, version or route."""


class Conflict(ModelpodError):
    """The operation conflicts with one in progress (a second training job, say)."""


class PayloadTooLarge(ModelpodError):
    """The request is larger than the server accepts."""


class ModelError(ModelpodError):
    """The model's own code raised. `error_id` ties the client's message to the server log."""

    def __init__(self, message: str, error_id: str | None = None) -> None:
        self.error_id = error_id or uuid.uuid4().hex[:12]
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} (error id {self.error_id})"


class ProcessorError(ModelError):
    """A pre- or post-processor raised; `processor` is its name."""

    def __init__(self, processor: str, message: str, error_id: str | None = None) -> None:
        self.processor = processor
        super().__init__(message, error_id)


class ModelLoadError(ModelpodError):
    """The model could not be loaded (its `setup` raised, or its class could not be imported)."""


class Unavailable(ModelpodError):
    """The server cannot take the request now; retrying later may succeed."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimited(Unavailable):
    """The caller (its API key or traffic key) is over its rate or concurrency quota: the request did
    not run; retrying after `retry_after` seconds may succeed. An `Unavailable`, so clients wait and
    resend it as they do a 503."""

    def __init__(
        self, message: str, retry_after: float | None = None, limit: str = "", model: str = ""
    ) -> None:
        super().__init__(message, retry_after)
        self.limit = limit  # which quota: "rate" or "concurrency" (the server's side only)
        self.model = model  # the model the quota is for; "" for the caller's over all models


class Interrupted(Unavailable):
    """The connection broke after the request went out: the server may have run it.

    An `Unavailable`, so callers catch it as one; a client resends it only for calls that merely read.
    """


class Timeout(ModelpodError):
    """The request's deadline passed before it was answered."""


class BodyTimeout(ModelpodError):
    """The request body did not arrive within the server's body timeout; the connection is closed."""


# The one table: error class -> (HTTP status, gRPC status code name). Most specific first.
_STATUS: tuple[tuple[type[ModelpodError], int, str], ...] = (
    (InvalidInput, 400, "INVALID_ARGUMENT"),
    (Unauthenticated, 401, "UNAUTHENTICATED"),
    (Forbidden, 403, "PERMISSION_DENIED"),
    (NotFound, 404, "NOT_FOUND"),
    (Conflict, 409, "FAILED_PRECONDITION"),
    (PayloadTooLarge, 413, "RESOURCE_EXHAUSTED"),
    (ModelError, 500, "INTERNAL"),
    (RateLimited, 429, "RESOURCE_EXHAUSTED"),
    (Unavailable, 503, "UNAVAILABLE"),
    (ModelLoadError, 503, "UNAVAILABLE"),
    (Timeout, 504, "DEADLINE_EXCEEDED"),
    (BodyTimeout, 408, "DEADLINE_EXCEEDED"),  # after Timeout: a gRPC deadline is read back as Timeout
)


def _lookup(error: BaseException) -> tuple[int, str]:
    for cls, http, grpc in _STATUS:
        if isinstance(error, cls):
            return http, grpc
    return 500, "INTERNAL"


def http_status(error: BaseException) -> int:
    """The HTTP status for an error; anything unexpected is a 500."""
    return _lookup(error)[0]


def grpc_status_name(error: BaseException) -> str:
    """The name of the `grpc.StatusCode` for an error (a name, so this module needs no grpc)."""
    return _lookup(error)[1]


# Where two errors share a status, the first in the table is the one a client raises.
_BY_HTTP: dict[int, type[ModelpodError]] = {}
_BY_GRPC: dict[str, type[ModelpodError]] = {}
for _cls, _http, _grpc in _STATUS:
    _BY_HTTP.setdefault(_http, _cls)
    _BY_GRPC.setdefault(_grpc, _cls)


# Errors a server names in its answer (HTTP `X-Modelpod-Error`, gRPC `modelpod-error` metadata), so that
# a client raises the exact class, and can tell the server's own refusal from any other 503.
ERROR_NAME_HEADER = "x-modelpod-error"
_BY_NAME: dict[str, type[ModelpodError]] = {
    cls.__name__: cls
    for cls in (
        InvalidInput,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        PayloadTooLarge,
        BodyTimeout,
        ModelLoadError,
        Unavailable,
        RateLimited,
        Timeout,
    )
}


def from_error_name(name: str | None, message: str) -> ModelpodError | None:
    """The error a server named, or None when the name is absent or not one a message alone rebuilds."""
    cls = _BY_NAME.get(name or "")
    return cls(message) if cls is not None else None


def from_http_status(status: int, message: str) -> ModelpodError:
    """The typed error a client raises for an error response (the inverse of `http_status`)."""
    return _BY_HTTP.get(status, ModelpodError)(message)


def from_grpc_status_name(name: str, message: str) -> ModelpodError:
    """The typed error a client raises for a gRPC status (the inverse of `grpc_status_name`)."""
    return _BY_GRPC.get(name, ModelpodError)(message)
