"""The tasks a Hugging Face transformers folder is served for: what each answers (read from the
folder's `config.json` alone, so the metadata needs no weights) and how it runs a batch of texts.

- `feature-extraction` (a base model, `BertModel`): `embedding` FP32 `[-1, hidden_size]`, the
  mean of the last hidden states over the text's tokens.
- `text-classification` (`*ForSequenceClassification`): `label` BYTES `[-1]`, `score` FP32 `[-1]`,
  and `scores` FP32 `[-1, labels]` (softmax, in the order of `id2label`).
- `token-classification` (`*ForTokenClassification`): `entities` BYTES `[-1]`, per text a JSON list
  of `{"word", "label", "score", "start", "end"}`, one per token (special tokens left out).
- `text-generation` (`*ForCausalLM`, `*LMHeadModel`): `text` BYTES `[-1]`, the continuation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.types import TensorSpec

Config = Mapping[str, Any]
Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str  # transformers' Auto class that loads the folder for this task
    outputs: Callable[[Config], tuple[TensorSpec, ...]]


def labels_of(config: Config) -> list[str]:
    """The labels in the order of the classifier's logits."""
    id2label = config.get("id2label") or {}
    if id2label:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    return [f"LABEL_{index}" for index in range(int(config.get("num_labels", 2)))]


def hidden_size(config: Config) -> int:
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return -1


TASKS = {
    task.name: task
    for task in (
        Task(
            "feature-extraction",
            "AutoModel",
            lambda c: (TensorSpec("embedding", "FP32", (-1, hidden_size(c))),),
        ),
        Task(
            "text-classification",
            "AutoModelForSequenceClassification",
            lambda c: (
                TensorSpec("label", "BYTES", (-1,)),
                TensorSpec("score", "FP32", (-1,)),
                TensorSpec("scores", "FP32", (-1, len(labels_of(c)))),
            ),
        ),
        Task(
            "token-classification",
            "AutoModelForTokenClassification",
            lambda c: (TensorSpec("entities", "BYTES", (-1,)),),
        ),
        Task("text-generation", "AutoModelForCausalLM", lambda c: (TensorSpec("text", "BYTES", (-1,)),)),
    )
}
_BY_SUFFIX = (
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("Model", "feature-extraction"),
)


def task_of(config: Config, chosen: str | None, where: str) -> Task:
    """The task `chosen` (the runtime option `task`), else the one the config's architecture names."""
    if chosen is not None:
        if chosen not in TASKS:
            raise ModelLoadError(f"{where}: unknown task {chosen!r}; known: {', '.join(TASKS)}")
        return TASKS[chosen]
    architectures = config.get("architectures") or []
    for architecture in architectures:
        for suffix, name in _BY_SUFFIX:
            if str(architecture).endswith(suffix):
                return TASKS[name]
    raise ModelLoadError(
        f"{where}: no task known for the architectures {architectures}; choose one with "
        f"--runtime-option task=NAME ({', '.join(TASKS)})"
    )


# -- running a batch: encoded (the tokenizer's answer, on the device) -> outputs ---------------------


def feature_extraction(torch: Any, model: Any, encoded: Any) -> Arrays:
    hidden = model(**encoded).last_hidden_state
    mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return {"embedding": pooled.float().cpu().numpy()}


def text_classification(torch: Any, model: Any, encoded: Any, labels: list[str]) -> Arrays:
    scores = torch.softmax(model(**encoded).logits.float(), dim=-1).cpu().numpy()
    best = scores.argmax(-1)
    return {
        "label": np.array([labels[int(i)] for i in best], dtype=object),
        "score": scores[np.arange(len(best)), best].astype(np.float32),
        "scores": scores.astype(np.float32),
    }


def token_classification(
    torch: Any, model: Any, encoded: Any, labels: list[str], texts: list[str], offsets: Any
) -> Arrays:
    scores = torch.softmax(model(**encoded).logits.float(), dim=-1).cpu().numpy()
    answers = []
    for row, text in enumerate(texts):
        entities = []
        for position, (start, end) in enumerate(offsets[row].tolist()):
            if end <= start:  # a special or padding token
                continue
            best = int(scores[row, position].argmax())
            score = round(float(scores[row, position, best]), 6)
            entities.append(
                {"word": text[start:end], "label": labels[best], "score": score, "start": start, "end": end}
            )
        answers.append(json.dumps(entities))
    return {"entities": np.array(answers, dtype=object)}


def text_generation(model: Any, tokenizer: Any, encoded: Any, settings: Mapping[str, Any]) -> Arrays:
    generated = model.generate(**encoded, **settings, pad_token_id=tokenizer.pad_token_id)
    new = generated[:, encoded["input_ids"].shape[1] :]
    return {"text": np.array(tokenizer.batch_decode(new, skip_special_tokens=True), dtype=object)}
