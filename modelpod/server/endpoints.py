"""What every HTTP endpoint shares: the service, bounded bodies, JSON responses, and errors."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route

from modelpod.errors import (
    ERROR_NAME_HEADER,
    BodyTimeout,
    InvalidInput,
    ModelError,
    ModelpodError,
    PayloadTooLarge,
    Unavailable,
    http_status,
)
from modelpod.observe import logs
from modelpod.observe import timing as timings
from modelpod.observe.events import RequestSpan, SpanStarter
from modelpod.protocol import jsoncodec
from modelpod.protocol.body import BodyBuffer
from modelpod.server import disconnects
from modelpod.serving.options import Options, request_options
from modelpod.serving.service import InferenceService

logger = logging.getLogger("modelpod.http")

Endpoint = Callable[[Request], Awaitable[Response]]
T = TypeVar("T")


def header(request: Request, name: str, default: str | None = None) -> str | None:
    """The request's header `name` (any case). Starlette's `request.headers.get` scans the raw
    list and raises and catches a KeyError for each header that is absent, as most of those an
    inference request is asked about are: the headers are read into a dict once per request."""
    scope = request.scope
    headers: dict[str, str] | None = scope.get(_HEADERS)
    if headers is None:
        # reversed: the first of repeated headers wins, as with Starlette's `get`
        headers = scope[_HEADERS] = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])
        }
    return headers.get(name.lower(), default)


_HEADERS = "modelpod.headers"


@dataclass(frozen=True)
class EdgeContext:
    """What the HTTP endpoints read from their app on every request: the service and the body
    limits, as plain attributes (Starlette's `app.state` answers each read through `__getattr__`,
    half a microsecond, several times a request)."""

    service: InferenceService
    max_body_bytes: int | None = None
    body_timeout: float | None = None
    max_parsed_bytes: int | None = None


def context_of(request: Request) -> EdgeContext:
    context: EdgeContext = request.scope["app"].context
    return context


def service_of(request: Request) -> InferenceService:
    return context_of(request).service


async def read_body(request: Request) -> bytearray:
    """The request body, refused with 413 as soon as it grows past the server's limit, and with
    408 (and the connection closed) when it does not arrive within the server's body timeout.

    A bytearray that grows with the bytes that arrive, whatever length was declared: the arrays
    decoded from it are views of it, writable, with no further copy.
    """
    context = context_of(request)
    limit = context.max_body_bytes
    declared = header(request, "content-length", "") or ""
    size = int(declared) if declared.isdigit() else None
    if limit is not None and size is not None and size > limit:
        raise PayloadTooLarge(f"the request body is {size} bytes; this server accepts at most {limit}")
    body = BodyBuffer()
    timeout = context.body_timeout
    try:
        if request.scope.get(BODY_RECEIVED):  # it came with the head: nothing to wait for, no timer
            await _collect(request, body, limit)
        else:
            async with asyncio.timeout(timeout):
                await _collect(request, body, limit)
    except TimeoutError:
        expected = f"of {size} " if size is not None else ""
        raise BodyTimeout(
            f"the request body did not arrive within {timeout:g} s ({body.size} bytes {expected}came); "
            "the server's limit is MODELPOD_BODY_TIMEOUT"
        ) from None
    return body.finish()


BODY_RECEIVED = "modelpod.body_received"  # in a request's scope: its whole body has arrived


async def _collect(request: Request, body: BodyBuffer, limit: int | None) -> None:
    """The body's chunks into `body`, read from the server as they come (Starlette's `stream`
    is an async generator around the same reads)."""
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # hung up midway: not the server's error, nobody to answer
            raise ClientGone("the client disconnected before its body arrived")
        chunk = message.get("body", b"")
        if limit is not None and body.size + len(chunk) > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes, the most this server accepts")
        body.add(chunk)
        if not message.get("more_body", False):
            return


class PartsResponse(Response):
    """A body sent as the pieces it was built from, without joining them into one copy first; a
    small one is joined (a copy of a few kilobytes costs less than a message and a write per piece).

    Its head is written here as the raw list Starlette sends: `Response.__init__` and a header
    view set afterwards cost more than the rest of a small binary answer's encoding."""

    def __init__(self, parts: list[bytes | memoryview], headers: Mapping[str, str], media_type: str) -> None:
        self.status_code = 200
        self.background = None
        self.parts = parts
        self.size = sum(part.nbytes if isinstance(part, memoryview) else len(part) for part in parts)
        self.raw_headers = raw_head(headers, media_type.encode("latin-1"), self.size)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.size <= JOINED_BODY:
            await send({"type": "http.response.body", "body": b"".join(self.parts), "more_body": False})
            return
        for part in self.parts:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def raw_head(headers: Mapping[str, str] | None, media_type: bytes, size: int) -> list[tuple[bytes, bytes]]:
    """An answer's headers as the raw list an ASGI server sends, with its type and length."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else []
    raw.append((b"content-type", media_type))
    raw.append((b"content-length", str(size).encode("latin-1")))
    return raw


JOINED_BODY = 64 * 1024  # bytes: a PartsResponse up to this size is sent as one piece


LARGE_BODY = 1 << 20  # bytes: decoding more than this goes to a thread, off the event loop


def check_parsed_size(request: Request, size: int, what: str = "a JSON or msgpack body") -> None:
    """Refuse to parse more than the server's limit as JSON or msgpack. Those parsers hold the
    interpreter lock for their whole run, on a thread or not: a body of hundreds of megabytes would
    stall every other request (health checks too) for seconds. Tensors that big travel as binary."""
    limit = context_of(request).max_parsed_bytes
    if limit is not None and size > limit:
        raise PayloadTooLarge(
            f"{what} of {size} bytes is over the {limit} this server parses (MODELPOD_MAX_PARSED_SIZE); "
            "send large tensors with the binary tensor extension, or as application/octet-stream"
        )


async def json_body(request: Request) -> Any:
    """The request body as JSON: read, its size checked against what the server parses, decoded
    (on a thread when large). Every route that takes a JSON document reads it here."""
    body = await read_body(request)
    check_parsed_size(request, len(body))
    return await decoded(jsoncodec.loads, body)


async def decoded(decode: Callable[..., T], body: bytearray, *args: Any) -> T:
    """`decode(body, *args)`, on a thread when the body is large, so that the event loop keeps
    reading other requests meanwhile. (A decoder that holds the GIL throughout, as orjson does,
    still delays the loop by its whole run: that is bounded by what the body may cost, not here.)"""
    if len(body) > LARGE_BODY:
        return await asyncio.to_thread(decode, body, *args)
    return decode(body, *args)


PRIORITY_HEADER = "x-priority"
ANSWERED_BY_MODEL, ANSWERED_BY_VERSION = "x-modelpod-model", "x-modelpod-version"
TRAFFIC_KEY_HEADER = "x-modelpod-traffic-key"  # hashed to keep a caller on one version (sticky split)
TIMEOUT_HEADER = "request-timeout"  # seconds
_REQUEST_ID = logs.REQUEST_ID_HEADER.encode()
_ANSWERED_BY_MODEL, _ANSWERED_BY_VERSION = ANSWERED_BY_MODEL.encode(), ANSWERED_BY_VERSION.encode()


def options_of(
    request: Request, parameters: Mapping[str, Any] | None = None, protocol: str = "http"
) -> Options:
    """Priority and timeout from the headers, or from Open Inference Protocol parameters
    (`priority`, and `timeout` in microseconds, as Triton reads them)."""
    params = parameters or {}
    priority: Any = header(request, PRIORITY_HEADER)
    if priority is None:
        priority = params.get("priority")
    timeout: Any = header(request, TIMEOUT_HEADER)
    if timeout is None and params.get("timeout") is not None:
        timeout = _microseconds(params["timeout"])
    return request_options(priority, timeout, protocol, header(request, TRAFFIC_KEY_HEADER))


def query_params_of(request: Request) -> dict[str, str]:
    """The query string's parameters (parsed only when there is one: most requests have none)."""
    return dict(request.query_params) if request.scope.get("query_string") else {}


def _microseconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"parameter 'timeout' must be a number of microseconds, not {value!r}")
    return value / 1e6


def json_response(value: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return JsonResponse(jsoncodec.dumps(value), status, headers)


class JsonResponse(Response):
    """A JSON answer, its head written as the raw list Starlette sends: `Response.__init__` looks
    its media type and headers over again for every answer (microseconds of every request)."""

    media_type = "application/json"

    def __init__(self, body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = raw_head(headers, b"application/json", len(body))


class ClientGone(ModelpodError):
    """The client hung up before its answer was ready; its work was cancelled."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client hangs up first (watched once it has waited a
    while: see `disconnects`). The body must be read already."""
    handler = asyncio.current_task()
    assert handler is not None
    waiting = disconnects.watchlist()
    entry = waiting.add(request, handler)
    try:
        return await work
    except asyncio.CancelledError:
        if not entry.gone:
            raise
        handler.uncancel()
        logger.info(
            "client hung up before %s %s was answered; cancelled it", request.method, request.url.path
        )
        raise ClientGone("the client disconnected") from None
    finally:
        waiting.remove(entry)


# Probes, scrapes and the status page's polling: a span each would bury the requests in traces.
UNTRACED = frozenset({"live", "ready", "metrics", "status_page", "activity"})


def handled(endpoint: Endpoint) -> Endpoint:
    """Every endpoint answers errors itself: typed errors by the table, anything else a logged 500."""
    traced = endpoint.__name__ not in UNTRACED

    @functools.wraps(endpoint)
    async def wrapper(request: Request) -> Response:
        rid = logs.new_request_id(header(request, logs.REQUEST_ID_HEADER))
        logs.request_id.set(rid)  # each request runs in a task of its own: this is its context
        timing = timings.begin()
        service = service_of(request)
        tracer = service.tracer if traced else None
        span = None if tracer is None else _start_span(tracer, request)
        response = await _answer(endpoint, request)
        # Appended to the raw list: `response.headers[...] =` builds a header view and scans it.
        headers = response.raw_headers
        headers.append((_REQUEST_ID, rid.encode("latin-1")))
        if timing.version:  # which model and version answered: a traffic split may have chosen it
            headers.append((_ANSWERED_BY_MODEL, timing.model.encode("latin-1")))
            headers.append((_ANSWERED_BY_VERSION, timing.version.encode("latin-1")))
        timing.log_if_slow(service.slow_ms)
        if span is not None:
            _finish_span(span, response)
        return response

    return wrapper


def _start_span(tracer: SpanStarter, request: Request) -> RequestSpan:
    """The request's span, continuing the trace of its `traceparent` header, named by its method
    and route (`POST /v2/models/{name}/infer`), with OpenTelemetry's names for both and the path."""
    scope = request.scope
    method, path = scope["method"], scope["path"]
    route = _route_of(request, method, path)
    attributes = {"http.request.method": method, "http.route": route, "url.path": path}
    header(request, "traceparent")  # the headers read into their dict, if not yet
    return tracer.start(scope[_HEADERS], f"{method} {route}", attributes)


_ROUTES: dict[tuple[int, str, str], str] = {}  # (id of the router, method, path) -> its route's template


def _route_of(request: Request, method: str, path: str) -> str:
    """The template of the route that matched (Starlette keeps only its endpoint in the scope),
    found once per path: the routes are tried in turn, each a regular expression."""
    router = request.app.router
    key = (id(router), method, path)  # a router defines ==, not a hash; it lives as long as its app
    found = _ROUTES.get(key)
    if found is None:
        found = path
        for route in router.routes:
            if isinstance(route, Route) and route.matches(request.scope)[0] is Match.FULL:
                found = route.path
                break
        if len(_ROUTES) >= 4096:  # many paths (many models): start over rather than grow
            _ROUTES.clear()
        _ROUTES[key] = found
    return found


def _finish_span(span: RequestSpan, response: Response) -> None:
    """End the request's span now, or once its streamed body is sent (the stream is the request)."""
    status = str(response.status_code)
    # The raw list, not `response.headers.get`: that builds a header view and raises and catches
    # a KeyError when the header is absent, as it is from every answer but a model's failure.
    error_id = next((v.decode("latin-1") for k, v in response.raw_headers if k == b"x-error-id"), "")
    if not isinstance(response, StreamingResponse):
        span.finish(status, error_id)
        return
    body = response.body_iterator

    async def finishing() -> AsyncIterator[Any]:
        try:
            async for chunk in body:
                yield chunk
        finally:
            span.finish(status, error_id)

    response.body_iterator = finishing()


async def _answer(endpoint: Endpoint, request: Request) -> Response:
    try:
        return await endpoint(request)
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; the status is for logs and proxies
    except ModelpodError as error:
        return error_response(error)
    except Exception:
        failure = ModelError("internal server error")
        logger.exception("error id %s: %s %s failed", failure.error_id, request.method, request.url.path)
        return error_response(failure)


def error_response(error: ModelpodError) -> Response:
    return json_response({"error": str(error)}, http_status(error), error_headers(error))


def error_headers(error: ModelpodError) -> dict[str, str]:
    """What every error answer carries besides its body, whatever the body's shape."""
    headers = {ERROR_NAME_HEADER: type(error).__name__}
    if isinstance(error, Unavailable) and error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if isinstance(error, ModelError):
        headers["X-Error-Id"] = error.error_id
    if isinstance(error, BodyTimeout):  # the rest of the body may still come: nothing else can follow
        headers["Connection"] = "close"
    return headers


async def route_not_found(request: Request, error: Exception) -> Response:
    status = getattr(error, "status_code", 404)
    message = "method not allowed" if status == 405 else "no such route"
    path = request.url.path
    hint = (
        f" (without the trailing slash: {path.rstrip('/')})" if len(path) > 1 and path.endswith("/") else ""
    )
    return JSONResponse({"error": f"{message}: {request.method} {path}{hint}"}, status_code=status)
