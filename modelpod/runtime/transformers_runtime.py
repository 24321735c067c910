"""Serve a Hugging Face transformers folder (`save_pretrained`: `config.json`, weights, tokenizer)
with transformers and torch (the `transformers` extra).

The input is `text` (BYTES `[-1]`, one text per row); the outputs depend on the task (see
`transformers_tasks`), which the config's architecture names or the runtime option `task` forces
(`--runtime-option task=feature-extraction`). The metadata is read from `config.json` alone.

Texts longer than the model takes (the tokenizer's `model_max_length`, the config's positions) are
refused with a 400 naming the text, unless `truncate=true`. Text generation takes
`max_new_tokens` (default 20), `do_sample` (default false: greedy, deterministic), `temperature`,
`top_k`, `top_p` and `seed` as runtime options; concurrent prompts are batched (left padding).

Everything runs on the Runner's device under `torch.inference_mode()`; nothing is downloaded
(`local_files_only`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime import transformers_tasks as tasks
from modelpod.runtime.file_model import Arrays, Description, FileModel
from modelpod.runtime.model import DEFAULT_VERSION
from modelpod.runtime.text_files import TEXT, TEXT_INPUT, check_lengths, texts, token_limit, truthy

GENERATION_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "max_new_tokens": int,
    "do_sample": truthy,
    "temperature": float,
    "top_k": int,
    "top_p": float,
}


@lru_cache(maxsize=64)
def read_config(path: str, stamp: tuple[int, int]) -> Mapping[str, Any]:
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{path}: cannot read config.json: {error}") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json is not a JSON object")
    return config


def import_transformers(path: Path) -> tuple[Any, Any]:
    with needs_extra("transformers", f"serving {path.name}"):
        import torch
        import transformers

    transformers.utils.logging.disable_progress_bar()  # no bars in a server's log
    return torch, transformers


class TransformersModel(FileModel):
    """A transformers folder served for one task. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "transformers"
    platform: ClassVar[str] = "transformers"
    model: Any = None
    tokenizer: Any = None

    def __init__(self, version: str = DEFAULT_VERSION, **kwargs: Any) -> None:
        # a fast tokenizer called from two threads at once fails ("Already borrowed"): one at a time
        self.tokenizer_lock = threading.Lock()
        super().__init__(version, **kwargs)

    def describe(self) -> Description:
        status = (self.path / "config.json").stat()
        self.hf_config = read_config(str(self.path.resolve()), (status.st_mtime_ns, status.st_size))
        self.task = tasks.task_of(self.hf_config, self.config.get("task"), str(self.path))
        return Description((TEXT_INPUT,), self.task.outputs(self.hf_config), batchable=True)

    def setup(self) -> None:
        self.torch, transformers = import_transformers(self.path)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            auto = getattr(transformers, self.task.auto_class)
            self.model = auto.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"{self.path}: transformers cannot load it for {self.task.name}: {error}"
            ) from None
        if self.task.name == "text-generation":
            self.tokenizer.padding_side = "left"  # generation goes on from the prompts' ends
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        positions = self.hf_config.get("max_position_embeddings", self.hf_config.get("n_positions"))
        self.limit = token_limit(self.tokenizer.model_max_length, positions)
        self.truncate = truthy(self.config.get("truncate", False))
        self.generation = {
            key: convert(self.config[key])
            for key, convert in GENERATION_OPTIONS.items()
            if key in self.config
        }
        self.generation.setdefault("max_new_tokens", 20)
        self.generation.setdefault("do_sample", False)

    def teardown(self) -> None:
        self.model = self.tokenizer = None

    def encode(self, batch: list[str], offsets: bool = False, reserve: int | None = None) -> Any:
        """The texts, tokenized onto the device; `reserve` positions kept for the answer (text
        generation: `max_new_tokens`)."""
        limit = self.limit
        if reserve is None and self.task.name == "text-generation":
            reserve = int(self.generation["max_new_tokens"])
        if limit is not None and reserve:
            limit -= reserve  # the answer needs its positions too
        with self.tokenizer_lock:
            if not self.truncate and limit is not None:
                counts = [len(ids) for ids in self.tokenizer(batch)["input_ids"]]
                check_lengths(counts, limit, "shorten it, or serve with --runtime-option truncate=true")
            encoded = self.tokenizer(batch, padding=True, truncation=limit is not None, max_length=limit,
                                     return_tensors="pt", return_offsets_mapping=offsets)  # fmt: skip
        mapping = encoded.pop("offset_mapping", None)
        return encoded.to(self.device), mapping

    def run(self, inputs: Arrays) -> Arrays:
        batch = texts(inputs[TEXT])
        name, torch = self.task.name, self.torch
        encoded, offsets = self.encode(batch, offsets=name == "token-classification")
        with torch.inference_mode():
            if name == "feature-extraction":
                return tasks.feature_extraction(torch, self.model, encoded)
            if name == "text-classification":
                return tasks.text_classification(torch, self.model, encoded, tasks.labels_of(self.hf_config))
            if name == "token-classification":
                labels = tasks.labels_of(self.hf_config)
                return tasks.token_classification(torch, self.model, encoded, labels, batch, offsets)
            if "seed" in self.config:
                torch.manual_seed(int(self.config["seed"]))
            return tasks.text_generation(self.model, self.tokenizer, encoded, self.generation)
