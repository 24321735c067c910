"""Token-level batching on a real `modelpod serve`, driven by the official `openai` client.

One server serves the `steps` test model (tests/servable_openai.py: a numpy model whose steps sleep,
so that streams overlap) and the tiny GPT-2 example (transformers, random weights, a tokenizer
trained on its bundled text), built into the test's folder beforehand.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpod import Client

from conftest import ROOT, ServerProcess, example, launch, load_example

pytest.importorskip("transformers", reason="the tiny GPT-2 needs: pip install 'modelpod[generation]'")

MODELS = str(ROOT / "tests" / "servable_openai.py")
PROMPTS = [("The river", 1), ("boats came home", 2), ("a", 3), ("the keeper", 4), ("lamp", 5), ("salt", 6)]


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built: Path = load_example("tiny_gpt2.py").build(tmp_path_factory.mktemp("tiny-gpt2"))
    return built


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, gpt2_folder: Path) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("token-batching")
    load_example("tiny_gpt2.py").TinyGPT2(data_path=data).initialize(model_path=str(gpt2_folder))
    process = launch((f"{MODELS}:Steps", example("tiny_gpt2.py:TinyGPT2")), data)
    yield process
    process.stop(timeout=15)


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60)


def _alone(client: openai.OpenAI, model: str, max_tokens: int) -> list[str]:
    """Each prompt's text, asked one after the other: each sequence runs by itself."""
    texts = []
    for prompt, seed in PROMPTS:
        answer = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, seed=seed)
        texts.append(answer.choices[0].text)
    return texts


def _together(server: ServerProcess, model: str, max_tokens: int) -> list[tuple[str, str | None]]:
    """Each prompt's text and finish reason, all streamed at once."""

    async def one(client: openai.AsyncOpenAI, prompt: str, seed: int) -> tuple[str, str | None]:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, seed=seed, stream=True
        )
        chunks = [chunk async for chunk in stream]
        return "".join(chunk.choices[0].text for chunk in chunks), chunks[-1].choices[0].finish_reason

    async def main() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60
        ) as client:
            return list(await asyncio.gather(*(one(client, prompt, seed) for prompt, seed in PROMPTS)))

    return asyncio.run(main())


def test_streams_batched_together_equal_each_alone(server: ServerProcess, client: openai.OpenAI) -> None:
    steps_before = _sample(server, "modelpod_step_sequences_count", "steps")
    tokens_before = _sample(server, "modelpod_generated_tokens_total", "steps")
    together = _together(server, "steps", 40)
    steps_after = _sample(server, "modelpod_step_sequences_count", "steps")
    tokens_after = _sample(server, "modelpod_generated_tokens_total", "steps")
    alone = _alone(client, "steps", 40)
    assert [text for text, _ in together] == alone
    assert {reason for _, reason in together} == {"length"}
    assert all(len(text.split()) == 40 for text in alone)
    # Six sequences made 40 tokens each in fewer than 240 steps: steps held several sequences at once.
    assert tokens_after - tokens_before == 6 * 40
    assert steps_after - steps_before < 6 * 40
    steps_model = _steps_model(server)  # and the model's own predict, in this process
    assert ["".join(steps_model.predict(prompt, 40, seed)) for prompt, seed in PROMPTS] == alone


def test_a_late_request_joins_the_running_batch_without_waiting(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    retired = _sample(server, "modelpod_sequences_retired_total", "steps", reason="closed")
    streams = [
        client.completions.create(model="steps", prompt="long", max_tokens=2000, seed=i, stream=True)
        for i in range(3)
    ]
    iterators = [iter(stream) for stream in streams]
    for iterator in iterators:
        assert next(iterator).choices[0].text  # each is running
    late = client.completions.create(model="steps", prompt="late", max_tokens=3, seed=9)
    assert late.choices[0].finish_reason == "length"
    assert len(late.choices[0].text.split()) == 3
    # The late one has finished while the three long ones still run (2000 steps take 20 s or more).
    assert _sample(server, "modelpod_running_sequences", "steps") == 3
    assert next(iterators[0]).choices[0].finish_reason is None
    for stream in streams:
        stream.close()
    # Their clients gone, their sequences leave the batch at its next step.
    _until(lambda: _sample(server, "modelpod_running_sequences", "steps") == 0)
    _until(
        lambda: _sample(server, "modelpod_sequences_retired_total", "steps", reason="closed") == retired + 3
    )


def test_sequences_past_the_running_batch_wait_counted_in_metrics(server: ServerProcess) -> None:
    """`steps` runs 8 sequences at most: of 10 streams, 2 wait in its queue until places free up."""

    async def main() -> tuple[float, float, int]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.http_url}/v1", api_key="unused", max_retries=0, timeout=60
        ) as client:
            first_tokens = 0

            async def one(seed: int) -> None:
                nonlocal first_tokens
                stream = await client.completions.create(
                    model="steps", prompt="long", max_tokens=2000, seed=seed, stream=True
                )
                async for _ in stream:
                    first_tokens += 1
                    await asyncio.sleep(3600)  # holds its place until cancelled

            tasks = [asyncio.create_task(one(seed)) for seed in range(10)]
            counts = (0.0, 0.0)
            for _ in range(200):  # 10 s at most
                counts = await asyncio.to_thread(
                    lambda: (
                        _sample(server, "modelpod_running_sequences", "steps"),
                        _sample(server, "modelpod_waiting_sequences", "steps"),
                    )
                )
                if counts == (8, 2) and first_tokens == 8:
                    break
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()  # the clients leave: the running and the waiting are freed
            await asyncio.gather(*tasks, return_exceptions=True)
            return counts[0], counts[1], first_tokens

    running, waiting, started = asyncio.run(main())
    assert (running, waiting, started) == (8, 2, 8)
    _until(lambda: _sample(server, "modelpod_running_sequences", "steps") == 0)
    _until(lambda: _sample(server, "modelpod_waiting_sequences", "steps") == 0)


def test_stop_and_max_tokens_end_a_stepped_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="steps", prompt="x", max_tokens=30, seed=11).choices[0].text
    stop = whole.split()[5]
    stream = client.completions.create(
        model="steps", prompt="x", max_tokens=30, seed=11, stop=[stop], stream=True
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks) == whole[: whole.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].finish_reason is None


def test_n_streamed_choices_come_side_by_side(client: openai.OpenAI) -> None:
    asked: Any = {"model": "steps", "prompt": "n", "max_tokens": 20, "seed": 4, "n": 3}
    whole = client.completions.create(**asked)
    chunks = list(client.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    indices = [chunk.choices[0].index for chunk in chunks if chunk.choices]
    last_of_first = max(position for position, index in enumerate(indices) if index == 0)
    assert indices.index(1) < last_of_first  # interleaved, not one choice after the other
    assert indices.index(2) < last_of_first
    for choice in whole.choices:
        mine = [
            chunk.choices[0] for chunk in chunks if chunk.choices and chunk.choices[0].index == choice.index
        ]
        assert "".join(part.text for part in mine) == choice.text
        assert [part.finish_reason for part in mine][-1] == "length"
    assert len({choice.text for choice in whole.choices}) == 3
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 60


def test_a_client_that_leaves_n_streamed_choices_frees_every_sequence(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    closed = _sample(server, "modelpod_sequences_retired_total", "steps", reason="closed")
    stream = client.completions.create(model="steps", prompt="n", max_tokens=2000, n=2, stream=True)
    chunks = iter(stream)
    assert {next(chunks).choices[0].index for _ in range(6)} == {0, 1}
    stream.close()
    _until(lambda: _sample(server, "modelpod_running_sequences", "steps") == 0)
    _until(
        lambda: _sample(server, "modelpod_sequences_retired_total", "steps", reason="closed") == closed + 2
    )


def test_a_sequence_that_fails_to_start_fails_alone(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="steps", prompt="refuse me", max_tokens=5)
    assert "refused" in refused.value.message
    assert (
        len(client.completions.create(model="steps", prompt="ok", max_tokens=5).choices[0].text.split()) == 5
    )


def test_a_step_that_fails_ends_its_sequences_with_an_error(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    failed = _sample(server, "modelpod_sequences_retired_total", "steps", reason="failed")
    stream = client.completions.create(model="steps", prompt="crash", max_tokens=10, stream=True)
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert "raised RuntimeError" in raised.value.message
    assert _sample(server, "modelpod_sequences_retired_total", "steps", reason="failed") == failed + 1
    assert (
        len(client.completions.create(model="steps", prompt="ok", max_tokens=4).choices[0].text.split()) == 4
    )


def test_a_deadline_ends_a_sequence_and_frees_its_place(server: ServerProcess, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as late:
        client.completions.create(
            model="steps", prompt="slow", max_tokens=2000, extra_headers={"request-timeout": "0.3"}
        )
    assert late.value.status_code == 504  # Timeout, in the one error table
    assert "deadline" in late.value.message
    _until(lambda: _sample(server, "modelpod_running_sequences", "steps") == 0)


def test_native_streams_of_a_stepped_model_run_in_the_batch_too(
    server: ServerProcess, client: openai.OpenAI
) -> None:
    tokens = _sample(server, "modelpod_generated_tokens_total", "steps")
    with Client(server.http_url, model="steps") as native:
        pieces = list(native.predict_stream(prompt="native", max_tokens=6, seed=8))
    assert _sample(server, "modelpod_generated_tokens_total", "steps") == tokens + 6
    openai_text = (
        client.completions.create(model="steps", prompt="native", max_tokens=6, seed=8).choices[0].text
    )
    assert "".join(pieces) == openai_text


def test_time_to_first_token_and_tokens_are_counted(server: ServerProcess, client: openai.OpenAI) -> None:
    tokens = _sample(server, "modelpod_generated_tokens_total", "steps")
    firsts = _sample(server, "modelpod_time_to_first_token_seconds_count", "steps")
    client.completions.create(model="steps", prompt="count", max_tokens=7, seed=1)
    assert _sample(server, "modelpod_generated_tokens_total", "steps") == tokens + 7
    assert _sample(server, "modelpod_time_to_first_token_seconds_count", "steps") == firsts + 1


# -- the tiny GPT-2 --------------------------------------------------------------------------------------


def test_gpt2_batched_streams_equal_each_alone(server: ServerProcess, client: openai.OpenAI) -> None:
    together = _together(server, "gpt2", 24)
    alone = _alone(client, "gpt2", 24)
    assert [text for text, _ in together] == alone
    assert len(set(alone)) == len(alone)


def test_gpt2_chat_and_completions_with_usage_from_its_tokenizer(
    client: openai.OpenAI, gpt2_folder: Path
) -> None:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(gpt2_folder))
    messages: Any = [{"role": "user", "content": "Tell me of the river"}]
    chat = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=12, seed=5)
    again = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=12, seed=5)
    assert chat.choices[0].message.content == again.choices[0].message.content
    assert chat.usage is not None
    prompt = "user: Tell me of the river\nassistant: "  # the plain chat template
    assert chat.usage.prompt_tokens == len(tokenizer.encode(prompt))
    text = chat.choices[0].message.content or ""
    if chat.choices[0].finish_reason == "length":
        assert chat.usage.completion_tokens == 12
    assert len(tokenizer.encode(text)) <= chat.usage.completion_tokens  # pieces may merge when re-encoded

    completion = client.completions.create(model="gpt2", prompt="The keeper", max_tokens=10, seed=2)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(tokenizer.encode("The keeper"))
    streamed = list(
        client.completions.create(
            model="gpt2", prompt="The keeper", max_tokens=10, seed=2, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == completion.choices[0].text
    assert streamed[-1].usage is not None
    assert streamed[-1].usage.total_tokens == completion.usage.total_tokens


def test_gpt2_streamed_chat_and_greedy_text(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "boats"}]
    chunks = list(
        client.chat.completions.create(
            model="gpt2", messages=messages, max_tokens=8, temperature=0, stream=True
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    whole = client.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="gpt2", prompt="x", seed=-1)


# -- helpers ----------------------------------------------------------------------------------------------


def _steps_model(server: ServerProcess) -> Any:
    """The `steps` model in this process, to compare the server's text with its own predict."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("servable_openai_here", MODELS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Steps(data_path=server.data_path / "here", delay=0.0)


def _until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert condition()


def _sample(server: ServerProcess, name: str, model: str, **labels: str) -> float:
    """The value of one of a model's metrics, 0 before it is first counted."""
    text = httpx.get(f"{server.http_url}/metrics").text
    wanted = {"model": model, "version": "1", **labels}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return sample.value
    return 0.0
