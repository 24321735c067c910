"""OpenAI request bodies read and checked: `/v1/embeddings`, `/v1/completions`, `/v1/chat/completions`.

Each body becomes a plain dataclass, or an `InvalidParameter` that names the field at fault (OpenAI's
`param`). A field this server does not know, or knows but does not serve, is refused by name, never
ignored: a client that asks for `logprobs` must not believe it got them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import InvalidInput

MAX_CHOICES = 16  # `n`: choices a request may ask for
MAX_STOPS = 4  # OpenAI's own limit on stop sequences


class InvalidParameter(InvalidInput):
    """A 400 about one field of the body, which OpenAI's error shape names as `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    texts: list[str]
    encoding_format: str = "float"
    dimensions: int | None = None


@dataclass(frozen=True)
class Sampling:
    """What shapes a generation, as the client asked; None where it did not."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    def given(self) -> dict[str, Any]:
        """The parameters the client gave, by their OpenAI names."""
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str | None = None  # /v1/completions
    messages: list[dict[str, str]] | None = None  # /v1/chat/completions
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    include_usage: bool = False


_EMBEDDINGS_FIELDS = {"model", "input", "encoding_format", "dimensions", "user"}
_COMMON_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", "user",
}  # fmt: skip
_COMPLETION_FIELDS = _COMMON_FIELDS | {"prompt"}
_CHAT_FIELDS = _COMMON_FIELDS | {"messages", "max_completion_tokens"}
_ROLES = ("system", "developer", "user", "assistant", "tool")


def embeddings_request(body: Any) -> EmbeddingsRequest:
    fields = _object(body, _EMBEDDINGS_FIELDS)
    texts = _texts(fields.get("input"))
    encoding = fields.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise InvalidParameter(
            f"encoding_format must be 'float' or 'base64', not {encoding!r}", "encoding_format"
        )
    dimensions = _whole(fields, "dimensions", 1, 1 << 16)
    return EmbeddingsRequest(_model(fields), texts, encoding, dimensions)


def completion_request(body: Any) -> GenerationRequest:
    fields = _object(body, _COMPLETION_FIELDS)
    prompt = fields.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a one-prompt batch is a prompt
    if not isinstance(prompt, str):
        raise InvalidParameter("prompt must be a string (one prompt per request)", "prompt")
    return _generation(fields, fields.get("max_tokens"), prompt=prompt)


def chat_request(body: Any) -> GenerationRequest:
    fields = _object(body, _CHAT_FIELDS)
    limit = fields.get("max_completion_tokens", fields.get("max_tokens"))
    return _generation(fields, limit, messages=_messages(fields.get("messages")))


def split_model_id(model_id: str) -> tuple[str, str | None]:
    """`name:version` to its parts; a bare name means the default version."""
    name, _, version = model_id.partition(":")
    return name, version or None


def _generation(fields: Mapping[str, Any], limit: Any, **text: Any) -> GenerationRequest:
    options = fields.get("stream_options")
    stream = _flag(fields, "stream")
    if options is not None and (
        not stream or not isinstance(options, Mapping) or set(options) - {"include_usage"}
    ):
        raise InvalidParameter(
            "stream_options is allowed only with stream: true, and holds only include_usage", "stream_options"
        )
    include_usage = bool(options.get("include_usage")) if options else False
    checked = {"max_tokens": limit} if limit is not None else {}
    sampling = Sampling(
        max_tokens=_whole(checked, "max_tokens", 1, 1 << 20),
        temperature=_number(fields, "temperature", 0.0, 2.0),
        top_p=_number(fields, "top_p", 0.0, 1.0),
        seed=_whole(fields, "seed", -(1 << 63), (1 << 63) - 1),
    )
    n = _whole(fields, "n", 1, MAX_CHOICES) or 1
    return GenerationRequest(
        _model(fields), sampling=sampling, stop=_stops(fields.get("stop")), n=n,
        stream=stream, include_usage=include_usage, **text,
    )  # fmt: skip


def _object(body: Any, known: set[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidParameter("the body must be a JSON object")
    unknown = sorted(key for key in body if key not in known)
    if unknown:
        raise InvalidParameter(
            f"this server does not support {', '.join(map(repr, unknown))}; "
            f"send only {', '.join(sorted(known))}",
            unknown[0],
        )
    return body


def _model(fields: Mapping[str, Any]) -> str:
    model = fields.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model must name a served model, as name or name:version", "model")
    return model


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(item, list | int) for item in value):
        raise InvalidParameter("this server embeds text: send input as strings, not token ids", "input")
    raise InvalidParameter("input must be a string or a non-empty list of strings", "input")


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidParameter("messages must be a non-empty list of {role, content} objects", "messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, Mapping) or message.get("role") not in _ROLES:
            raise InvalidParameter(f"messages[{index}] needs a role, one of {', '.join(_ROLES)}", "messages")
        messages.append({"role": message["role"], "content": _content(message.get("content"), index)})
    return messages


def _content(content: Any, index: int) -> str:
    """A message's text: a string, or text parts joined (other parts are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    raise InvalidParameter(f"messages[{index}].content must be text (a string or text parts)", "messages")


def _stops(value: Any) -> tuple[str, ...]:
    stops: Sequence[Any] = [value] if isinstance(value, str) else value if value is not None else []
    if (
        not isinstance(stops, list | str)
        or len(stops) > MAX_STOPS
        or not all(isinstance(stop, str) and stop for stop in stops)
    ):
        raise InvalidParameter(
            f"stop must be a string or a list of up to {MAX_STOPS} non-empty strings", "stop"
        )
    return tuple(stops)


def _flag(fields: Mapping[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidParameter(f"{name} must be true or false, not {value!r}", name)
    return value


def _whole(fields: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidParameter(f"{name} must be a whole number from {low} to {high}, not {value!r}", name)
    return value


def _number(fields: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    value = fields.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidParameter(f"{name} must be a number from {low:g} to {high:g}, not {value!r}", name)
    return float(value)
