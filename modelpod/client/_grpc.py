"""gRPC: the native `ModelService.Call` for the model's own methods, the V2 service for the rest.

    initialize/train/predict/log   modelpod.native.ModelService/Call (msgpack keyword arguments)
    infer                          inference.GRPCInferenceService/ModelInfer (raw contents)
    metadata                       .../ModelMetadata
    ready                          .../ModelReady | .../ServerReady
    live                           .../ServerLive
    models                         .../RepositoryIndex
    predict_stream                 modelpod.native.ModelService/CallStream (one msgpack item a reply)

One channel per client family, with no message size limit of its own (the server has one).
`GRPCTransport` and `AsyncGRPCTransport` differ only in the line that sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message

from modelpod.client import _operations as op
from modelpod.client._errors import server_error
from modelpod.client._security import Security
from modelpod.client._tracecontext import with_trace
from modelpod.client._transport import AsyncTransport, Transport
from modelpod.errors import (
    ERROR_NAME_HEADER,
    ModelpodError,
    Timeout,
    Unavailable,
    from_error_name,
    from_grpc_status_name,
)
from modelpod.protocol import native, v2
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import native_pb2

T = TypeVar("T")

OPTIONS = (("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1))
_CALL = "/modelpod.native.ModelService/Call"
_CALL_STREAM = "/modelpod.native.ModelService/CallStream"
_V2 = "/inference.GRPCInferenceService/"


@dataclass(frozen=True)
class Rpc:
    """One unary call: the method's path, the request message and the reply's type."""

    path: str
    request: Message
    reply: type[Message]


def encode(operation: op.Operation[Any]) -> Rpc:
    """The RPC for an operation."""
    if isinstance(operation, op.Call):
        request = native_pb2.CallRequest(
            model=operation.model,
            version=operation.version or "",
            method=operation.method,
            payload=native.pack(dict(operation.arguments)),
        )
        return Rpc(_CALL, request, native_pb2.CallResponse)
    if isinstance(operation, op.Infer):
        infer = v2.InferRequest(
            inputs=dict(operation.inputs),
            id=operation.id,
            outputs=[v2.RequestedOutput(name) for name in operation.outputs],
        )
        message = v2.encode_grpc_request(infer, operation.model, operation.version or "")
        return Rpc(_V2 + "ModelInfer", message, pb.ModelInferResponse)
    if isinstance(operation, op.Metadata):
        metadata = pb.ModelMetadataRequest(name=operation.model, version=operation.version or "")
        return Rpc(_V2 + "ModelMetadata", metadata, pb.ModelMetadataResponse)
    if isinstance(operation, op.Ready) and operation.model is not None:
        ready = pb.ModelReadyRequest(name=operation.model, version=operation.version or "")
        return Rpc(_V2 + "ModelReady", ready, pb.ModelReadyResponse)
    if isinstance(operation, op.Ready):
        return Rpc(_V2 + "ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse)
    if isinstance(operation, op.Live):
        return Rpc(_V2 + "ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse)
    if isinstance(operation, op.Models):
        return Rpc(_V2 + "RepositoryIndex", pb.RepositoryIndexRequest(), pb.RepositoryIndexResponse)
    raise TypeError(f"gRPC cannot send {type(operation).__name__}")


def decode(operation: op.Operation[Any], reply: Any) -> Any:
    """The result an operation asked for, in the same form the HTTP transport gives."""
    if isinstance(operation, op.Call):
        return native.unpack(reply.payload)
    if isinstance(operation, op.Infer):
        return v2.decode_grpc_response(reply).outputs
    if isinstance(operation, op.Metadata):
        return {
            "name": reply.name,
            "versions": list(reply.versions),
            "platform": reply.platform,
            "inputs": [_tensor(spec) for spec in reply.inputs],
            "outputs": [_tensor(spec) for spec in reply.outputs],
        }
    if isinstance(operation, op.Ready):
        return bool(reply.ready)
    if isinstance(operation, op.Live):
        return bool(reply.live)
    return _models(reply.models)


def grpc_error(error: grpc.RpcError, address: str, timeout: float | None) -> ModelpodError:
    """The typed error for a failed RPC: the server's status by the one table, or the channel's own.

    A modelpod server names its errors in the trailing metadata: an UNAVAILABLE without that name
    came from the channel (a connection that broke mid-call), and may have run.
    """
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded":
        return Timeout(f"the modelpod server at {address} did not answer within {timeout} s")
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith("failed to connect"):
        return Unavailable(f"cannot reach the modelpod server at {address}: {details}")
    trailing = _metadata(error.trailing_metadata())
    named = trailing.get(ERROR_NAME_HEADER)
    typed = from_error_name(named, details) or from_grpc_status_name(code.name, details)
    return server_error(typed, trailing.get("error-id"), trailing.get("retry-after"), named)


@contextlib.contextmanager
def translated(address: str, timeout: float | None) -> Iterator[None]:
    """grpc's errors as modelpod's."""
    try:
        yield
    except grpc.RpcError as error:
        raise grpc_error(error, address, timeout) from error


class GRPCTransport(Transport):
    """Blocking gRPC over one `grpc.Channel`."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        security = security or Security()
        self.address = address
        self.metadata = security.metadata() or None
        credentials = security.grpc_credentials()
        self.channel = (
            grpc.insecure_channel(address, options=OPTIONS)
            if credentials is None
            else grpc.secure_channel(address, credentials, options=OPTIONS)
        )

    def send(self, operation: op.Operation[T], timeout: float | None) -> T:
        rpc = encode(operation)
        method = self.channel.unary_unary(rpc.path, _serialize, rpc.reply.FromString)
        with translated(self.address, timeout):
            reply = method(rpc.request, timeout=timeout, metadata=with_trace(self.metadata))
        result: T = decode(operation, reply)
        return result

    def stream(self, call: op.Call, timeout: float | None) -> Generator[Any, None, None]:
        # No deadline: a stream may run long. `timeout` bounds the wait for each item instead.
        method = self.channel.unary_stream(_CALL_STREAM, _serialize, native_pb2.CallResponse.FromString)
        replies = method(encode(call).request, metadata=with_trace(self.metadata))
        watchdog = Watchdog(replies.cancel, timeout)
        try:
            for reply in replies:
                watchdog.kick()
                yield native.unpack(reply.payload)
        except grpc.RpcError as error:
            if watchdog.fired:
                raise _no_item(self.address, timeout) from None
            raise grpc_error(error, self.address, timeout) from error
        finally:
            watchdog.stop()
            replies.cancel()  # type: ignore[no-untyped-call]  # early: the server stops the model

    def close(self) -> None:
        self.channel.close()


class AsyncGRPCTransport(AsyncTransport):
    """asyncio gRPC over one `grpc.aio.Channel`, opened on first use inside the running loop."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        security = security or Security()
        self.address = address
        self.metadata = security.metadata() or None
        self.credentials = security.grpc_credentials()
        self.channel: grpc.aio.Channel | None = None

    def _open(self) -> grpc.aio.Channel:
        if self.channel is None:
            self.channel = (
                grpc.aio.insecure_channel(self.address, options=OPTIONS)
                if self.credentials is None
                else grpc.aio.secure_channel(self.address, self.credentials, options=OPTIONS)
            )
        return self.channel

    async def send(self, operation: op.Operation[T], timeout: float | None) -> T:
        rpc = encode(operation)
        method = self._open().unary_unary(rpc.path, _serialize, rpc.reply.FromString)
        with translated(self.address, timeout):
            reply = await method(rpc.request, timeout=timeout, metadata=with_trace(self.metadata))
        result: T = decode(operation, reply)
        return result

    async def stream(self, call: op.Call, timeout: float | None) -> AsyncGenerator[Any, None]:
        method = self._open().unary_stream(_CALL_STREAM, _serialize, native_pb2.CallResponse.FromString)
        replies = method(encode(call).request, metadata=with_trace(self.metadata))
        items: AsyncIterator[native_pb2.CallResponse] = aiter(replies)
        try:
            with translated(self.address, timeout):
                while (reply := await _within(anext(items, None), timeout, self.address)) is not None:
                    yield native.unpack(reply.payload)
        finally:
            replies.cancel()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close(None)


class Watchdog:
    """Cancels a blocking streaming call when no item comes within `timeout` seconds of the last."""

    def __init__(self, cancel: Callable[[], Any], timeout: float | None) -> None:
        self.fired = False
        self._last = time.monotonic()
        self._stopped = threading.Event()
        if timeout is not None:
            threading.Thread(target=self._watch, args=(cancel, timeout), daemon=True).start()

    def kick(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self, cancel: Callable[[], Any], timeout: float) -> None:
        while not self._stopped.wait(max(self._last + timeout - time.monotonic(), 0.0)):
            if time.monotonic() - self._last >= timeout:
                self.fired = True
                cancel()
                return


async def _within(read: Awaitable[T], timeout: float | None, address: str) -> T:
    try:
        return await asyncio.wait_for(read, timeout)
    except TimeoutError:
        raise _no_item(address, timeout) from None


def _no_item(address: str, timeout: float | None) -> Timeout:
    return Timeout(f"no item from the modelpod server at {address} within {timeout} s")


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


def _tensor(spec: pb.ModelMetadataResponse.TensorMetadata) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _models(index: Sequence[pb.RepositoryIndexResponse.ModelIndex]) -> list[op.ModelInfo]:
    """The repository index (one entry per version) grouped by model, in the server's order."""
    versions: dict[str, list[str]] = {}
    unloaded: set[str] = set()
    for entry in index:
        versions.setdefault(entry.name, []).append(entry.version)
        if entry.reason == "unloaded":
            unloaded.add(entry.name)
    return [op.ModelInfo(name, tuple(found), name not in unloaded) for name, found in versions.items()]


def _metadata(pairs: Iterable[Any] | None) -> dict[str, str]:
    """Trailing metadata (pairs of key and str or bytes value) as a dict."""
    return {key: value if isinstance(value, str) else value.decode() for key, value in pairs or ()}
