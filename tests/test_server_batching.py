"""Batches form in a real server under concurrent load; an idle server answers a lone request at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from modelpod import Client

from conftest import ServerProcess, StartServer, launch, servable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch((servable("Batched"), servable("BatchedWords")), tmp_path_factory.mktemp("batching"),
                     ("--rpc-max-workers", "32"))  # fmt: skip
    yield process
    assert process.stop() == 0


def batch_sizes(server: ServerProcess, model: str) -> dict[int, int]:
    listing = httpx.get(f"{server.http_url}/models/{model}").json()
    return {int(size): count for size, count in listing["versions"][0]["batch_sizes"].items()}


def test_concurrent_requests_are_batched_and_answered_correctly(server: ServerProcess) -> None:
    before = batch_sizes(server, "batched")
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(64)]

    def infer(x: np.ndarray) -> np.ndarray:
        with Client(server.http_url, model="batched") as client:
            return client.infer({"x": x})["y"]

    with ThreadPoolExecutor(32) as executor:
        answers = list(executor.map(infer, rows))
    assert all(np.array_equal(answer, x * 2) for answer, x in zip(answers, rows, strict=True))
    after = batch_sizes(server, "batched")
    grown = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in grown.items()) == 64  # every row in exactly one batch
    assert max(size for size, count in grown.items() if count) > 1, grown  # batches really formed
    assert max(after) <= 16


def test_multi_row_requests_fill_several_slots(server: ServerProcess) -> None:
    with Client(server.grpc_address, model="batched") as client:
        x = np.arange(40, dtype=np.float32).reshape(10, 4)
        assert np.array_equal(client.infer({"x": x})["y"], x * 2)


def test_an_idle_server_answers_a_lone_request_without_the_delay(server: ServerProcess) -> None:
    with Client(server.http_url, model="batched") as client:
        client.infer({"x": np.ones((1, 4), dtype=np.float32)})
        time.sleep(0.2)  # idle again
        started = time.monotonic()
        client.infer({"x": np.ones((1, 4), dtype=np.float32)})
        assert time.monotonic() - started < 0.15  # the delay is 200 ms; the model takes 5


def test_keyword_models_batch_and_fail_only_the_failing_item(server: ServerProcess) -> None:
    words = ["alpha", "", "gamma", "delta"]

    def predict(word: str) -> str:
        with Client(server.http_url, model="words") as client:
            try:
                return str(client.predict(word=word))
            except Exception as error:
                return type(error).__name__

    with ThreadPoolExecutor(4) as executor:
        assert list(executor.map(predict, words)) == ["ALPHA", "ModelError", "GAMMA", "DELTA"]


def test_a_request_past_its_timeout_gets_504(server: ServerProcess) -> None:
    response = httpx.post(f"{server.http_url}/models/words/predict", json={"word": "x"},
                          headers={"request-timeout": "0"})  # fmt: skip
    assert response.status_code == 504
    assert "deadline had passed" in response.json()["error"]
    bad = httpx.post(
        f"{server.http_url}/models/words/predict", json={"word": "x"}, headers={"x-priority": "high"}
    )
    assert bad.status_code == 400


def test_batching_settings_are_visible(server: ServerProcess) -> None:
    listing = httpx.get(f"{server.http_url}/models/batched").json()
    assert listing["batching"] == {"max_batch_size": 16, "max_batch_delay_ms": 200.0, "max_queue_size": 1024,
                                   "preferred_batch_sizes": []}  # fmt: skip
    config = httpx.get(f"{server.http_url}/v2/models/batched/config").json()
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 200000


def test_batching_can_be_set_for_every_model_from_the_command_line(start_server: StartServer) -> None:
    server = start_server(servable("Echo"), args=("--max-batch-size", "4", "--max-batch-delay-ms", "2"))
    config = httpx.get(f"{server.http_url}/v2/models/echo/config").json()
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000

    def predict(i: int) -> str:
        return str(httpx.post(f"{server.http_url}/models/echo/predict", json={"text": str(i)}).json()["text"])

    with ThreadPoolExecutor(8) as executor:
        assert list(executor.map(predict, range(8))) == [str(i) for i in range(8)]


def test_a_client_that_hangs_up_has_its_queued_request_dropped(start_server: StartServer) -> None:
    server = start_server(servable("Tagged"))
    url = f"{server.http_url}/models/tagged/predict"
    with ThreadPoolExecutor(1) as executor:
        first = executor.submit(httpx.post, url, json={"tag": "A", "seconds": 1.0}, timeout=30)
        time.sleep(0.2)  # A is running; B will queue behind it
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json={"tag": "B"}, timeout=0.3)  # gives up and hangs up while queued
        assert first.result().json() == "A"
    assert httpx.post(url, json={"tag": "C"}, timeout=30).json() == "C"
    assert (server.data_path / "tags.log").read_text().split() == ["A", "C"]
