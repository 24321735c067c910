"""A tiny GPT-2 (transformers, random weights) served with token-level batching, offline.

    pip install "modelpod[generation]"
    modelpod serve examples/tiny_gpt2.py:TinyGPT2
    curl localhost:8080/v1/completions -d '{"model": "gpt2", "prompt": "The river", "seed": 1}'

Nothing is downloaded: on first use the model builds itself in its data folder (`build`): a byte-level
BPE tokenizer trained on the short text below, and a GPT-2 of two small layers with random weights
(seeded, so every build is the same). Its text is noise in the tokenizer's words; what it shows is
the machinery. Point `model_path` (its configuration) at another local GPT-2 folder to serve that.

It offers the step contract (`modelpod.runtime.steps`): `start_sequence` runs a request's prompt
through the model alone (its key/value cache, the logits of its first token); `step_sequences`
samples every running sequence's next token with the sequence's own generator, then runs one
forward pass of all the new tokens against their caches (left-padded to one length, the padding
masked out). A sequence's text is thus the same alone or batched; weights in float64 keep the
batched pass's numbers equal to the lone one's. Prompt and text together hold 256 tokens at most.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelpod import STREAM_END, InvalidInput, Model
from modelpod.runtime import steps

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

END = "<|endoftext|>"
TEXT = """\
The lamp on the bridge was lit at dusk, and the keeper walked the bank until the boats came home.
Each morning he counted the boats that went down to the town, and each evening the boats that came
back with salt and iron and letters. The river ran brown in the spring and quiet in the summer; in
the winter it froze at the edges and ran black in the middle. Children waded in the shallows and
looked for smooth stones, and the swallows built under the arches. The keeper kept a book of the
boats, a line for each, and his daughter read it years later by the window, and found that it told
the whole story of the valley, if you knew how to read a list of boats.
"""
_BUILDING = threading.Lock()


def build(folder: Path, layers: int = 2, width: int = 64, vocabulary: int = 512, seed: int = 0) -> Path:
    """Write a tokenizer trained on TEXT and a seeded random GPT-2 into `folder`; return it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocabulary,
        special_tokens=[END],  # the text's own characters only: every token decodes to clean text
        show_progress=False,
    )
    tokenizer.train_from_iterator(TEXT.splitlines(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=END, bos_token=END, pad_token=END)
    import torch

    torch.manual_seed(seed)
    end = fast.convert_tokens_to_ids(END)
    config = GPT2Config(
        vocab_size=len(fast), n_positions=256, n_embd=width, n_layer=layers, n_head=4,
        bos_token_id=end, eos_token_id=end, pad_token_id=end,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@dataclass
class Sequence:
    """One request's generation: its tokens so far and how it samples the next."""

    tokens: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    random: np.random.Generator
    made: int = 0
    logits: np.ndarray[Any, Any] | None = None  # for its next token, from the last forward pass
    cache: list[tuple[Any, Any]] = field(default_factory=list)  # per layer: keys, values [1, heads, T, d]

    @property
    def length(self) -> int:
        return len(self.tokens)

    def choose(self, logits: np.ndarray[Any, Any]) -> int:
        """The next token from its logits: greedy at temperature 0, else sampled (nucleus by top_p)
        by inverse CDF from one uniform number of the sequence's own generator."""
        if self.temperature == 0:
            return int(np.argmax(logits))
        scaled = logits / self.temperature
        probabilities = np.exp(scaled - scaled.max())
        if self.top_p < 1.0:
            order = np.argsort(-probabilities, kind="stable")
            cumulative = np.cumsum(probabilities[order]) / probabilities.sum()
            kept = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            nucleus = np.zeros_like(probabilities)
            nucleus[kept] = probabilities[kept]
            probabilities = nucleus
        cumulative = np.cumsum(probabilities)
        drawn = int(np.searchsorted(cumulative, self.random.random() * cumulative[-1], side="right"))
        return min(drawn, len(cumulative) - 1)


class TinyGPT2(Model):
    """GPT-2 text generation, stepped: every running request one token further per forward pass."""

    name = "gpt2"
    example = {"prompt": "The river", "max_tokens": 2, "seed": 0}
    max_running_sequences = 32

    lm: GPT2LMHeadModel
    _tokenizer: PreTrainedTokenizerFast | None = None

    def setup(self) -> None:
        import torch
        from transformers import GPT2LMHeadModel
        from transformers.utils import logging

        logging.disable_progress_bar()
        torch.set_num_threads(int(self.config.get("threads", 1)))
        self.lm = GPT2LMHeadModel.from_pretrained(str(self.folder()), dtype=torch.float64).eval()
        self.window = int(self.lm.config.n_positions)
        self.end = int(self.lm.config.eos_token_id)

    def predict(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[str]:
        yield from steps.alone(
            self, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed
        )

    def start_sequence(
        self,
        prompt: str,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Sequence:
        if not isinstance(prompt, str):
            raise InvalidInput(f"prompt must be text, not {type(prompt).__name__}")
        if seed is not None and seed < 0:
            raise InvalidInput(f"seed must be a non-negative whole number, not {seed}")
        tokens = (self.tokenizer().encode(prompt) or [self.end])[-(self.window - 1) :]
        sequence = Sequence(tokens, max_tokens, temperature, top_p, np.random.default_rng(seed))
        self._prefill(sequence)
        return sequence

    def step_sequences(self, sequences: list[Sequence]) -> list[Any]:
        """Each sequence's next token, sampled from its logits; then one forward pass over the new
        tokens of those that go on, against their caches, for their next logits."""
        pieces: list[Any] = []
        going = []
        for sequence in sequences:
            token = self.end
            if sequence.made < sequence.max_tokens and sequence.length < self.window:
                assert sequence.logits is not None
                token = sequence.choose(sequence.logits)
            if token == self.end:
                pieces.append(STREAM_END)
                continue
            sequence.tokens.append(token)
            sequence.made += 1
            pieces.append(self.tokenizer().decode([token]))
            if sequence.made < sequence.max_tokens and sequence.length < self.window:
                going.append(sequence)
        if going:
            self._extend(going)
        return pieces

    def count_tokens(self, text: str) -> int:
        """The tokenizer's count: with it, OpenAI's routes answer with `usage`."""
        return len(self.tokenizer().encode(text))

    def tokenizer(self) -> PreTrainedTokenizerFast:
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self.folder()))
        return self._tokenizer

    def folder(self) -> Path:
        """`model_path` from the configuration, else the tiny model in the data folder (built once)."""
        configured = self.config.get("model_path")
        if configured:
            return Path(configured)
        folder = self.model_dir / "tiny-gpt2"
        with _BUILDING:
            if not (folder / "config.json").is_file():
                build(folder)
        return folder

    def _prefill(self, sequence: Sequence) -> None:
        """(Alone) the prompt through the model: its cache, and the logits of the first new token."""
        import torch

        with torch.inference_mode():
            ids = torch.tensor([sequence.tokens])
            output = self.lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
        sequence.cache = [(layer.keys, layer.values) for layer in output.cache.layers]
        sequence.logits = output.logits[0, -1].numpy()

    def _extend(self, sequences: list[Sequence]) -> None:
        """One forward pass of each sequence's last token against its cache, the caches left-padded
        to one length (the padding masked out); each keeps its part of the longer cache."""
        import torch
        from transformers import DynamicCache

        longest = max(sequence.length - 1 for sequence in sequences)  # cached tokens, the new one aside
        mask = torch.zeros((len(sequences), longest + 1), dtype=torch.long)
        layers = []
        for layer in range(len(sequences[0].cache)):
            keys, values = [], []
            for sequence in sequences:
                key, value = sequence.cache[layer]
                pad = (0, 0, longest - key.shape[2], 0)  # left, on the token axis
                keys.append(torch.nn.functional.pad(key, pad))
                values.append(torch.nn.functional.pad(value, pad))
            layers.append((torch.cat(keys), torch.cat(values)))
        for row, sequence in enumerate(sequences):
            mask[row, longest + 1 - sequence.length :] = 1
        ids = torch.tensor([[sequence.tokens[-1]] for sequence in sequences])
        positions = torch.tensor([[sequence.length - 1] for sequence in sequences])
        with torch.inference_mode():
            output = self.lm(
                input_ids=ids, attention_mask=mask, position_ids=positions,
                cache=DynamicCache(ddp_cache_data=layers), use_cache=True,
            )  # fmt: skip
        cached = [(layer.keys, layer.values) for layer in output.cache.layers]
        for row, sequence in enumerate(sequences):
            start = longest + 1 - sequence.length
            sequence.cache = [
                (keys[row : row + 1, :, start:], values[row : row + 1, :, start:]) for keys, values in cached
            ]
            sequence.logits = output.logits[row, -1].numpy()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt2")))
