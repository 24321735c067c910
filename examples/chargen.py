"""A tiny character-level text generator that streams, batched: token streaming with numpy alone.

At start-up it learns a character n-gram model (a Markov chain of order 4, backing off to shorter
contexts it has not seen) from the short text below, then writes text one character at a time.

- `predict` yields each character as soon as it is sampled: a client reads the text as it is written.
- `predict_batch` writes for every request of a batch at once, one step at a time, and yields
  `(request index, character)` pairs: how a language model server streams tokens while it batches.
  A request's stream ends (`STREAM_END`) as soon as it has its `length` characters; the others go on.

    modelpod serve examples/chargen.py:CharGen
    curl -N localhost:8080/models/chargen/predict -H 'accept: text/event-stream' \\
         -d '{"prompt": "The river", "length": 80, "seed": 7}'

The text was written for this example and is in the public domain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelpod import STREAM_END, InvalidInput, Model

TEXT = """\
The river came down from the hills in the spring, brown and loud, and the people of the valley \
went out to watch it pass. The old keeper of the bridge stood at the rail with his lamp, and he \
said that the water had been higher once, when he was a boy, and that the bridge had held then \
and would hold now. Nobody believed him, and everybody was glad to hear it.

In the summer the river grew quiet. Children waded in the shallows and looked for smooth stones, \
and the keeper painted the rail of the bridge a dark green, one post at a time, talking to each \
post as he went. The swallows built under the arches and came out at evening in long curves over \
the water, so close that their wings seemed to touch their own reflections.

When the autumn came the keeper walked the bank every morning. He counted the boats that went down \
to the town with apples and wool, and the boats that came back with salt and iron and letters. He \
kept a book of them, a line for each boat, and the book was the only thing he ever wrote. Years \
later his daughter read it by the window and found that it told the whole story of the valley, if \
you knew how to read a list of boats.

In the winter the river froze at the edges and ran black in the middle. The keeper hung his lamp \
on the bridge at dusk, though no boat came, because a lamp on a bridge is a promise that somebody \
is watching. The snow fell on the water and was gone, fell and was gone, and the night was long \
and still, and the lamp burned until the morning came back over the hills.
"""

ALPHABET = frozenset(TEXT)


@dataclass
class NgramModel:
    """Next-character probabilities for every context of 0..`order` characters seen in a text."""

    alphabet: str
    order: int
    keys: list[np.ndarray[Any, Any]] = field(default_factory=list)  # per length: sorted context ids
    probs: list[np.ndarray[Any, Any]] = field(default_factory=list)  # per length: one row per key

    @classmethod
    def learn(cls, text: str, order: int) -> NgramModel:
        alphabet = "".join(sorted(set(text)))
        codes = np.array([alphabet.index(c) for c in text], dtype=np.int64)
        cyclic = np.concatenate([codes, codes[:order]])  # the text wraps round: every context has a successor
        model = cls(alphabet, order)
        starts = np.arange(len(codes))
        for length in range(order + 1):
            windows = cyclic[starts[:, None] + np.arange(length)]  # every context of this length
            keys, rows = np.unique(model._ids(windows), return_inverse=True)
            counts = np.zeros((len(keys), len(alphabet)))
            np.add.at(counts, (rows, cyclic[starts + length]), 1)  # and the character after it
            model.keys.append(keys)
            model.probs.append(counts / counts.sum(axis=1, keepdims=True))
        return model

    def encode(self, text: str) -> list[int]:
        """A prompt's characters as codes; characters the text never had are left out."""
        return [self.alphabet.index(c) for c in text if c in self.alphabet]

    def sample(
        self,
        contexts: Sequence[Sequence[int]],
        uniforms: np.ndarray[Any, Any],
        temperatures: np.ndarray[Any, Any],
    ) -> np.ndarray[Any, Any]:
        """The next character of each context, drawn by inverse CDF from its uniform number."""
        probs = np.stack([self._probabilities(context) for context in contexts])
        weights = probs ** (1.0 / temperatures[:, None])
        cumulative = np.cumsum(weights, axis=1)
        chosen: np.ndarray[Any, Any] = (cumulative < uniforms[:, None] * cumulative[:, -1:]).sum(axis=1)
        return chosen

    def _probabilities(self, context: Sequence[int]) -> np.ndarray[Any, Any]:
        """The longest seen suffix of the context decides (length 0, the character counts, always is)."""
        for length in range(min(self.order, len(context)), -1, -1):
            suffix = np.array(context[len(context) - length :], dtype=np.int64)[None, :]
            key = self._ids(suffix)[0]
            row = int(np.searchsorted(self.keys[length], key))
            if row < len(self.keys[length]) and self.keys[length][row] == key:
                found: np.ndarray[Any, Any] = self.probs[length][row]
                return found
        raise AssertionError("the empty context is always known")  # pragma: no cover

    def _ids(self, windows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Each row of codes as one number in base len(alphabet) (0 for the empty context)."""
        powers = len(self.alphabet) ** np.arange(windows.shape[1] - 1, -1, -1, dtype=np.int64)
        ids: np.ndarray[Any, Any] = windows @ powers
        return ids


@dataclass
class Writing:
    """One request's generation: its context so far, its random numbers, how much is left."""

    context: list[int]
    length: int
    temperature: float
    random: np.random.Generator

    @classmethod
    def of(cls, request: Mapping[str, Any], model: NgramModel) -> Writing:
        prompt, length = request.get("prompt", ""), request.get("length", 200)
        temperature, seed = request.get("temperature", 1.0), request.get("seed")
        if not isinstance(prompt, str):
            raise InvalidInput(f"prompt must be text, not {type(prompt).__name__}")
        if not isinstance(length, int) or not 0 <= length <= 10_000:
            raise InvalidInput(f"length must be a whole number of characters from 0 to 10000, not {length!r}")
        if not isinstance(temperature, int | float) or not 0.05 <= temperature <= 10:
            raise InvalidInput(f"temperature must be a number from 0.05 to 10, not {temperature!r}")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise InvalidInput(f"seed must be a non-negative whole number, not {seed!r}")
        return cls(model.encode(prompt), length, float(temperature), np.random.default_rng(seed))


class CharGen(Model):
    """Writes text in the manner of its bundled text, a character at a time, streamed."""

    name = "chargen"
    example = {"prompt": "The", "length": 4, "seed": 0}
    max_batch_size = 16  # requests written together, one character each per step
    max_batch_delay_ms = 5

    def setup(self) -> None:
        order = self.config.get("order", 4)
        if not isinstance(order, int) or not 1 <= order <= 8:
            raise ValueError(f"order must be a whole number from 1 to 8, not {order!r}")
        self.ngrams = NgramModel.learn(TEXT, order)  # "training": counting, well under a second

    def predict(
        self, prompt: str = "", length: int = 200, temperature: float = 1.0, seed: int | None = None
    ) -> Iterator[str]:
        request = {"prompt": prompt, "length": length, "temperature": temperature, "seed": seed}
        for _, item in self.predict_batch([request]):
            if isinstance(item, Exception):
                raise item
            if item is not STREAM_END:
                yield item

    def count_tokens(self, text: str) -> int:
        """Its tokens are characters, those of the bundled text (a prompt's others are left out).
        With it, OpenAI's routes report `usage`; `predict` is already what they ask of a model."""
        return sum(1 for character in text if character in ALPHABET)

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, Any]]:
        """At each step, the next character of every request still writing, as (index, character)."""
        writings: dict[int, Writing] = {}
        for index, item in enumerate(items):
            try:
                writings[index] = Writing.of(item, self.ngrams)
            except InvalidInput as error:
                yield index, error  # this request fails alone; the others are written
        for index in [i for i, writing in writings.items() if writing.length == 0]:
            yield index, STREAM_END
        step = 0
        while active := [i for i, writing in writings.items() if step < writing.length]:
            chosen = [writings[i] for i in active]
            codes = self.ngrams.sample(
                [writing.context for writing in chosen],
                np.array([writing.random.random() for writing in chosen]),
                np.array([writing.temperature for writing in chosen]),
            )
            for index, writing, code in zip(active, chosen, codes, strict=True):
                writing.context.append(int(code))
                yield index, self.ngrams.alphabet[code]
                if step + 1 == writing.length:
                    yield index, STREAM_END
            step += 1
