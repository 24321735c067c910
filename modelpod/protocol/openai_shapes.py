"""OpenAI response bodies: model lists, embeddings, completions and their stream chunks, errors.

Plain dicts in the shapes the official `openai` client reads; the server encodes them as JSON, or as
server-sent events (`data: {...}` per chunk, then `data: [DONE]`).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelpod.errors import ModelError, ModelpodError, http_status

DONE_EVENT = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def model_entry(model_id: str, created: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "modelpod"}


def model_list(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": entries}


def embeddings(
    model: str, vectors: Sequence[Any], encoding_format: str, prompt_tokens: int | None
) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    body: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if prompt_tokens is not None:
        body["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return body


def _encoded(vector: Any, encoding_format: str) -> Any:
    """float: a list of numbers; base64: the little-endian float32 bytes, as OpenAI sends them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    if isinstance(vector, list):
        return vector  # the model's numbers, written by the JSON encoder as they are (as the native route)
    # One conversion in C rather than a float() per value; the JSON encoder writes the array itself.
    keep = isinstance(vector, np.ndarray) and vector.dtype.kind == "f"
    array = np.ascontiguousarray(vector) if keep else np.asarray(vector, dtype=np.float64)
    if array.ndim != 1:
        raise ModelError(f"an embedding must be a vector, not an array of shape {array.shape}")
    return array


def usage(prompt_tokens: int | None, completion_tokens: int) -> dict[str, int] | None:
    if prompt_tokens is None:
        return None
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class Completion:
    """The id, time and model every chunk and the final body of one generation share."""

    def __init__(self, model: str, chat: bool) -> None:
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.chat = chat
        self.object = "chat.completion" if chat else "text_completion"

    def body(self, choices: list[tuple[str, str]], usage_: dict[str, int] | None) -> dict[str, Any]:
        """The whole answer: (text, finish_reason) per choice."""
        shaped = [self._choice(index, text, reason) for index, (text, reason) in enumerate(choices)]
        body = self._head(self.object) | {"choices": shaped}
        if usage_ is not None:
            body["usage"] = usage_
        return body

    def chunk(
        self, index: int, text: str | None, finish_reason: str | None, first: bool = False
    ) -> dict[str, Any]:
        """One piece of a streamed choice (text None: only its finish_reason)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self._head(self._chunk_object()) | {"choices": [choice]}

    def usage_chunk(self, usage_: dict[str, int] | None) -> dict[str, Any]:
        """The last chunk when the client asked for `stream_options.include_usage`: no choices."""
        return self._head(self._chunk_object()) | {"choices": [], "usage": usage_}

    def _chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, index: int, text: str, reason: str) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": reason, "logprobs": None}


def error(failure: ModelpodError) -> tuple[int, dict[str, Any]]:
    """The status and `{"error": {message, type, param, code}}` body for an error of the one table."""
    status = http_status(failure)
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = _snake(type(failure).__name__)
    param = getattr(failure, "param", None)
    return status, {"error": {"message": str(failure), "type": kind, "param": param, "code": code}}


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))
