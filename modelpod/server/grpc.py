"""The gRPC edge (grpcio asyncio): the Open Inference Protocol and modelpod's native service."""

# ruff: noqa: N802  (the RPC names are the protocol's, CamelCase)

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any, TypeVar

import grpc

from modelpod import types
from modelpod.errors import (
    ERROR_NAME_HEADER,
    InvalidInput,
    ModelError,
    ModelpodError,
    Unavailable,
    from_http_status,
    grpc_status_name,
)
from modelpod.observe import logs
from modelpod.observe import timing as timings
from modelpod.protocol import native, v2
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc
from modelpod.protocol.cost import DecodeBudget
from modelpod.server.edge_requests import EdgeRequests
from modelpod.server.grpc_tracing import call_span, finish, in_own_span, traced_stream
from modelpod.serving.options import Options, request_options
from modelpod.serving.service import InferenceService
from modelpod.serving.tensor_requests import large_tensors

logger = logging.getLogger("modelpod.grpc")

FINAL = "triton_final_response"  # on every streamed response: whether it is its request's last
EMPTY_FINAL = "triton_enable_empty_final_response"  # a request's ask for an empty last response

LARGE_REQUEST = 1 << 20  # bytes: a request larger than this is decoded off the event loop
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]
# A unary call's metadata, read once by `guarded` (each call runs in a task of its own, so this is
# the call's); `options_of` reads it from here rather than asking grpc to build it again.
_metadata: ContextVar[dict[str, Any] | None] = ContextVar("modelpod_grpc_metadata", default=None)


def guarded(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Typed errors become their gRPC status by the one table; anything else INTERNAL with an id."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        metadata: dict[str, Any] = dict(context.invocation_metadata() or ())  # traceparent too
        kept = _metadata.set(metadata)
        given = metadata.get(logs.REQUEST_ID_HEADER)
        rid = logs.new_request_id(given if isinstance(given, str) else None)
        logs.request_id.set(rid)  # each call runs in a task of its own: this is its context
        timing = timings.begin()
        span = call_span(self.service, metadata, handler.__name__)
        edge: EdgeRequests = self.edge
        edge.calls += 1  # not alone meanwhile: another request waits to be batched with it
        try:
            answer = await handler(self, request, context)
        except Exception as error:
            failure = typed(error, handler.__name__)
            finish(span, grpc_status_name(failure), getattr(failure, "error_id", ""))
            await abort(context, failure, rid)
            raise AssertionError("abort() always raises") from None  # pragma: no cover
        finally:
            edge.calls -= 1
            _metadata.reset(kept)
            timing.log_if_slow(self.service.slow_ms)
        finish(span, "OK")
        context.set_trailing_metadata(((logs.REQUEST_ID_HEADER, rid),))
        return answer

    return wrapper


def typed(error: Exception, where: str) -> ModelpodError:
    """A typed error as it is; anything else an internal error whose details stay in the log."""
    if isinstance(error, ModelpodError):
        return error
    failure = ModelError("internal server error")
    logger.error("error id %s: gRPC %s failed", failure.error_id, where, exc_info=error)
    return failure


async def abort(context: grpc.aio.ServicerContext[Any, Any], error: ModelpodError, rid: str) -> None:
    metadata: list[tuple[str, str]] = [(logs.REQUEST_ID_HEADER, rid)]
    if not error.from_model:
        metadata.append((ERROR_NAME_HEADER, type(error).__name__))
    if isinstance(error, Unavailable) and error.retry_after is not None:
        metadata.append(("retry-after", str(max(1, round(error.retry_after)))))
    if isinstance(error, ModelError):
        metadata.append(("error-id", error.error_id))
    await context.abort(getattr(grpc.StatusCode, grpc_status_name(error)), str(error), tuple(metadata))


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """`inference.GRPCInferenceService`, as NVIDIA's tritonclient.grpc speaks it."""

    def __init__(self, service: InferenceService, edge: EdgeRequests) -> None:
        self.service = service
        self.edge = edge  # the server's count of requests at its edges (`guarded` adds each call)

    @guarded
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @guarded
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.service.ready())

    @guarded
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        version = request.version or None
        self.service.repository.resolve(request.name, version)
        return pb.ModelReadyResponse(ready=self.service.catalog.model_ready(request.name, version))

    @guarded
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**v2.server_metadata_json(*self.service.catalog.server_facts()))

    @guarded
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        return v2.model_metadata_grpc(
            *self.service.catalog.model_facts(request.name, request.version or None)
        )

    @guarded
    async def ModelInfer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    @traced_stream
    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request gets its responses on the stream, in turn: one per item of a model that
        streams (Triton's decoupled mode), one otherwise; each carries `triton_final_response`,
        false while more are to come. An error answers that request alone, and ends its responses."""
        async for request in requests:
            model = getattr(request, "model_name", "")  # "" for a message that did not parse
            answers = in_own_span(self.service, model, self._stream_answers(request, context), _failed)
            async with contextlib.aclosing(answers):
                async for answer in answers:
                    yield answer

    async def _stream_answers(
        self, request: pb.ModelInferRequest, context: Any
    ) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        try:
            if self.service.streams(request.model_name, request.model_version or None):
                decoupled = self._decoupled(request, context)
                async with contextlib.aclosing(decoupled):
                    async for response in decoupled:
                        yield pb.ModelStreamInferResponse(infer_response=response)
            else:
                response = await self._infer(request, context)
                response.parameters[FINAL].bool_param = True
                yield pb.ModelStreamInferResponse(infer_response=response)
        except Exception as error:
            # As Triton does: the error names the request, so a client can tell which failed.
            failed = pb.ModelInferResponse(  # (a request that did not parse has no fields)
                model_name=getattr(request, "model_name", ""),
                model_version=getattr(request, "model_version", ""),
                id=getattr(request, "id", ""),
            )
            message = str(typed(error, "ModelStreamInfer"))
            yield pb.ModelStreamInferResponse(error_message=message, infer_response=failed)

    async def _decoupled(
        self, request: pb.ModelInferRequest, context: Any
    ) -> AsyncGenerator[pb.ModelInferResponse, None]:
        """A streaming model's responses, one per item as it comes; then, when the request asks for
        it, an empty response that only says it was the last (the model cannot know which item is)."""
        decoded = await _decoded(request, self._budget(request))
        name = request.model_name
        options = options_of(context, decoded.parameters, "grpc_v2")
        items = self.service.infer_stream(name, request.model_version or None, decoded.inputs, options)
        version = request.model_version
        async with contextlib.aclosing(items):
            async for version, outputs in items:
                response = v2.InferResponse(
                    model_name=name,
                    model_version=version,
                    id=decoded.id,
                    outputs=v2.select_outputs(outputs, decoded.outputs),
                    parameters={FINAL: False},
                )
                yield v2.encode_grpc_response(response)
        if decoded.parameters.get(EMPTY_FINAL) is True:
            last = v2.InferResponse(name, {}, version, decoded.id, parameters={FINAL: True})
            yield v2.encode_grpc_response(last)

    @guarded
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        config = self.service.catalog.model_config(request.name, request.version or None)
        message = pb.ModelConfig(
            name=config["name"],
            platform=config["platform"],
            backend=config["backend"],
            max_batch_size=config["max_batch_size"],
        )
        for field, tensors in (("input", config["input"]), ("output", config["output"])):
            for tensor in tensors:
                getattr(message, field).add(
                    name=tensor["name"], data_type=pb.DataType.Value(tensor["data_type"]), dims=tensor["dims"]
                )
        return pb.ModelConfigResponse(config=message)

    @guarded
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return pb.ModelStatisticsResponse(
            **self.service.catalog.model_statistics(request.name, request.version or None)
        )

    def _budget(self, request: pb.ModelInferRequest) -> DecodeBudget:
        return self.service.decode_budget(request.model_name, request.model_version or None)

    async def _infer(self, request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
        decoded = await _decoded(request, self._budget(request))
        name = request.model_name
        options = options_of(context, decoded.parameters, "grpc_v2")
        version, outputs = await self.service.infer(
            name, request.model_version or None, decoded.inputs, options=options
        )
        response = v2.InferResponse(
            model_name=name,
            model_version=version,
            id=decoded.id,
            outputs=v2.select_outputs(outputs, decoded.outputs),
        )
        if large_tensors(outputs):  # encoding many values belongs on a thread: the loop keeps serving
            return await asyncio.to_thread(v2.encode_grpc_response, response)
        return v2.encode_grpc_response(response)

    @guarded
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        index = self.service.catalog.repository_index()
        if request.ready:
            index = [entry for entry in index if entry["state"] == "READY"]
        models = [pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index]
        return pb.RepositoryIndexResponse(models=models)

    @guarded
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        await self.service.load_model(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @guarded
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self.service.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()


class NativeServicer(native_pb2_grpc.ModelServiceServicer):
    """`modelpod.native.ModelService`: the model's own methods, arguments and results in msgpack."""

    def __init__(self, service: InferenceService, edge: EdgeRequests) -> None:
        self.service = service
        self.edge = edge  # the server's count of requests at its edges (`guarded` adds each call)

    @guarded
    async def Call(self, request: native_pb2.CallRequest, context: Any) -> native_pb2.CallResponse:
        arguments = await _unpacked(request.payload)
        result = await self.service.call(
            request.model,
            request.version or None,
            request.method,
            arguments,
            query_params=dict(request.query_params),
            options=options_of(context, protocol="grpc"),
        )
        if isinstance(result, types.Response):
            result = _unwrap(result)
        return native_pb2.CallResponse(payload=native.pack(result))

    @traced_stream
    async def CallStream(
        self, request: native_pb2.CallRequest, context: Any
    ) -> AsyncIterator[native_pb2.CallResponse]:
        """`predict`'s items, one response each, as the model yields them (one for a model that does
        not yield). An error, before the first item or midway, ends the call with its status."""
        given = dict(context.invocation_metadata() or ()).get(logs.REQUEST_ID_HEADER)
        rid = logs.new_request_id(given if isinstance(given, str) else None)
        logs.request_id.set(rid)
        try:
            if request.method != "predict":
                raise InvalidInput(f"only predict streams, not {request.method!r}: use Call")
            items = self.service.stream(
                request.model,
                request.version or None,
                await _unpacked(request.payload),
                query_params=dict(request.query_params),
                options=options_of(context, protocol="grpc"),
            )
            async with contextlib.aclosing(items):
                async for item in items:
                    yield native_pb2.CallResponse(payload=_packed(item))
        except Exception as error:
            await abort(context, typed(error, "CallStream"), rid)
        context.set_trailing_metadata(((logs.REQUEST_ID_HEADER, rid),))


def _failed(answer: pb.ModelStreamInferResponse) -> bool:
    return bool(answer.error_message)


async def _decoded(request: pb.ModelInferRequest, budget: DecodeBudget) -> v2.InferRequest:
    """A request's tensors, refused past the `budget` before their data is read; a big request is
    decoded on a thread, so the event loop keeps serving."""
    if request.ByteSize() > LARGE_REQUEST:
        return await asyncio.to_thread(v2.decode_grpc_request, request, budget)
    return v2.decode_grpc_request(request, budget)


async def _unpacked(payload: bytes) -> Any:
    """A native call's msgpack arguments; a big payload is unpacked on a thread, off the event loop."""
    if not payload:
        return {}
    if len(payload) > LARGE_REQUEST:
        return await asyncio.to_thread(native.unpack, payload)
    return native.unpack(payload)


def options_of(context: Any, parameters: Mapping[str, Any] | None = None, protocol: str = "grpc") -> Options:
    """Priority from `x-priority` metadata or the `priority` parameter; the timeout is the call's
    deadline; `x-modelpod-traffic-key` metadata keeps a caller on one version of a sticky split."""
    kept = _metadata.get()
    metadata = kept if kept is not None else dict(context.invocation_metadata() or ())
    priority = metadata.get("x-priority", (parameters or {}).get("priority"))
    key = metadata.get("x-modelpod-traffic-key")
    return request_options(
        priority, context.time_remaining(), protocol, key if isinstance(key, str) else None
    )


def _packed(item: Any) -> bytes:
    try:
        return native.pack(item)
    except TypeError as error:
        failure = ModelError(f"the model's item cannot be sent: {error}")
        logger.error("error id %s: %s", failure.error_id, failure.message)
        raise failure from None


def _unwrap(response: types.Response) -> Any:
    """A model's own response over gRPC: its body, or its error status as a gRPC error."""
    if response.status < 400:
        return response.body
    body = response.body
    message = body.get("error", body) if isinstance(body, dict) else body
    error = from_http_status(response.status, str(message))
    error.from_model = True  # the model's answer, not the server's refusal: not named as the server's
    raise error
