"""Quotas per caller at both edges (see `modelpod.serving.quotas`): an ASGI middleware and a gRPC
interceptor that count each request that runs a model against its caller's quotas, from before it
runs until its answer (or stream) ends, and refuse one over them: 429 with `Retry-After` (OpenAI's
error shape on /v1), RESOURCE_EXHAUSTED with `retry-after` metadata over gRPC.

The caller is the name of its API key; on a server without keys, its traffic key
(`x-modelpod-traffic-key`); else "anonymous". Refusals are counted by that name (never a key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from starlette.types import ASGIApp, Receive, Scope, Send

from modelpod.errors import RateLimited
from modelpod.observe import logs
from modelpod.observe.events import QuotaRefused, Recorder
from modelpod.server.auth import KeyTable, bearer_key
from modelpod.server.endpoints import TRAFFIC_KEY_HEADER, error_response
from modelpod.server.grpc import abort
from modelpod.server.routes_openai import error_response as openai_error_response
from modelpod.serving.quotas import Quotas

TRAFFIC_KEY, ANONYMOUS = "traffic-key", "anonymous"  # the metric's names of callers without an API key
_V2, _NATIVE = "/inference.GRPCInferenceService/", "/modelpod.native.ModelService/"
COUNTED_RPCS = frozenset(
    {_V2 + "ModelInfer", _V2 + "ModelStreamInfer", _NATIVE + "Call", _NATIVE + "CallStream"}
)


def caller_of(keys: KeyTable, authorization: Any, traffic_key: Any) -> tuple[str, str]:
    """Who a request counts against, and the name its refusals are counted under."""
    if keys:
        name = keys.name_of(bearer_key(authorization))
        if name is not None:
            return name, name
    if traffic_key:
        key = traffic_key.decode("latin-1") if isinstance(traffic_key, bytes) else str(traffic_key)
        return key, TRAFFIC_KEY
    return ANONYMOUS, ANONYMOUS


def counted_path(method: str, path: str) -> tuple[bool, str | None]:
    """Whether an HTTP request runs a model, and which (None: not known from the path, as on /v1)."""
    parts = path.strip("/").split("/")
    if method != "POST":
        return False, None
    if parts[0] == "models" and len(parts) >= 3 and parts[-1] == "predict":
        return True, parts[1]
    if (
        parts[:2] == ["v2", "models"]
        and len(parts) >= 4
        and parts[-1] in ("infer", "generate", "generate_stream")
    ):
        return True, parts[2]
    return parts[0] == "v1", None


class QuotaMiddleware:
    """Counts and bounds the HTTP requests that run a model, per caller."""

    def __init__(self, app: ASGIApp, quotas: Quotas, keys: KeyTable, recorder: Recorder) -> None:
        self.app = app
        self.quotas = quotas
        self.keys = keys
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        counted, model = (
            (False, None) if scope["type"] != "http" else counted_path(scope["method"], scope["path"])
        )
        if not counted:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        caller, label = caller_of(
            self.keys, headers.get(b"authorization"), headers.get(TRAFFIC_KEY_HEADER.encode())
        )
        try:
            release = self.quotas.admit(caller, model)
        except RateLimited as refusal:
            self.recorder.on_quota(QuotaRefused(label, refusal.model, refusal.limit))
            openai = scope["path"].startswith("/v1/")
            response = (openai_error_response if openai else error_response)(refusal)
            response.headers["Retry-After"] = str(max(1, round(refusal.retry_after or 1)))
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            release()


if TYPE_CHECKING:  # generic only in the type stubs
    MethodHandler = grpc.RpcMethodHandler[Any, Any]
    Context = grpc.aio.ServicerContext[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.aio.ServerInterceptor


class QuotaInterceptor(Interceptor):
    """Counts and bounds the RPCs that run a model, per caller."""

    def __init__(self, quotas: Quotas, keys: KeyTable, recorder: Recorder) -> None:
        self.quotas = quotas
        self.keys = keys
        self.recorder = recorder

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method not in COUNTED_RPCS:
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        caller = caller_of(self.keys, metadata.get("authorization"), metadata.get(TRAFFIC_KEY_HEADER))
        rid = metadata.get(logs.REQUEST_ID_HEADER)
        return self._counting(handler, caller, rid if isinstance(rid, str) else None)

    async def _admit(self, caller: tuple[str, str], request: Any, context: Context, rid: str | None) -> Any:
        if getattr(request, "method", "predict") != "predict":  # native: initialize, train... are not counted
            return _nothing
        model = None if request is None else _model_of(request)
        try:
            return self.quotas.admit(caller[0], model)
        except RateLimited as refusal:
            self.recorder.on_quota(QuotaRefused(caller[1], refusal.model, refusal.limit))
            await abort(context, refusal, logs.new_request_id(rid))

    def _counting(self, handler: MethodHandler, caller: tuple[str, str], rid: str | None) -> MethodHandler:
        """The handler, counted from its start to its last reply."""
        serialize, deserialize = handler.response_serializer, handler.request_deserializer
        unary: Any = handler.unary_unary  # the stubs type behaviors as synchronous; these are coroutines
        if unary is not None:

            async def call(request: Any, context: Context) -> Any:
                release = await self._admit(caller, request, context, rid)
                try:
                    return await unary(request, context)
                finally:
                    release()

            return grpc.unary_unary_rpc_method_handler(call, deserialize, serialize)
        streaming: Any = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            first = None if handler.stream_stream is not None else request  # a stream: its overall quota
            release = await self._admit(caller, first, context, rid)
            try:
                async for reply in streaming(request, context):
                    yield reply
            finally:
                release()

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make(stream, deserialize, serialize)


def _model_of(request: Any) -> str | None:
    """The model a V2 (`model_name`) or native (`model`) request is for."""
    return getattr(request, "model_name", None) or getattr(request, "model", None) or None


def _nothing() -> None:
    return None
