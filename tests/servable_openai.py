"""Models the OpenAI tests serve beside the examples: each shows one part of the generation contract."""

from __future__ import annotations

import time
from collections.abc import Iterator

from modelpod import Model


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


class Turns(Model):
    """Takes a chat's messages as they are (no template): yields who said what, one turn a piece."""

    name = "turns"

    def predict(self, messages: list[dict[str, str]], max_tokens: int = 100) -> Iterator[str]:
        for message in messages[:max_tokens]:
            yield f"[{message['role']}:{message['content']}]"
