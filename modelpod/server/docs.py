"""The OpenAPI document of the HTTP API (`/openapi.json`) and a page that renders it (`/docs`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from modelpod._version import __version__
from modelpod.server.docs_openai import SCHEMAS as OPENAI_SCHEMAS
from modelpod.server.docs_openai import openai_paths
from modelpod.server.endpoints import json_response, service_of

_ERROR = {"$ref": "#/components/schemas/Error"}
_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {
            "type": "string",
            "enum": [
                "BOOL",
                "UINT8",
                "UINT16",
                "UINT32",
                "UINT64",
                "INT8",
                "INT16",
                "INT32",
                "INT64",
                "FP16",
                "FP32",
                "FP64",
                "BYTES",
            ],
        },
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Tensor": _TENSOR,
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "Arguments": {
        "type": "object",
        "description": "the method's keyword arguments",
        "additionalProperties": True,
    },
    "DefaultVersion": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": ["string", "integer"]}},
    },
    "TrafficPolicy": {
        "type": "object",
        "properties": {
            "split": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
            "sticky": {"type": "boolean"},
            "shadow": {
                "type": ["object", "null"],
                "required": ["version"],
                "properties": {"version": {"type": ["string", "integer"]}, "share": {"type": "number"}},
            },
            "rollout": {
                "type": ["object", "null"],
                "required": ["version"],
                "properties": {
                    "version": {"type": ["string", "integer"]},
                    "window_seconds": {"type": "number"},
                    "min_requests": {"type": "integer", "minimum": 1},
                    "max_error_rate": {"type": "number"},
                    "max_p99_seconds": {"type": "number"},
                    "min_agreement": {"type": "number"},
                    "steps": {"type": "array", "items": {"type": "number"}},
                    "promote": {"type": "boolean"},
                },
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["name", "ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
}


_INFER_ANSWERS = ("application/json", "application/octet-stream")  # JSON, then binary tensor data
_EVENTS = ("text/event-stream",)
_CALL_ANSWERS = ("application/json", "text/event-stream", "application/jsonl")  # streams: by Accept
_VERSION = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", "maxLength": 128}


def _path_params(*names: str) -> list[dict[str, Any]]:
    schemas = {"version": _VERSION}
    return [
        {"name": n, "in": "path", "required": True, "schema": schemas.get(n, {"type": "string"})}
        for n in names
    ]


def _name_the_models(paths: dict[str, Any], models: Sequence[str]) -> None:
    """Say which models a `{name}` can be: those this server serves (any other is a 404)."""
    for operations in paths.values():
        for operation in operations.values():
            for parameter in operation["parameters"]:
                if parameter["name"] == "name":
                    parameter["schema"] = {"type": "string", "enum": list(models)}


def _operation(
    summary: str,
    params: tuple[str, ...] = (),
    body: str | None = None,
    answers: tuple[str, ...] = ("application/json",),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": _path_params(*params),
        "responses": {
            "200": {"description": "success", "content": {kind: {"schema": {}} for kind in answers}},
            "4XX": {
                "description": "the request cannot be served",
                "content": {"application/json": {"schema": _ERROR}},
            },
            "5XX": {
                "description": "the model or server failed",
                "content": {"application/json": {"schema": _ERROR}},
            },
        },
    }
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body}"}
        operation["requestBody"] = {
            "required": body != "Arguments",  # no body: no arguments
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def _readiness(operation: dict[str, Any]) -> dict[str, Any]:
    """A readiness check answers 503 with the same body as its 200, not an error."""
    operation["responses"]["503"] = {
        "description": "not ready",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Readiness"}}},
    }
    return operation


def openapi_document(models: Sequence[str] = ()) -> dict[str, Any]:
    """Every route the server has, with its parameters and bodies; `models`: the names it serves."""
    m, v = ("name",), ("name", "version")
    method = {
        "name": "method",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["predict", "initialize", "train", "training", "log"]},
    }
    call = _operation(
        "call a model method (predict, initialize, train, training, log); predict streams its items "
        "as server-sent events or JSON lines when the Accept header asks for them",
        m,
        "Arguments",
        _CALL_ANSWERS,
    )
    call["parameters"].append(method)
    call_v = _operation("call a method of one version", v, "Arguments", _CALL_ANSWERS)
    call_v["parameters"].append(method)
    paths = {
        "/models": {"get": _operation("list served models, versions and defaults")},
        "/models/{name}": {"get": _operation("one model's versions", m)},
        "/models/{name}/default": {
            "put": _operation("switch the default version without downtime", m, "DefaultVersion")
        },
        "/models/{name}/traffic": {
            "get": _operation("the traffic policy between versions, and its shadow's results", m),
            "put": _operation(
                "set the traffic policy: a split, sticky or not, and a shadow", m, "TrafficPolicy"
            ),
        },
        "/models/{name}/{method}": {"post": call},
        "/models/{name}/versions/{version}/{method}": {"post": call_v},
        "/models/{name}/log": {"get": _operation("what training reported", m)},
        "/models/{name}/versions/{version}/log": {"get": _operation("what a version's training reported", v)},
        "/models/{name}/train": {"get": _operation("the latest training job and its progress", m)},
        "/models/{name}/versions/{version}/train": {"get": _operation("a version's latest training job", v)},
        "/models/{name}/train/events": {
            "get": _operation("training progress as server-sent events", m, answers=_EVENTS)
        },
        "/models/{name}/versions/{version}/train/events": {
            "get": _operation("a version's training progress as server-sent events", v, answers=_EVENTS)
        },
        "/v2": {"get": _operation("server metadata")},
        "/v2/health/live": {"get": _operation("liveness")},
        "/v2/health/ready": {"get": _operation("readiness")},
        "/v2/models/{name}": {"get": _operation("model metadata", m)},
        "/v2/models/{name}/versions/{version}": {"get": _operation("model version metadata", v)},
        "/v2/models/{name}/ready": {"get": _readiness(_operation("model readiness", m))},
        "/v2/models/{name}/versions/{version}/ready": {
            "get": _readiness(_operation("model version readiness", v))
        },
        "/v2/models/{name}/infer": {
            "post": _operation("inference (Open Inference Protocol)", m, "InferRequest", _INFER_ANSWERS)
        },
        "/v2/models/{name}/versions/{version}/infer": {
            "post": _operation("inference on one version", v, "InferRequest", _INFER_ANSWERS)
        },
        "/v2/models/{name}/stats": {"get": _operation("the statistics extension for every version", m)},
        "/v2/models/{name}/versions/{version}/stats": {"get": _operation("statistics of one version", v)},
        "/v2/models/{name}/config": {"get": _operation("batching and tensors, in Triton's config shape", m)},
        "/v2/models/{name}/versions/{version}/config": {"get": _operation("one version's config", v)},
        "/metrics": {"get": _operation("Prometheus metrics", answers=("text/plain",))},
        "/ui/activity": {"get": _operation("the last minutes' requests, latency, batches and errors")},
        "/v2/repository/index": {"post": _operation("every model version and its state")},
        "/v2/repository/models/{name}/load": {"post": _operation("load a model", m)},
        "/v2/repository/models/{name}/unload": {"post": _operation("unload a model", m)},
        **openai_paths(),
    }
    if models:
        _name_the_models(paths, models)
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelpod", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {**_SCHEMAS, **OPENAI_SCHEMAS},
            # Only when the server has API keys (MODELPOD_API_KEYS); health and docs stay open.
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }


# Swagger UI's own files come from the swagger-ui-py package and are served here: the page works on
# a machine that cannot reach a CDN, the usual case for a model server behind a firewall.
SWAGGER_UI_FILES = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript"}
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>modelpod API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="ui"><p>The API description is at <a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>if (window.SwaggerUIBundle) SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


def swagger_ui_folder() -> Path:
    import swagger_ui

    return Path(swagger_ui.__file__).parent / "static"


async def openapi(request: Request) -> Response:
    return json_response(openapi_document(service_of(request).repository.names()))


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


def _asset_route(name: str, media_type: str) -> Route:
    path = swagger_ui_folder() / name
    if not path.is_file():  # checked at start, not at the first visit to /docs
        raise FileNotFoundError(
            f"{path} is missing: reinstall swagger-ui-py (pip install 'modelpod[server]')"
        )

    async def asset(request: Request) -> Response:
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})

    return Route(f"/docs/{name}", asset, methods=["GET"])


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        *(_asset_route(name, media_type) for name, media_type in SWAGGER_UI_FILES.items()),
    ]
