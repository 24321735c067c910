"""Serve a sentence-transformers folder (`modules.json`: a transformer, pooling, maybe a dense layer
and normalisation) with sentence-transformers (the `embeddings` extra).

The input is `text` (BYTES `[-1]`); the output `embedding` (FP32 `[-1, dimensions]`) is what
`SentenceTransformer(folder).encode(texts)` answers in process. Texts longer than the model's
`max_seq_length` tokens are refused with a 400 naming the text, unless `truncate=true` (what
sentence-transformers itself does silently). `batch_size` (texts per forward pass, default 64) is
a runtime option. Nothing is downloaded: the folder is loaded with `local_files_only`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime.file_model import HANDOFF, Arrays, Description, FileModel, file_key
from modelpod.runtime.text_files import TEXT, TEXT_INPUT, check_lengths, texts, token_limit, truthy
from modelpod.types import TensorSpec

EMBEDDING = "embedding"


def load_encoder(path: Path, device: str = "cpu") -> Any:
    with needs_extra("embeddings", f"serving {path.name}"):
        from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(path), device=device, local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"{path}: sentence-transformers cannot load it: {error}") from None


@lru_cache(maxsize=16)
def _dimensions(path: str, stamp: tuple[int, int]) -> int:
    """The embedding's width; asking the loaded model is the one answer that holds for any stack of
    modules (pooling modes, dense layers)."""
    encoder = load_encoder(Path(path))
    # sentence-transformers 6 renamed it; 3 to 5 know the old name alone
    ask = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
    dimensions = ask()
    HANDOFF.put(("sentence-transformers", path, stamp), encoder)  # the first setup takes it: read once
    if not isinstance(dimensions, int):
        raise ModelLoadError(f"{path}: the model does not say how wide its embeddings are")
    return dimensions


class SentenceTransformersModel(FileModel):
    """A sentence-transformers folder: texts in, embeddings out. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "sentence-transformers"
    platform: ClassVar[str] = "sentence_transformers"
    encoder: Any = None

    def describe(self) -> Description:
        width = _dimensions(*self._key())
        return Description((TEXT_INPUT,), (TensorSpec(EMBEDDING, "FP32", (-1, width)),), batchable=True)

    def setup(self) -> None:
        encoder = HANDOFF.take(("sentence-transformers", *self._key()))
        self.encoder = load_encoder(self.path, self.device) if encoder is None else encoder.to(self.device)
        self.limit = token_limit(self.encoder.max_seq_length)
        self.truncate = truthy(self.config.get("truncate", False))
        self.batch_size = int(self.config.get("batch_size", 64))

    def teardown(self) -> None:
        self.encoder = None

    def _key(self) -> tuple[str, tuple[int, int]]:
        """The folder as it is now, its modules.json standing for it."""
        return str(self.path.resolve()), file_key(self.path / "modules.json")[1]

    def run(self, inputs: Arrays) -> Arrays:
        batch = texts(inputs[TEXT])
        if not self.truncate and self.limit is not None:
            counts = [len(ids) for ids in self.encoder.tokenizer(batch)["input_ids"]]
            check_lengths(counts, self.limit, "shorten it, or serve with --runtime-option truncate=true")
        vectors = self.encoder.encode(batch, batch_size=self.batch_size, convert_to_numpy=True)
        return {EMBEDDING: np.asarray(vectors, dtype=np.float32)}
