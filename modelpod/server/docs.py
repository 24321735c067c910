"""The OpenAPI document of the HTTP API (`/openapi.json`) and a page that renders it (`/docs`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from modelpod import __version__
from modelpod.server.endpoints import json_response

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
}


def _path_params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names]


def _operation(summary: str, params: tuple[str, ...] = (), body: str | None = None) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": _path_params(*params),
        "responses": {
            "200": {"description": "success", "content": {"application/json": {"schema": {}}}},
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
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    return operation


def openapi_document() -> dict[str, Any]:
    """Every route the server has, with its parameters and bodies."""
    m, v = ("name",), ("name", "version")
    method = {
        "name": "method",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": ["predict", "initialize", "train", "log"]},
    }
    call = _operation("call a model method (predict, initialize, train, log)", m, "Arguments")
    call["parameters"].append(method)
    call_v = _operation("call a method of one version", v, "Arguments")
    call_v["parameters"].append(method)
    paths = {
        "/models": {"get": _operation("list served models, versions and defaults")},
        "/models/{name}": {"get": _operation("one model's versions", m)},
        "/models/{name}/default": {
            "put": _operation("switch the default version without downtime", m, "Arguments")
        },
        "/models/{name}/{method}": {"post": call},
        "/models/{name}/versions/{version}/{method}": {"post": call_v},
        "/v2": {"get": _operation("server metadata")},
        "/v2/health/live": {"get": _operation("liveness")},
        "/v2/health/ready": {"get": _operation("readiness")},
        "/v2/models/{name}": {"get": _operation("model metadata", m)},
        "/v2/models/{name}/versions/{version}": {"get": _operation("model version metadata", v)},
        "/v2/models/{name}/ready": {"get": _operation("model readiness", m)},
        "/v2/models/{name}/versions/{version}/ready": {"get": _operation("model version readiness", v)},
        "/v2/models/{name}/infer": {
            "post": _operation("inference (Open Inference Protocol)", m, "InferRequest")
        },
        "/v2/models/{name}/versions/{version}/infer": {
            "post": _operation("inference on one version", v, "InferRequest")
        },
        "/v2/models/{name}/stats": {"get": _operation("the statistics extension for every version", m)},
        "/v2/models/{name}/versions/{version}/stats": {"get": _operation("statistics of one version", v)},
        "/v2/models/{name}/config": {"get": _operation("batching and tensors, in Triton's config shape", m)},
        "/metrics": {"get": _operation("Prometheus metrics")},
        "/v2/repository/index": {"post": _operation("every model version and its state")},
        "/v2/repository/models/{name}/load": {"post": _operation("load a model", m)},
        "/v2/repository/models/{name}/unload": {"post": _operation("unload a model", m)},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelpod", "version": __version__},
        "paths": paths,
        "components": {"schemas": _SCHEMAS},
    }


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>modelpod API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"><p>The API description is at <a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>if (window.SwaggerUIBundle) SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_PAGE)


def routes() -> list[BaseRoute]:
    return [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
    ]
