"""Models the OpenAI tests serve beside the examples: each shows one part of the generation contract."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from modelpod import STREAM_END, InvalidInput, Model
from modelpod.runtime import steps


class Words(Model):
    """Yields the words of its prompt back, `delay` seconds apart, then `word0 word1 ...` for ever
    (to `max_tokens`): slow enough that a client can leave midway. It takes no seed or temperature,
    so a request that gives them is refused."""

    name = "words"

    def predict(self, prompt: str, max_tokens: int = 1000, delay: float = 0.02) -> Iterator[str]:
        words = prompt.split()
        for index in range(max_tokens):
            time.sleep(delay)
            yield (words[index] if index < len(words) else f"word{index}") + " "

    def chat_template(self, messages: list[dict[str, str]]) -> str:
        """Only what the user said: the model echoes it."""
        return " ".join(message["content"] for message in messages if message["role"] == "user")


class Vectors(Model):
    """An embedding model that counts tokens (words) and truncates to `dimensions`."""

    name = "vectors"

    def predict(self, text: str, dimensions: int = 4) -> list[float]:
        return [float(len(text) + index) for index in range(dimensions)]

    def count_tokens(self, text: str) -> int:
        return len(text.split())


class Narrow(Model):
    """An embedding model with one place in its queue and two rows per batch, each row taking 0.2 s:
    five texts in one request cannot all be taken (three at most), and the request is refused (503)."""

    name = "narrow"
    max_batch_size = 2
    max_queue_size = 1

    def predict(self, text: str) -> list[float]:
        time.sleep(0.2)
        return [float(len(text))]


class Comparable(Vectors):  # noqa: PLW1641 - unhashable on purpose
    """`Vectors` whose class defines `__eq__` and so, in Python, no hash: its face cannot be cached."""

    name = "comparable"

    def __eq__(self, other: object) -> bool:
        return self is other


class Turns(Model):
    """Takes a chat's messages as they are (no template): yields who said what, one turn a piece."""

    name = "turns"

    def predict(self, messages: list[dict[str, str]], max_tokens: int = 100) -> Iterator[str]:
        for message in messages[:max_tokens]:
            yield f"[{message['role']}:{message['content']}]"


class Steps(Model):
    """Takes steps (token-level batching, `modelpod.runtime.steps`): each sequence draws its words
    from its own seeded generator, so its text is the same alone or batched. A step sleeps `delay`
    seconds however many sequences it holds, as a forward pass on an accelerator would."""

    name = "steps"
    max_running_sequences = 8
    WORDS = ("river", "bridge", "lamp", "boat", "salt", "iron", "stone", "keeper", "swallow", "book")

    def predict(self, prompt: str, max_tokens: int = 50, seed: int | None = None) -> Iterator[str]:
        yield from steps.alone(self, prompt=prompt, max_tokens=max_tokens, seed=seed)

    def start_sequence(self, prompt: str, max_tokens: int = 50, seed: int | None = None) -> dict[str, Any]:
        if "refuse" in prompt:
            raise InvalidInput("this prompt is refused when its sequence starts")
        crash = "crash" in prompt  # its third step fails, with every sequence it holds
        return {
            "left": max_tokens,
            "at": len(prompt),
            "random": np.random.default_rng(seed),
            "crash": crash,
            "made": 0,
        }

    def step_sequences(self, sequences: list[dict[str, Any]]) -> list[Any]:
        time.sleep(float(self.config.get("delay", 0.01)))
        if any(sequence["crash"] and sequence["made"] == 2 for sequence in sequences):
            raise RuntimeError("the step crashed")
        pieces: list[Any] = []
        for sequence in sequences:
            if sequence["left"] == 0:
                pieces.append(STREAM_END)
                continue
            sequence["left"] -= 1
            sequence["made"] += 1
            sequence["at"] = (sequence["at"] + int(sequence["random"].integers(1, 7))) % len(self.WORDS)
            pieces.append(self.WORDS[sequence["at"]] + " ")
        return pieces

    def count_tokens(self, text: str) -> int:
        return len(text.split())
