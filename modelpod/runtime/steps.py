"""The step contract: a generation model that advances many sequences by one token at a time.

A text generation model (see `modelpod.runtime.generation`) opts in to token-level batching by
defining two methods beside its yielding `predict`:

    class Tiny(Model):
        max_running_sequences = 32  # how many sequences one step may hold (default 32)

        def start_sequence(self, prompt: str, max_tokens: int = 16, seed: int | None = None) -> State:
            ...  # a new sequence: its tokens so far, its own random generator; nothing runs yet

        def step_sequences(self, sequences: list[State]) -> list[str]:
            ...  # every sequence one token further, in one call: each one's text piece, in order,
            ...  # or STREAM_END where a sequence has ended (its end-of-text token, its max_tokens)

        def predict(self, prompt: str, max_tokens: int = 16, seed: int | None = None) -> Iterator[str]:
            yield from steps.alone(self, prompt=prompt, max_tokens=max_tokens, seed=seed)

`start_sequence` takes the keywords `predict` takes. The server then keeps one running batch per
version: a request becomes a sequence, joins the batch between two steps, and leaves it when it
ends, when its reader has all it wants (a stop sequence, the token limit) or when its client goes.
Both run on the running batch's own thread, as they are: no processors, no torch mode (a model
that wants `torch.inference_mode` enters it itself). A sequence's tokens must not depend on the
others stepped with it (each samples with its own
generator): its text is then the same alone or batched, which `predict` through `alone` is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modelpod.errors import ModelError
from modelpod.runtime.model import STREAM_END, Model

DEFAULT_MAX_RUNNING = 32


def takes_steps(model: Model) -> bool:
    """Whether the model offers the step contract (both methods)."""
    return callable(getattr(model, "start_sequence", None)) and callable(
        getattr(model, "step_sequences", None)
    )


def max_running(model: Model) -> int:
    """The most sequences one step may hold: the model's `max_running_sequences`, at least 1."""
    value = getattr(model, "max_running_sequences", DEFAULT_MAX_RUNNING)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{type(model).__name__}.max_running_sequences must be a whole number from 1")
    return value


def start(model: Model, arguments: dict[str, Any]) -> Any:
    """A new sequence for one request's keyword arguments."""
    return model.start_sequence(**arguments)  # type: ignore[attr-defined]


def step(model: Model, sequences: list[Any]) -> list[Any]:
    """Every sequence one token further: each one's piece (text) or STREAM_END, checked."""
    pieces = model.step_sequences(sequences)  # type: ignore[attr-defined]
    if not isinstance(pieces, list | tuple) or len(pieces) != len(sequences):
        raise ModelError(
            f"{type(model).__name__}.step_sequences must return one piece per sequence "
            f"({len(sequences)}), not {type(pieces).__name__}"
            + (f" of {len(pieces)}" if isinstance(pieces, list | tuple) else "")
        )
    for piece in pieces:
        if piece is not STREAM_END and not isinstance(piece, str):
            raise ModelError(
                f"{type(model).__name__}.step_sequences returned {type(piece).__name__}, "
                "not text or STREAM_END"
            )
    return list(pieces)


def alone(model: Model, **arguments: Any) -> Iterator[str]:
    """One sequence stepped by itself to its end: what `predict` of a step model yields."""
    sequence = start(model, arguments)
    while (piece := step(model, [sequence])[0]) is not STREAM_END:
        yield piece
