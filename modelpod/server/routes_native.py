"""Native routes: the model's own methods, with the body as keyword arguments.

GET  /models                                          every model, its versions and default
GET  /models/{name}                                   one model
PUT  /models/{name}/default        {"version": v}     switch the default version, no downtime
POST /models/{name}[/versions/{version}]/{method}     predict | initialize | train | log
POST /models/{name}[/versions/{version}]/predict      with Accept: text/event-stream, application/jsonl or
                                                      application/vnd.modelpod.msgpack-stream: its items
                                                      as a stream (see modelpod.protocol.stream)
POST /models/{name}[/versions/{version}]/train        start a training job: 202 and the job, 409 if one runs
GET  /models/{name}[/versions/{version}]/train        the latest training job and its progress
GET  /models/{name}[/versions/{version}]/train/events that job's progress as server-sent events
GET  /models/{name}[/versions/{version}]/log          what training reported
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelpod import types
from modelpod.errors import InvalidInput, ModelError, NotFound
from modelpod.protocol import jsoncodec, native
from modelpod.protocol.stream import negotiate
from modelpod.server.endpoints import (
    check_parsed_size,
    decoded,
    handled,
    header,
    json_body,
    json_response,
    options_of,
    query_params_of,
    read_body,
    service_of,
    unless_disconnected,
)
from modelpod.server.streaming import Event, event_stream, stream_response

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")


def routes() -> list[BaseRoute]:
    return [
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{name}", show_model, methods=["GET"]),
        Route("/models/{name}/default", set_default, methods=["PUT"]),
        Route("/models/{name}/traffic", show_traffic, methods=["GET"]),
        Route("/models/{name}/traffic", set_traffic, methods=["PUT"]),
        Route("/models/{name}/log", call_method, methods=["GET"]),
        Route("/models/{name}/versions/{version}/log", call_method, methods=["GET"]),
        Route("/models/{name}/train", training_job, methods=["GET"]),
        Route("/models/{name}/versions/{version}/train", training_job, methods=["GET"]),
        Route("/models/{name}/train/events", training_events, methods=["GET"]),
        Route("/models/{name}/versions/{version}/train/events", training_events, methods=["GET"]),
        Route("/models/{name}/{method}", call_method, methods=["POST"]),
        Route("/models/{name}/versions/{version}/{method}", call_method, methods=["POST"]),
    ]


@handled
async def list_models(request: Request) -> Response:
    return json_response(service_of(request).catalog.models())


@handled
async def show_model(request: Request) -> Response:
    return json_response(service_of(request).catalog.describe(request.path_params["name"]))


@handled
async def set_default(request: Request) -> Response:
    body = await json_body(request)
    version = body.get("version") if isinstance(body, dict) else None
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise InvalidInput('the body must be {"version": "<version>"}')
    return json_response(await service_of(request).set_default(request.path_params["name"], str(version)))


@handled
async def show_traffic(request: Request) -> Response:
    return json_response(service_of(request).traffic_policy(request.path_params["name"]))


@handled
async def set_traffic(request: Request) -> Response:
    """Replace the model's traffic policy: `{"split": {"1": 90, "2": 10}, "sticky": true}`."""
    body = await json_body(request)
    return json_response(await service_of(request).set_traffic(request.path_params["name"], body))


@handled
async def call_method(request: Request) -> Response:
    params = request.path_params
    method = params.get("method", "log")
    arguments = await _arguments(request)
    stream_format = negotiate(header(request, "accept", "") or "") if method == "predict" else None
    if stream_format is not None:
        items = service_of(request).stream(
            params["name"],
            params.get("version"),
            arguments,
            query_params=query_params_of(request),
            options=options_of(request),
        )
        return await stream_response(request, items, stream_format)
    work = service_of(request).call(
        params["name"],
        params.get("version"),
        method,
        arguments,
        query_params=query_params_of(request),
        options=options_of(request),
    )
    result = await unless_disconnected(request, work)
    return _result(result, request, status=202 if method == "train" else 200)


@handled
async def training_job(request: Request) -> Response:
    return json_response(await _job(request))


@handled
async def training_events(request: Request) -> Response:
    """`progress` events as the job reports, then one `end` event with the job's final document."""
    await _job(request)  # a version never trained is a 404 before any event
    return event_stream(_progress(request))


TRAINING_POLL = 0.2  # seconds between looks at a job's log


async def _progress(request: Request) -> AsyncGenerator[Event, None]:
    service = service_of(request)
    name, version = request.path_params["name"], request.path_params.get("version")
    hosted, version = service.repository.resolve(name, version)
    sent = 0
    while True:
        entries, job = await asyncio.to_thread(service.training_progress, hosted.name, version, sent)
        for entry in entries:
            yield Event("progress", entry)
        sent += len(entries)
        if job is None or job["state"] != "running":
            yield Event("end", job)
            return
        await asyncio.sleep(TRAINING_POLL)


async def _job(request: Request) -> dict[str, Any]:
    """The latest training job of the version the path names; NotFound if it was never trained."""
    name, version = request.path_params["name"], request.path_params.get("version")
    job = await service_of(request).call(name, version, "training", {})
    if job is None:
        where = f"/models/{name}" + (f"/versions/{version}" if version else "")
        raise NotFound(f"model {name!r} has no training job; start one with POST {where}/train")
    return dict(job)


async def _arguments(request: Request) -> Any:
    """The keyword arguments: JSON (default), msgpack, or raw bytes as `binary_data`."""
    body = await read_body(request)
    if not body:
        return {}
    content_type = (header(request, "content-type") or "application/json").split(";")[0].strip()
    if content_type == "application/octet-stream":
        return {"binary_data": body}
    check_parsed_size(request, len(body))
    return await decoded(native.unpack if content_type in _MSGPACK_TYPES else jsoncodec.loads, body)


def _result(result: Any, request: Request, status: int = 200) -> Response:
    if isinstance(result, types.Response):
        return _model_response(result)
    if isinstance(result, bytes | bytearray):
        return Response(bytes(result), media_type="application/octet-stream")
    accept = header(request, "accept") or ""
    if any(t in accept for t in _MSGPACK_TYPES):
        return Response(native.pack(result), status, media_type=MSGPACK)
    try:
        return json_response(result, status)
    except TypeError as error:
        raise ModelError(f"the model's result cannot be sent as JSON: {error}") from None


def _model_response(response: types.Response) -> Response:
    """A model's own response goes out as it is: its status, headers and body."""
    if isinstance(response.body, bytes | str):
        media_type = response.media_type or (
            "text/plain" if isinstance(response.body, str) else "application/octet-stream"
        )
        return Response(response.body, response.status, response.headers, media_type=media_type)
    try:
        return json_response(response.body, response.status, response.headers)
    except TypeError as error:
        raise ModelError(f"the model's response body cannot be sent as JSON: {error}") from None
