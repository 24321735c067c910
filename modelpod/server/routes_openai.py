"""OpenAI's API beside the others, for any model whose `predict` fits (see modelpod.runtime.generation).

GET  /v1/models                 the models that answer a route below: `name` (default) and `name:version`
GET  /v1/models/{id}            one of them
POST /v1/embeddings             vectors for a string or a list of strings, batched
POST /v1/completions            text for a prompt, whole or streamed as server-sent events
POST /v1/chat/completions       the same for a chat's messages

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status of
modelpod's one error table. Requests are counted in the metrics under the protocol `openai`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelpod.errors import ModelError, ModelpodError, NotFound
from modelpod.protocol import openai_shapes
from modelpod.protocol.openai_requests import (
    GenerationRequest,
    chat_request,
    completion_request,
    embeddings_request,
    split_model_id,
)
from modelpod.server.endpoints import (
    ClientGone,
    Endpoint,
    error_headers,
    handled,
    json_body,
    json_response,
    options_of,
    service_of,
    unless_disconnected,
)
from modelpod.server.openai_stream import interleaved, open_stream
from modelpod.serving.openai import Finished, Prepared
from modelpod.serving.options import Options

logger = logging.getLogger("modelpod.http")
PROTOCOL = "openai"
_STARTED = int(time.time())


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", show_model, methods=["GET"]),
        Route("/v1/embeddings", create_embeddings, methods=["POST"]),
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
    ]


def openai_errors(endpoint: Endpoint) -> Endpoint:
    """Errors in OpenAI's shape; request ids, timing and hang-ups as on every route (`handled`)."""

    @functools.wraps(endpoint)
    async def answer(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ClientGone:
            raise
        except ModelpodError as error:
            return error_response(error)
        except Exception:
            failure = ModelError("internal server error")
            logger.exception("error id %s: %s %s failed", failure.error_id, request.method, request.url.path)
            return error_response(failure)

    return handled(answer)


def error_response(error: ModelpodError) -> Response:
    """OpenAI's error body, with the headers of every error (`Retry-After`, which OpenAI's clients
    wait for before they retry a 503 or 429; the error id of a model's failure)."""
    status, body = openai_shapes.error(error)
    return json_response(body, status, error_headers(error))


@openai_errors
async def list_models(request: Request) -> Response:
    entries = [
        openai_shapes.model_entry(model_id, _STARTED) for model_id in service_of(request).openai_models()
    ]
    return json_response(openai_shapes.model_list(entries))


@openai_errors
async def show_model(request: Request) -> Response:
    model_id = request.path_params["model_id"]
    if model_id not in service_of(request).openai_models():
        raise NotFound(f"no model {model_id!r} answers /v1 here; GET /v1/models lists those that do")
    return json_response(openai_shapes.model_entry(model_id, _STARTED))


@openai_errors
async def create_embeddings(request: Request) -> Response:
    asked = embeddings_request(await json_body(request))
    name, version = split_model_id(asked.model)
    work = service_of(request).embed(name, version, asked.texts, asked.dimensions, _options(request))
    vectors, tokens = await unless_disconnected(request, work)
    return json_response(openai_shapes.embeddings(asked.model, vectors, asked.encoding_format, tokens))


@openai_errors
async def create_completion(request: Request) -> Response:
    return await _generation(request, completion_request(await json_body(request)), chat=False)


@openai_errors
async def create_chat_completion(request: Request) -> Response:
    return await _generation(request, chat_request(await json_body(request)), chat=True)


async def _generation(request: Request, asked: GenerationRequest, chat: bool) -> Response:
    service = service_of(request)
    name, version = split_model_id(asked.model)
    options = _options(request)
    prepared = service.prepare_generation(
        name, version, asked.prompt, asked.messages, asked.sampling, options
    )
    completion = openai_shapes.Completion(asked.model, chat)
    if asked.stream:
        chunks = _chunks(request, asked, prepared, completion, options)
        return await open_stream(request, chunks)
    texts = [_text(request, asked, prepared, options, index) for index in range(asked.n)]
    choices = await unless_disconnected(request, asyncio.gather(*texts))
    made = sum(tokens for _, _, tokens in choices)
    body = completion.body([(text, reason) for text, reason, _ in choices], _usage(prepared, made))
    return json_response(body)


async def _text(
    request: Request, asked: GenerationRequest, prepared: Prepared, options: Options, index: int
) -> tuple[str, str, int]:
    """One choice, whole: its text, finish reason and token count."""
    name, version = split_model_id(asked.model)
    parts: list[str] = []
    pieces = service_of(request).generate(name, version, prepared, asked.stop, options, index)
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if isinstance(piece, Finished):
                return "".join(parts), piece.reason, piece.tokens
            parts.append(piece)
    raise ModelError("the generation ended without finishing")  # pragma: no cover - generate always finishes


async def _chunks(
    request: Request,
    asked: GenerationRequest,
    prepared: Prepared,
    completion: openai_shapes.Completion,
    options: Options,
) -> AsyncGenerator[dict[str, Any], None]:
    """The stream's chunks: the `n` choices generated at once, each chunk as it comes (tagged with its
    choice's index), then the usage chunk if asked for."""
    name, version = split_model_id(asked.model)
    service = service_of(request)
    choices = [
        service.generate(name, version, prepared, asked.stop, options, index) for index in range(asked.n)
    ]
    made = 0
    started: set[int] = set()
    pieces = interleaved(choices)
    async with contextlib.aclosing(pieces):
        async for index, piece in pieces:
            first = index not in started
            started.add(index)
            if isinstance(piece, Finished):
                made += piece.tokens
                yield completion.chunk(index, None, piece.reason, first)
            else:
                yield completion.chunk(index, piece, None, first)
    if asked.include_usage:
        yield completion.usage_chunk(_usage(prepared, made))


async def _only(
    choice: AsyncGenerator[str | Finished, None],
) -> AsyncGenerator[tuple[int, str | Finished], None]:
    """One choice's pieces shaped as `interleaved` gives them, without its task and queue."""
    async with contextlib.aclosing(choice):
        async for piece in choice:
            yield 0, piece


def _usage(prepared: Prepared, completion_tokens: int) -> dict[str, int] | None:
    return openai_shapes.usage(prepared.prompt_tokens, completion_tokens)


def _options(request: Request) -> Options:
    return options_of(request, protocol=PROTOCOL)
