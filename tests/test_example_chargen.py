"""The character generator example: it learns its text, writes like it, streams, and batches."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpod import Client, InvalidInput, ModelLoadError, Runner

from conftest import StartServer, example, load_example

chargen = load_example("chargen.py")


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    with Runner(chargen.CharGen, data_path=tmp_path) as runner:
        yield runner


def test_every_step_follows_a_context_seen_in_the_text(runner: Runner) -> None:
    """A Markov chain of order 4 writes only 5-grams its text has (read round, end to start)."""
    prompt = "The keeper"
    written = "".join(runner.predict_stream(prompt=prompt, length=400, seed=3))
    assert len(written) == 400
    cyclic = chargen.TEXT + chargen.TEXT[:4]
    whole = prompt + written
    unseen = {whole[i : i + 5] for i in range(len(whole) - 4)} - {
        cyclic[i : i + 5] for i in range(len(chargen.TEXT))
    }
    assert not unseen


def test_a_seed_makes_the_text_repeatable(runner: Runner) -> None:
    first = list(runner.predict_stream(prompt="In the", length=60, seed=11))
    assert list(runner.predict_stream(prompt="In the", length=60, seed=11)) == first
    assert list(runner.predict_stream(prompt="In the", length=60, seed=12)) != first
    assert runner.predict(prompt="In the", length=60, seed=11) == first  # predict gathers the stream


def test_a_batch_writes_what_each_request_would_alone(runner: Runner) -> None:
    requests: list[dict[str, Any]] = [
        {"prompt": "The river", "length": 30, "seed": 1},
        {"prompt": "", "length": 5, "seed": 2, "temperature": 0.5},
        {"prompt": "snow", "length": 0, "seed": 3},
        {"prompt": "Children", "length": 17, "seed": 4, "temperature": 2.0},
    ]
    alone = [list(runner.predict_stream(**request)) for request in requests]
    assert runner.predict_batch(requests) == alone
    assert [len(text) for text in alone] == [30, 5, 0, 17]


def test_a_bad_request_fails_alone_in_its_batch(runner: Runner) -> None:
    good = {"prompt": "The", "length": 3, "seed": 0}
    results = runner.predict_batch([good, {"length": -1}, {"temperature": 0}], skip_errors=True)
    assert results[0] == runner.predict(**good)
    assert [type(result) for result in results[1:]] == [InvalidInput, InvalidInput]
    with pytest.raises(InvalidInput, match="length"):
        list(runner.predict_stream(length="long"))


def test_an_order_it_cannot_learn_refuses_to_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="order"):
        Runner(chargen.CharGen, data_path=tmp_path, order=0).load()
    with Runner(chargen.CharGen, data_path=tmp_path, order=2) as runner:
        assert len("".join(runner.predict_stream(length=20, seed=0))) == 20


def test_served_streams_match_the_runner_batched_or_not(start_server: StartServer, runner: Runner) -> None:
    server = start_server(example("chargen.py:CharGen"))
    requests = [{"prompt": "The lamp", "length": 50 + 10 * i, "seed": i} for i in range(6)]

    def stream(request: dict[str, Any]) -> str:
        with Client(server.grpc_address) as client:
            return "".join(client.predict_stream(**request))

    with ThreadPoolExecutor(len(requests)) as pool:  # concurrent: batched together as they come
        texts = list(pool.map(stream, requests))
    assert texts == ["".join(runner.predict_stream(**request)) for request in requests]
    events = httpx.post(
        f"{server.http_url}/models/chargen/predict",
        json=requests[0],
        headers={"accept": "text/event-stream"},
        timeout=30,
    ).text
    assert events.count("data: ") == 51  # a character each, then the end
    assert events.endswith("event: end\ndata: {}\n\n")
