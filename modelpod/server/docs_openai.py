"""The OpenAPI description of OpenAI's routes (`/v1`), merged into `/openapi.json` by `docs`."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_SAMPLING = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer"},
    "temperature": {"type": "number"},
    "top_p": {"type": "number"},
    "seed": {"type": "integer"},
    "stop": {"type": ["string", "array"]},
    "n": {"type": "integer"},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object"},
}
SCHEMAS: dict[str, Any] = {
    "OpenAIError": _ERROR,
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": {"type": "string"},
            "input": {"type": ["string", "array"]},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {"type": "integer"},
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**_SAMPLING, "prompt": {"type": "string"}},
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_SAMPLING,
            "messages": {"type": "array"},
            "max_completion_tokens": {"type": "integer"},
        },
    },
}


def _operation(summary: str, body: str | None = None, streams: bool = False) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}}
    answers = ("application/json", "text/event-stream") if streams else ("application/json",)
    operation: dict[str, Any] = {
        "summary": summary,
        "tags": ["OpenAI"],
        "parameters": [],
        "responses": {
            "200": {"description": "success", "content": {kind: {"schema": {}} for kind in answers}},
            "4XX": {"description": "the request cannot be served", "content": error},
            "5XX": {"description": "the model or server failed", "content": error},
        },
    }
    if body is not None:
        schema = {"$ref": f"#/components/schemas/{body}"}
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return operation


def openai_paths() -> dict[str, Any]:
    model_id = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}
    one_model = _operation("one model that answers /v1, by id (name or name:version)")
    one_model["parameters"].append(model_id)
    return {
        "/v1/models": {"get": _operation("the models that answer /v1: name (default) and name:version ids")},
        "/v1/models/{model_id}": {"get": one_model},
        "/v1/embeddings": {"post": _operation("embeddings (OpenAI)", "EmbeddingsRequest")},
        "/v1/completions": {"post": _operation("text completion (OpenAI)", "CompletionRequest", True)},
        "/v1/chat/completions": {
            "post": _operation("chat completion (OpenAI)", "ChatCompletionRequest", True)
        },
    }
