"""API keys with two roles, checked at both edges: an ASGI middleware and a gRPC interceptor.

    predict   inference, metadata, statistics, the training log: everything that only reads or runs
    admin     all of predict, plus what changes the server: initialize, train, load, unload, default

Health (and the V2 server metadata, the docs and the status page) stays open. A request without a
known key is refused with 401 / UNAUTHENTICATED, one whose key's role is too low with 403 /
PERMISSION_DENIED. Keys are kept only as SHA-256 digests and compared in constant time with every
known key, so neither the answer's timing nor a log line gives one away.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from modelpod.errors import Forbidden, ModelpodError, Unauthenticated
from modelpod.observe import logs
from modelpod.server.endpoints import error_response
from modelpod.server.grpc import abort
from modelpod.server.routes_openai import error_response as openai_error_response
from modelpod.server.settings import Settings


class Role(enum.IntEnum):
    """What a key may do; a higher role may do everything a lower one may."""

    PREDICT = 1
    ADMIN = 2


# The model's own methods a predict key may call; any other method (initialize, train, ...) is admin's.
PREDICT_METHODS = frozenset({"predict", "log", "training", "traffic"})
# Paths anyone may read: health, the V2 server metadata, the API description and the status page.
OPEN_PATHS = frozenset({"/", "/ui", "/docs", "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js",
                        "/openapi.json", "/v2", "/v2/health/live", "/v2/health/ready"})  # fmt: skip
_V2_SERVICE = "/inference.GRPCInferenceService/"
_NATIVE_SERVICE = "/modelpod.native.ModelService/"
OPEN_RPCS = frozenset(_V2_SERVICE + name for name in ("ServerLive", "ServerReady", "ServerMetadata"))
ADMIN_RPCS = frozenset(_V2_SERVICE + name for name in ("RepositoryModelLoad", "RepositoryModelUnload"))


@dataclass(frozen=True)
class KeyTable:
    """The known keys, as SHA-256 digests, each with its role, and the names quotas and metrics
    know them by (`ROLE:KEY name=NAME`; unnamed, `key-N` by its place: never the key itself)."""

    digests: tuple[tuple[bytes, Role], ...]
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], where: str, first: int = 1) -> KeyTable:
        """Keys from `ROLE:KEY [name=NAME]` entries; `where` names the source in errors (which never
        quote a key); `first` is the number of the first key, for the names of unnamed ones."""
        digests, names = [], []
        for number, entry in enumerate(entries, 1):
            role, separator, rest = entry.strip().partition(":")
            key, *attributes = rest.split() or [""]
            if not separator or role.strip().upper() not in Role.__members__ or not key:
                raise ValueError(
                    f"entry {number} of {where} is not ROLE:KEY, with ROLE predict or admin and a KEY"
                )
            name = f"key-{first + number - 1}"
            for attribute in attributes:
                label, equals, value = attribute.partition("=")
                if label != "name" or not equals or not value:
                    raise ValueError(f"entry {number} of {where}: after the key, only name=NAME may follow")
                name = value
            digests.append((_digest(key.encode()), Role[role.strip().upper()]))
            names.append(name)
        return cls(tuple(digests), tuple(names))

    def __bool__(self) -> bool:
        return bool(self.digests)

    def role_of(self, key: bytes | None) -> Role | None:
        """The role of a presented key, or None when it is unknown (or absent)."""
        if key is None:
            return None
        presented = _digest(key)
        found: Role | None = None
        for digest, role in self.digests:  # every key is compared, whether or not one matched already
            if hmac.compare_digest(presented, digest) and (found is None or role > found):
                found = role
        return found

    def name_of(self, key: bytes | None) -> str | None:
        """The name of a presented key (None when unknown), compared as `role_of` compares."""
        if key is None:
            return None
        presented = _digest(key)
        found = None
        for (digest, _), name in zip(self.digests, self.names, strict=True):
            if hmac.compare_digest(presented, digest) and found is None:
                found = name
        return found


def load_keys(settings: Settings) -> KeyTable:
    """The keys of `MODELPOD_API_KEYS` and of the key file together; empty when neither is set."""
    digests: list[tuple[bytes, Role]] = []
    names: list[str] = []
    if settings.api_keys is not None:
        entries = [e for e in settings.api_keys.get_secret_value().split(",") if e.strip()]
        table = KeyTable.parse(entries, "the API keys (MODELPOD_API_KEYS)")
        digests, names = [*table.digests], [*table.names]
    if settings.api_key_file is not None:
        table = _read_key_file(settings.api_key_file, len(digests) + 1)
        digests, names = [*digests, *table.digests], [*names, *table.names]
    return KeyTable(tuple(digests), tuple(names))


def _read_key_file(path: Path, first: int) -> KeyTable:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise ValueError(f"cannot read the API key file {path}: {reason}") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    table = KeyTable.parse(lines, f"the API key file {path} (comments and blank lines not counted)", first)
    if not table:
        raise ValueError(f"the API key file {path} holds no key: write one ROLE:KEY per line")
    return table


def _digest(key: bytes) -> bytes:
    # Digests have one length, so comparing them tells nothing about a key's length either.
    return hashlib.sha256(key).digest()


def bearer_key(authorization: bytes | str | None) -> bytes | None:
    """The key of an `Authorization: Bearer KEY` value; None for anything else."""
    if authorization is None:
        return None
    value = authorization.encode("latin-1") if isinstance(authorization, str) else authorization
    scheme, _, key = value.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not key.strip():
        return None
    return key.strip()


def is_loopback(host: str) -> bool:
    """Whether an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that may resolve anywhere


def exposure_warning(host: str, keys: KeyTable) -> str | None:
    """What to warn about when the server is reachable from other machines without any key."""
    if keys or is_loopback(host):
        return None
    return (
        f"warning: serving on {host} without API keys: anyone who can reach this address may run, "
        "train and unload models; set MODELPOD_API_KEYS or MODELPOD_API_KEY_FILE"
    )


# -- HTTP ----------------------------------------------------------------------------------------------


def http_role(method: str, path: str) -> Role | None:
    """The role an HTTP request needs; None when it is open."""
    path = path.rstrip("/") or "/"
    if path in OPEN_PATHS and method in ("GET", "HEAD"):
        return None
    if method in ("GET", "HEAD"):
        return Role.PREDICT
    if method != "POST":  # PUT /models/{name}/default, and anything else that changes the server
        return Role.ADMIN
    parts = path.split("/")
    if parts[1:3] == ["v2", "repository"]:
        return Role.ADMIN if parts[-1] in ("load", "unload") and len(parts) == 6 else Role.PREDICT
    if parts[1] == "models" and parts[-1] not in PREDICT_METHODS:
        return Role.ADMIN  # initialize, train, or a method this table does not know yet
    return Role.PREDICT


class AuthMiddleware:
    """Refuses HTTP requests without a key whose role allows them, before any route runs."""

    def __init__(self, app: ASGIApp, keys: KeyTable) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            needed = http_role(scope["method"], scope["path"])
            if needed is not None:
                refusal = self._refusal(scope, needed)
                if refusal is not None:
                    openai = scope["path"].startswith("/v1/")  # OpenAI's clients read their own shape
                    response = (openai_error_response if openai else error_response)(refusal)
                    if isinstance(refusal, Unauthenticated):
                        response.headers["WWW-Authenticate"] = 'Bearer realm="modelpod"'
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, needed: Role) -> ModelpodError | None:
        header = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        return refusal(self.keys.role_of(bearer_key(header)), needed)


def refusal(role: Role | None, needed: Role) -> ModelpodError | None:
    """Why a caller with `role` may not do what needs `needed`; None when it may."""
    if role is None:
        return Unauthenticated("this server needs an API key: send the header 'Authorization: Bearer KEY'")
    if role < needed:
        return Forbidden(f"this API key has the {role.name.lower()} role; this needs {needed.name.lower()}")
    return None


# -- gRPC ----------------------------------------------------------------------------------------------

if TYPE_CHECKING:  # generic only in the type stubs
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


def grpc_role(method: str) -> Role | None:
    """The role an RPC needs by its name alone; None when it is open. (Native calls are checked again
    by the method they carry.)"""
    if method in OPEN_RPCS:
        return None
    return Role.ADMIN if method in ADMIN_RPCS else Role.PREDICT


def native_role(model_method: str) -> Role:
    """The role a native call needs, by the model method it names."""
    return Role.PREDICT if model_method in PREDICT_METHODS else Role.ADMIN


class AuthInterceptor(Interceptor):
    """Refuses RPCs without `authorization: Bearer KEY` metadata whose role allows them."""

    def __init__(self, keys: KeyTable) -> None:
        self.keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        details = handler_call_details
        handler = await continuation(details)
        needed = grpc_role(details.method)
        if handler is None or needed is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        role = self.keys.role_of(bearer_key(metadata.get("authorization")))
        denied = refusal(role, needed)
        if denied is not None:
            return _refusing(handler, denied, metadata.get(logs.REQUEST_ID_HEADER))
        if details.method.startswith(_NATIVE_SERVICE) and role is not None:
            return _checking_native_method(handler, role, metadata.get(logs.REQUEST_ID_HEADER))
        return handler


def _refusing(handler: MethodHandler, error: ModelpodError, given_id: Any) -> MethodHandler:
    """A handler of the same kind that answers with `error`, without reading the request."""

    async def refuse(request: Any, context: Context) -> None:
        await abort(context, error, logs.new_request_id(given_id if isinstance(given_id, str) else None))

    return _same_kind(handler, refuse, request_deserializer=None)


def _checking_native_method(handler: MethodHandler, role: Role, given_id: Any) -> MethodHandler:
    """The native handler, refusing a call whose model method needs more than `role`."""
    behavior: Any = handler.unary_unary  # the stubs type behaviors as synchronous; these are coroutines
    if behavior is None:  # CallStream: one request in, a stream out
        return _checked_stream(handler, role, given_id)

    async def checked(request: Any, context: Context) -> Any:
        await _check_native(request, context, role, given_id)
        return await behavior(request, context)

    return _same_kind(handler, checked, handler.request_deserializer)


def _checked_stream(handler: MethodHandler, role: Role, given_id: Any) -> MethodHandler:
    stream: Any = handler.unary_stream

    async def checked(request: Any, context: Context) -> Any:
        await _check_native(request, context, role, given_id)
        async for reply in stream(request, context):
            yield reply

    return _same_kind(handler, checked, handler.request_deserializer)


async def _check_native(request: Any, context: Context, role: Role, given_id: Any) -> None:
    method = getattr(request, "method", None)
    if method is None:  # bytes that did not parse: the handler refuses them as INVALID_ARGUMENT
        return
    denied = refusal(role, native_role(method))
    if denied is not None:
        await abort(context, denied, logs.new_request_id(given_id if isinstance(given_id, str) else None))


def _same_kind(
    handler: MethodHandler, behavior: Callable[..., Any], request_deserializer: Any
) -> MethodHandler:
    """A method handler of `handler`'s kind (unary or streaming each way) around another behavior."""
    make: Callable[..., MethodHandler]
    if handler.unary_unary is not None:
        make = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream is not None:
        make = grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary is not None:
        make = grpc.stream_unary_rpc_method_handler
    else:
        make = grpc.stream_stream_rpc_method_handler
    return make(
        behavior, request_deserializer=request_deserializer, response_serializer=handler.response_serializer
    )


def grpc_interceptors(keys: KeyTable) -> Sequence[grpc.aio.ServerInterceptor[Any, Any]]:
    """The interceptors a gRPC server needs for these keys: none when there are none."""
    return (AuthInterceptor(keys),) if keys else ()
