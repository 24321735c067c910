"""HTTP: the native routes for the model's own methods, the Open Inference Protocol for the rest.

    initialize/train/predict/log   POST /models/{name}[/versions/{v}]/{method}   msgpack both ways
    infer                          POST /v2/models/{name}[/versions/{v}]/infer    binary tensor data
    metadata                       GET  /v2/models/{name}[/versions/{v}]
    ready                          GET  /v2/models/{name}[/versions/{v}]/ready | /v2/health/ready
    live                           GET  /v2/health/live
    models                         GET  /models
    predict_stream                 POST /models/{name}[/versions/{v}]/predict     accept: msgpack frames

Keyword arguments travel as msgpack (`content-type` and `accept: application/msgpack`), so
numpy arrays keep their dtype and shape and bytes stay bytes. One `httpx` client (HTTP/1.1
keep-alive) per client family; `HTTPTransport` and `AsyncHTTPTransport` differ only in the
line that sends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Generator, Iterator
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson

from modelpod.client import _operations as op
from modelpod.client._errors import server_error
from modelpod.client._security import Security
from modelpod.client._stream import ItemReader
from modelpod.client._tracecontext import trace_headers
from modelpod.client._transport import AsyncTransport, Transport
from modelpod.errors import (
    ERROR_NAME_HEADER,
    Interrupted,
    ModelpodError,
    Timeout,
    Unavailable,
    from_error_name,
    from_http_status,
)
from modelpod.protocol import native, v2
from modelpod.protocol.stream import MSGPACK_STREAM

T = TypeVar("T")

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
_NATIVE_HEADERS = {"content-type": MSGPACK, "accept": MSGPACK}


def build_request(
    client: httpx.Client | httpx.AsyncClient, operation: op.Operation[Any], timeout: float | None
) -> httpx.Request:
    """The HTTP request for an operation (the client only supplies its base URL)."""
    method, path, headers, content = _encode(operation)
    headers.update(trace_headers())
    return client.build_request(
        method, path, headers=headers, content=content, timeout=httpx.Timeout(timeout)
    )


def build_stream_request(
    client: httpx.Client | httpx.AsyncClient, call: op.Call, timeout: float | None
) -> httpx.Request:
    """The request for a call's items as a stream of msgpack frames (`timeout`: per read)."""
    request = build_request(client, call, timeout)
    request.headers["accept"] = MSGPACK_STREAM
    return request


def is_item_stream(response: httpx.Response) -> bool:
    """Whether a response is a stream of items; otherwise it is an error or a plain answer."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    return not response.is_error and media_type == MSGPACK_STREAM


def decode_response(operation: op.Operation[Any], response: httpx.Response) -> Any:
    """The result an operation asked for; the server's error as its typed exception."""
    if isinstance(operation, op.Ready) and response.status_code == 503:
        return False  # "not ready" is an answer, not a failure
    if response.is_error:
        raise http_error(response)
    if isinstance(operation, op.Call):
        return _native_body(response)
    if isinstance(operation, op.Infer):
        length = v2.parse_header_length(response.headers.get(v2.HEADER_LENGTH))
        return v2.decode_http_response(response.content, length).outputs
    if isinstance(operation, op.Ready | op.Live):
        return True
    document = orjson.loads(response.content)
    if isinstance(operation, op.Models):
        return [
            op.ModelInfo(m["name"], tuple(v["version"] for v in m["versions"]), m["available"])
            for m in document
        ]
    return document


def http_error(response: httpx.Response) -> ModelpodError:
    """The typed error for an error response, with the server's message, error id and Retry-After."""
    message = _error_message(response)
    named = response.headers.get(ERROR_NAME_HEADER)
    error = from_error_name(named, message) or from_http_status(response.status_code, message)
    return server_error(error, response.headers.get("x-error-id"), response.headers.get("retry-after"), named)


@contextlib.contextmanager
def translated(address: str, timeout: float | None) -> Iterator[None]:
    """httpx's transport errors as modelpod's: Unavailable, Timeout, or Interrupted."""
    try:
        yield
    except httpx.ConnectTimeout as error:
        raise Unavailable(f"cannot reach the modelpod server at {address}: connecting timed out") from error
    except httpx.TimeoutException as error:
        raise Timeout(f"the modelpod server at {address} did not answer within {timeout} s") from error
    except httpx.ConnectError as error:
        raise Unavailable(f"cannot reach the modelpod server at {address}: {error}") from error
    except httpx.TransportError as error:
        raise Interrupted(f"the connection to {address} broke during the request: {error!r}") from error


class HTTPTransport(Transport):
    """Blocking HTTP over one `httpx.Client`."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        security = security or Security()
        self.address = address.rstrip("/")
        self.client = httpx.Client(
            base_url=self.address, headers=security.headers(), verify=security.http_verify()
        )

    def send(self, operation: op.Operation[T], timeout: float | None) -> T:
        request = build_request(self.client, operation, timeout)
        with translated(self.address, timeout):
            response = self.client.send(request)
        result: T = decode_response(operation, response)
        return result

    def stream(self, call: op.Call, timeout: float | None) -> Generator[Any, None, None]:
        request = build_stream_request(self.client, call, timeout)
        with translated(self.address, timeout):
            response = self.client.send(request, stream=True)
            try:
                if not is_item_stream(response):  # an error, or a model's own plain answer
                    response.read()
                    yield decode_response(call, response)
                    return
                reader = ItemReader(self.address)
                for chunk in response.iter_bytes():
                    yield from reader.feed(chunk)
                reader.finish()
            finally:
                response.close()  # early: the connection closes, and the server stops the model

    def close(self) -> None:
        self.client.close()


class AsyncHTTPTransport(AsyncTransport):
    """asyncio HTTP over one `httpx.AsyncClient`."""

    def __init__(self, address: str, security: Security | None = None) -> None:
        security = security or Security()
        self.address = address.rstrip("/")
        self.client = httpx.AsyncClient(
            base_url=self.address, headers=security.headers(), verify=security.http_verify()
        )

    async def send(self, operation: op.Operation[T], timeout: float | None) -> T:
        request = build_request(self.client, operation, timeout)
        with translated(self.address, timeout):
            response = await self.client.send(request)
        result: T = decode_response(operation, response)
        return result

    async def stream(self, call: op.Call, timeout: float | None) -> AsyncGenerator[Any, None]:
        request = build_stream_request(self.client, call, timeout)
        with translated(self.address, timeout):
            response = await self.client.send(request, stream=True)
            try:
                if not is_item_stream(response):
                    await response.aread()
                    yield decode_response(call, response)
                    return
                reader = ItemReader(self.address)
                async for chunk in response.aiter_bytes():
                    for item in reader.feed(chunk):
                        yield item
                reader.finish()
            finally:
                await response.aclose()

    async def close(self) -> None:
        await self.client.aclose()


def _encode(operation: op.Operation[Any]) -> tuple[str, str, dict[str, str], bytes | None]:
    """Method, path, headers and body of the request for an operation."""
    if isinstance(operation, op.Call):
        path = _path("/models", operation.model, operation.version, f"/{quote(operation.method)}")
        return "POST", path, _NATIVE_HEADERS, native.pack(dict(operation.arguments))
    if isinstance(operation, op.Infer):
        return _infer(operation)
    if isinstance(operation, op.Metadata):
        return "GET", _path("/v2/models", operation.model, operation.version, ""), {}, None
    if isinstance(operation, op.Ready) and operation.model is not None:
        return "GET", _path("/v2/models", operation.model, operation.version, "/ready"), {}, None
    if isinstance(operation, op.Ready):
        return "GET", "/v2/health/ready", {}, None
    if isinstance(operation, op.Live):
        return "GET", "/v2/health/live", {}, None
    if isinstance(operation, op.Models):
        return "GET", "/models", {}, None
    raise TypeError(f"HTTP cannot send {type(operation).__name__}")


def _infer(operation: op.Infer) -> tuple[str, str, dict[str, str], bytes]:
    """Inputs and outputs as binary tensor data: exact, and no JSON number formatting."""
    request = v2.InferRequest(
        inputs=dict(operation.inputs),
        id=operation.id,
        parameters={"binary_data_output": True},
        outputs=[v2.RequestedOutput(name, binary_data=True) for name in operation.outputs],
    )
    body, length = v2.encode_http_request(request, binary_data=True)
    headers = {"content-type": "application/json"}
    if length is not None:
        headers = {"content-type": "application/octet-stream", v2.HEADER_LENGTH: str(length)}
    return "POST", _path("/v2/models", operation.model, operation.version, "/infer"), headers, body


def _path(prefix: str, model: str, version: str | None, suffix: str) -> str:
    path = f"{prefix}/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{quote(version, safe='')}"
    return path + suffix


def _native_body(response: httpx.Response) -> Any:
    """A method's result: msgpack as asked for, or what a model's own `Response` or bytes sent."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if media_type in _MSGPACK_TYPES:
        return native.unpack(response.content)
    if media_type == "application/json":
        return orjson.loads(response.content)
    if media_type.startswith("text/"):
        return response.text
    return response.content


def _error_message(response: httpx.Response) -> str:
    """The server's message: `{"error": ...}` as modelpod (and Triton) send it, else the body."""
    try:
        document = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = response.text.strip()
    return text or f"HTTP {response.status_code} {response.reason_phrase}"
