"""The Open Inference Protocol (KServe V2) over HTTP, with the binary data and repository extensions."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelpod.errors import Unavailable
from modelpod.protocol import v2
from modelpod.server.endpoints import (
    PartsResponse,
    check_parsed_size,
    decoded,
    handled,
    header,
    json_response,
    options_of,
    query_params_of,
    read_body,
    service_of,
    unless_disconnected,
)
from modelpod.serving.tensor_requests import large_tensors


def routes() -> list[BaseRoute]:
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(f"{model}/stats", model_statistics, methods=["GET"]),
        Route(f"{versioned}/stats", model_statistics, methods=["GET"]),
        Route(f"{model}/config", model_config, methods=["GET"]),
        Route(f"{versioned}/config", model_config, methods=["GET"]),
        Route(f"{model}/ready", model_ready, methods=["GET"]),
        Route(f"{versioned}/ready", model_ready, methods=["GET"]),
        Route(f"{model}/infer", infer, methods=["POST"]),
        Route(f"{versioned}/infer", infer, methods=["POST"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load_model, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload_model, methods=["POST"]),
    ]


@handled
async def server_metadata(request: Request) -> Response:
    return json_response(v2.server_metadata_json(*service_of(request).catalog.server_facts()))


@handled
async def live(request: Request) -> Response:
    return json_response({"live": True})


@handled
async def ready(request: Request) -> Response:
    if not service_of(request).ready():
        raise Unavailable("the server is shutting down", retry_after=1.0)
    return json_response({"ready": True})


@handled
async def model_metadata(request: Request) -> Response:
    name, version = request.path_params["name"], request.path_params.get("version")
    service = service_of(request)
    document = v2.model_metadata_json(*service.catalog.model_facts(name, version))
    load_error = service.catalog.load_error(name, version)
    if load_error is not None:  # beside the protocol's fields: why the model is not ready
        document["load_error"] = load_error
    return json_response(document)


@handled
async def model_statistics(request: Request) -> Response:
    params = request.path_params
    return json_response(service_of(request).catalog.model_statistics(params["name"], params.get("version")))


@handled
async def model_config(request: Request) -> Response:
    params = request.path_params
    return json_response(service_of(request).catalog.model_config(params["name"], params.get("version")))


@handled
async def model_ready(request: Request) -> Response:
    name, version = request.path_params["name"], request.path_params.get("version")
    service = service_of(request)
    service.repository.resolve(name, version)  # unknown model or version: 404
    is_ready = service.catalog.model_ready(name, version)
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


@handled
async def infer(request: Request) -> Response:
    name = request.path_params["name"]
    header_length = v2.parse_header_length(header(request, v2.HEADER_LENGTH))
    body = await read_body(request)
    service = service_of(request)
    budget = service.decode_budget(name, request.path_params.get("version"))  # checked before data is read
    json_part = "the JSON header of a binary request" if header_length is not None else "a JSON body"
    check_parsed_size(request, len(body) if header_length is None else header_length, json_part)
    request_body = await decoded(v2.decode_http_request, body, header_length, budget)
    work = service.infer(
        name,
        request.path_params.get("version"),
        request_body.inputs,
        query_params_of(request),
        options_of(request, request_body.parameters, "http_v2"),
    )
    version, outputs = await unless_disconnected(request, work)
    response = v2.InferResponse(
        model_name=name,
        model_version=version,
        id=request_body.id,
        outputs=v2.select_outputs(outputs, request_body.outputs),
    )
    if large_tensors(outputs):  # encoding many values belongs on a thread: the loop keeps serving
        parts, length = await asyncio.to_thread(v2.encode_http_response_parts, response, request_body)
    else:
        parts, length = v2.encode_http_response_parts(response, request_body)
    if length is None:
        return Response(b"".join(parts), media_type="application/json")
    return PartsResponse(parts, {v2.HEADER_LENGTH: str(length)}, "application/octet-stream")


@handled
async def repository_index(request: Request) -> Response:
    return json_response(service_of(request).catalog.repository_index())


@handled
async def load_model(request: Request) -> Response:
    await service_of(request).load_model(request.path_params["name"])
    return json_response({})


@handled
async def unload_model(request: Request) -> Response:
    await service_of(request).unload_model(request.path_params["name"])
    return json_response({})
