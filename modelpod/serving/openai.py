"""OpenAI's routes on the service: which models answer them, embeddings, and text generation.

Embeddings run as one request of several calls through the version's batcher, exactly as a V2
request of several rows does. A generation is the model's stream (`Streams.stream`, with its
cancellation and its recording), cut here at a stop sequence or at `max_tokens`.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpod.errors import ModelError
from modelpod.protocol.openai_requests import InvalidParameter, Sampling
from modelpod.runtime.generation import EMBEDDINGS, GENERATION, OpenAIFace, openai_face
from modelpod.runtime.model import Model
from modelpod.serving.execution import Execution
from modelpod.serving.options import Options
from modelpod.serving.repository import HostedModel
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.serving.streams import Ending, Streams

INLINE_COUNT_CHARACTERS = 2_000  # texts up to this length are counted on the event loop itself


@dataclass(frozen=True)
class Finished:
    """The last item of a generation: why it ended, and how many pieces (tokens) it made."""

    reason: str  # "stop" or "length"
    tokens: int


@dataclass(frozen=True)
class Prepared:
    """A generation request made ready for the model: its arguments and its prompt's token count."""

    arguments: dict[str, Any]
    prompt_tokens: int | None
    limit: int | None  # max_tokens
    model_limits: bool  # whether the model itself was told max_tokens
    version: str | None = None  # the version it was prepared for: its choices are generated there


class OpenAIServing:
    def __init__(self, execution: Execution, streams: Streams) -> None:
        self.execution = execution
        self.repository = execution.repository
        self.streams = streams

    def model_ids(self) -> list[str]:
        """Every model that answers a /v1 route: its bare name (the default), then `name:version`s."""
        ids = []
        for name in self.repository.names():
            if _face(self.repository.get(name)).task is not None:
                ids.append(name)
                ids.extend(f"{name}:{version}" for version in self.repository.versions(name))
        return ids

    async def embed(
        self, name: str, version: str | None, texts: Sequence[str], dimensions: int | None, options: Options
    ) -> tuple[list[Any], int | None]:
        """The vectors of `texts` (one batched request), and their token count where countable."""
        hosted, version, face = self._serving(name, version, EMBEDDINGS)
        extra = {}
        if dimensions is not None:
            _refuse_unsupported(face, {"dimensions": dimensions})
            extra = face.arguments({"dimensions": dimensions})
        if face.output is not None:  # a tensor model: the texts as one request of BYTES rows
            rows = np.array([text.encode("utf-8") for text in texts], dtype=object)
            work = self.execution.predict_many(hosted, version, [{face.text_argument: rows}], options)
            (answer,) = await self.execution.observed(hosted, version, options, work)
            return list(np.asarray(answer[face.output])), None
        calls = [{face.text_argument: text, **extra} for text in texts]
        work = self.execution.predict_many(hosted, version, calls, options)
        vectors = await self.execution.observed(hosted, version, options, work, calls)  # calls: for a capture
        for vector in vectors:
            if not isinstance(vector, Sequence) and not hasattr(vector, "__array__"):
                raise ModelError(f"model {name!r} returned {type(vector).__name__}, not a vector")
        return list(vectors), await _count(face.count_tokens, texts)  # after the batch: it may know them

    def prepare(
        self,
        name: str,
        version: str | None,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        sampling: Sampling,
    ) -> Prepared:
        """Check a generation request against the model, before anything runs or streams."""
        _, _, face = self._serving(name, version, GENERATION)
        given = sampling.given()
        _refuse_unsupported(face, given)
        arguments = face.arguments(given)
        if messages is not None and face.takes_messages:
            arguments["messages"] = messages
            text = face.chat_template(messages)
        elif not face.takes_prompt:
            raise InvalidParameter(f"model {name!r} takes a chat's messages, not a prompt", "prompt")
        else:
            text = (prompt or "") if messages is None else face.chat_template(messages)
            arguments["prompt"] = text
        tokens = face.count_tokens(text or "") if face.count_tokens else None
        return Prepared(arguments, tokens, sampling.max_tokens, "max_tokens" in given, version)

    async def generate(
        self,
        name: str,
        version: str | None,
        prepared: Prepared,
        stop: Sequence[str],
        options: Options,
        seed_offset: int = 0,
    ) -> AsyncGenerator[str | Finished, None]:
        """The text pieces as the model yields them, held back only while they may begin a stop
        sequence; then one `Finished`. Ending early (a stop, the limit) closes the model's stream."""
        arguments = dict(prepared.arguments)
        if seed_offset and "seed" in prepared.arguments:  # n choices with one seed: each its own text
            arguments["seed"] = arguments["seed"] + seed_offset
        ending = Ending()  # a stop sequence or the limit ends it: answered, not cancelled
        pieces = self.streams.stream(
            name, version or prepared.version, arguments, options=options, ending=ending
        )
        cutter = StopCutter(stop)
        tokens = 0
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if not isinstance(piece, str):
                    raise ModelError(f"model {name!r} yielded {type(piece).__name__}, not text")
                tokens += 1
                text, stopped = cutter.add(piece)
                if text:
                    yield text
                if stopped:
                    ending.enough = True
                    yield Finished("stop", tokens)
                    return
                if prepared.limit is not None and tokens >= prepared.limit and not prepared.model_limits:
                    ending.enough = True
                    break
        if rest := cutter.rest():
            yield rest
        limited = prepared.limit is not None and tokens >= prepared.limit
        yield Finished("length" if limited else "stop", tokens)

    def _serving(self, name: str, version: str | None, task: str) -> tuple[HostedModel, str, OpenAIFace]:
        hosted, resolved = self.execution.available(name, version)
        face = _face(hosted)
        if face.task != task:
            route = "/v1/embeddings" if task == EMBEDDINGS else "/v1/completions and /v1/chat/completions"
            raise InvalidParameter(
                f"model {name!r} does not answer {route}; GET /v1/models lists those that do", "model"
            )
        return hosted, resolved, face


class StopCutter:
    """Cuts a stream of text at the first stop sequence, holding back only what may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def add(self, piece: str) -> tuple[str, bool]:
        """The text that may be sent now, and whether a stop sequence was reached."""
        self.pending += piece
        found = [index for stop in self.stops if (index := self.pending.find(stop)) >= 0]
        if found:
            text, self.pending = self.pending[: min(found)], ""
            return text, True
        held = max((_overlap(self.pending, stop) for stop in self.stops), default=0)
        text, self.pending = (
            self.pending[: len(self.pending) - held],
            self.pending[len(self.pending) - held :],
        )
        return text, False

    def rest(self) -> str:
        text, self.pending = self.pending, ""
        return text


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of `text` that begins `stop`."""
    for length in range(min(len(text), len(stop) - 1), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0


async def _count(count: Callable[[str], int] | None, texts: Sequence[str]) -> int | None:
    """The texts' token count: here for short texts (a fast tokenizer, or the count the model kept
    from its batch, takes microseconds: less than a hand-off to a thread and back), on a thread for
    long ones."""
    if count is None:
        return None
    if sum(len(text) for text in texts) <= INLINE_COUNT_CHARACTERS:
        return sum(count(text) for text in texts)
    return await asyncio.to_thread(lambda: sum(count(text) for text in texts))


_FACES: weakref.WeakKeyDictionary[Model, OpenAIFace] = weakref.WeakKeyDictionary()


def _face(hosted: HostedModel) -> OpenAIFace:
    """The model's face, read from its signature once per model object, not on every request."""
    if isinstance(hosted.probe, ServedPipeline):
        return OpenAIFace()
    try:
        face = _FACES.get(hosted.probe)
        if face is None:
            face = _FACES[hosted.probe] = openai_face(hosted.probe)
    except TypeError:  # a model class that made itself unhashable (its own __eq__): read each time
        return openai_face(hosted.probe)
    return face


def _refuse_unsupported(face: OpenAIFace, given: Mapping[str, Any]) -> None:
    unsupported = face.unsupported(given)
    if unsupported:
        raise InvalidParameter(
            f"this model does not support {', '.join(unsupported)}; leave it out of the request",
            unsupported[0],
        )
