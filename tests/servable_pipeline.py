"""Steps and pipelines the pipeline server tests serve: each shows one thing a served pipeline must do."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, ClassVar

from modelpod import Model, Response, ServedPipeline
from modelpod.serving.served_pipeline import Step


class Third(Model):
    """Returns a Fraction: a value JSON cannot carry, so the next step shows nothing re-encoded it."""

    name = "third"

    def predict(self, text: str) -> dict[str, Any]:
        return {"value": Fraction(len(text), 3), "text": text}


class Describe(Model):
    """Says what it was given and of which type; answers a plain string (the next step's one input)."""

    name = "describe"

    def predict(self, value: Any, text: str) -> str:
        return f"{text}: {type(value).__name__} {value}"


class Shout(Model):
    name = "shout"

    def predict(self, sentence: str) -> str:
        return sentence.upper() + "!"


class Whisper(Model):
    name = "whisper"

    def predict(self, sentence: str) -> str:
        return sentence.lower() + "..."


class Fails(Model):
    """A step whose own code raises: the error must name the pipeline step, keep its id and status."""

    name = "fails"

    def predict(self, sentence: str) -> str:
        raise RuntimeError("a bug in the step")


class Refuses(Model):
    """A step that answers its own 422: the pipeline stops there and passes the answer on."""

    name = "refuses"

    def predict(self, sentence: str) -> Response:
        return Response({"error": f"will not take {sentence!r}"}, status=422)


class Nap(Model):
    name = "nap"

    def predict(self, seconds: float) -> str:
        time.sleep(seconds)
        return f"slept {seconds}"


class Chain(ServedPipeline):
    name = "chain"
    steps: ClassVar[Sequence[Step]] = ["third", "describe", "shout"]


class ByLength(ServedPipeline):
    """Branches on the data: long sentences are shouted, short ones whispered."""

    name = "by-length"
    steps: ClassVar[Sequence[Step]] = ["third", "describe", {"loud": "shout", "quiet": "whisper"}]

    def choose(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
        return "loud" if len(inputs) > 20 else "quiet"


class BadChoice(ServedPipeline):
    """Its choose names a branch it does not have: the pipeline's own bug, a 500 naming the step."""

    name = "bad-choice"
    steps: ClassVar[Sequence[Step]] = ["third", {"a": "describe"}]

    def choose(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
        return "b"
