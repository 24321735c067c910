"""Serve a transformers text-generation folder as a token stream (`--runtime transformers-generate`):
`predict(prompt, max_tokens, temperature, top_p, seed)` yields the text token by token, so the
native routes stream it (`accept: text/event-stream`) and OpenAI's `/v1/completions` and
`/v1/chat/completions` serve it, with `usage` counted by the folder's tokenizer.

Concurrent prompts are batched: one `generate` call writes for every request of a batch that asks
for the same sampling (greedy, or the same temperature, top_p and seed), and each request's tokens
are yielded as they are made; a request's stream ends at its own `max_tokens` or at the end token.
Greedy (temperature 0) is the default, so an answer is the same as `model.generate` alone gives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from modelpod.errors import InvalidInput, ModelError, ModelLoadError
from modelpod.runtime.file_model import Description
from modelpod.runtime.model import STREAM_END, Model
from modelpod.runtime.transformers_runtime import TransformersModel, import_transformers
from modelpod.types import TensorSpec

_DONE = object()


class _Steps:
    """transformers' streamer protocol: `put` gets the prompt first, then each step's new token of
    every row; they go to a queue the serving thread reads."""

    def __init__(self) -> None:
        self.prompt_seen = False
        self.steps: queue.Queue[Any] = queue.Queue()

    def put(self, value: Any) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.steps.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.steps.put(_DONE)


def _request(item: Mapping[str, Any]) -> dict[str, Any]:
    prompt, tokens = item.get("prompt", ""), item.get("max_tokens", 20)
    temperature, top_p, seed = item.get("temperature", 0.0), item.get("top_p", 1.0), item.get("seed")
    if not isinstance(prompt, str):
        raise InvalidInput(f"prompt must be text, not {type(prompt).__name__}")
    if not isinstance(tokens, int) or tokens < 0:
        raise InvalidInput(f"max_tokens must be a whole number >= 0, not {tokens!r}")
    if not isinstance(temperature, int | float) or temperature < 0:
        raise InvalidInput(f"temperature must be a number >= 0, not {temperature!r}")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InvalidInput(f"top_p must be a number in (0, 1], not {top_p!r}")
    if seed is not None and not isinstance(seed, int):
        raise InvalidInput(f"seed must be a whole number, not {seed!r}")
    return {"prompt": prompt, "max_tokens": tokens, "sampling": (float(temperature), float(top_p), seed)}


class TransformersGenerator(TransformersModel):
    """A causal language model folder, streamed and batched. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "transformers-generate"
    max_batch_size: ClassVar[int] = 8  # prompts written together
    max_batch_delay_ms: ClassVar[float] = 5.0

    def describe(self) -> Description:
        found = super().describe()
        if self.task.name != "text-generation":
            raise ModelLoadError(f"{self.path}: a {self.task.name} model; streaming is for text generation")
        return Description((), found.outputs, batchable=False)

    def is_tensor_model(self) -> bool:
        return False

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return Model.input_specs(self)

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("output", "BYTES", (-1,)),)

    def count_tokens(self, text: str) -> int:
        """The prompt's and the answer's tokens, for OpenAI's `usage` (callable before setup)."""
        with self.tokenizer_lock:
            if self.tokenizer is None:
                _, transformers = import_transformers(self.path)
                self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            return len(self.tokenizer(text)["input_ids"])

    def predict(  # type: ignore[override]  # keyword calls, not tensors
        self,
        prompt: str = "",
        max_tokens: int = 20,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        item = {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature, "top_p": top_p}
        for _, piece in self.predict_batch([{**item, "seed": seed}]):
            if isinstance(piece, Exception):
                raise piece
            if piece is not STREAM_END:
                yield piece

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, Any]]:
        """(request index, text piece) as the tokens are made; STREAM_END ends a request's stream."""
        groups: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
        for index, item in enumerate(items):
            try:
                request = _request(item)
            except InvalidInput as error:
                yield index, error  # this request fails alone
                continue
            groups.setdefault(request["sampling"], []).append((index, request))
        for sampling, members in groups.items():
            yield from self._write(sampling, members)

    def _write(
        self, sampling: tuple[float, float, int | None], members: list[tuple[int, dict[str, Any]]]
    ) -> Iterator[tuple[int, Any]]:
        prompts = [request["prompt"] for _, request in members]
        limits = [request["max_tokens"] for _, request in members]
        settings: dict[str, Any] = {"max_new_tokens": max(limits), "do_sample": sampling[0] > 0}
        if sampling[0] > 0:
            settings.update(temperature=sampling[0], top_p=sampling[1])
        encoded, _ = self.encode(prompts, reserve=max(limits))
        steps = _Steps()
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with self.torch.inference_mode():
                    if sampling[2] is not None:
                        self.torch.manual_seed(sampling[2])
                    self.model.generate(
                        **encoded, **settings, pad_token_id=self.tokenizer.pad_token_id, streamer=steps
                    )
            except BaseException as error:  # handed to the requests, not lost in the thread
                failure.append(error)
                steps.end()

        thread = threading.Thread(target=generate, name="modelpod-generate", daemon=True)
        thread.start()
        written: list[list[int]] = [[] for _ in members]
        texts = [""] * len(members)
        open_rows = {row for row, limit in enumerate(limits) if limit > 0}
        for row, limit in enumerate(limits):
            if limit == 0:
                yield members[row][0], STREAM_END
        while (step := steps.steps.get()) is not _DONE:
            for row, token in enumerate(step):
                if row not in open_rows:
                    continue
                ended = token == self.tokenizer.eos_token_id
                if not ended:
                    written[row].append(token)
                    ended = len(written[row]) >= limits[row]
                piece = self._piece(written[row], texts[row], ended)
                if piece:
                    yield members[row][0], piece
                    texts[row] += piece
                if ended:
                    open_rows.discard(row)
                    yield members[row][0], STREAM_END
        thread.join()
        for row in sorted(open_rows):  # generate stopped early: every row ended, or it failed
            if failure:
                yield members[row][0], ModelError(f"generation failed: {failure[0]}")
                continue
            piece = self._piece(written[row], texts[row], True)
            if piece:
                yield members[row][0], piece
            yield members[row][0], STREAM_END

    def _piece(self, tokens: list[int], sent: str, last: bool) -> str:
        """The text the tokens add to what was sent; a half-decoded character (U+FFFD at the end)
        waits for its next token, unless nothing more will come."""
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        if text.endswith("\ufffd") and not last:
            return ""
        return str(text[len(sent) :])
