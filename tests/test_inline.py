"""A lone request to a cheap model is computed on the event loop; company, cost or a setting send it
back to the batcher and the model threads (modelpod/serving/inline.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from modelpod.serving.inline import MIN_RUNS

from conftest import ServerProcess, StartServer

MODELS = ("tests/servable_inline.py:Where", "tests/servable_inline.py:PlainWhere",
          "tests/servable_inline.py:TensorWhere")  # fmt: skip


@pytest.fixture
def server(start_server: StartServer) -> ServerProcess:
    # a generous limit: on a busy machine a model thread stretches a tiny compute past 1 ms now and then
    return start_server(*MODELS, env={"MODELPOD_INLINE_MS": "50"})


def threads(server: ServerProcess, model: str, count: int, **arguments: Any) -> list[str]:
    """The thread that answered each of `count` requests sent one after another."""
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        answers = [http.post(f"/models/{model}/predict", json=arguments) for _ in range(count)]
    assert all(answer.status_code == 200 for answer in answers), answers[-1].text
    return [answer.json()["thread"] for answer in answers]


def on_loop(name: str) -> bool:
    return not name.startswith(("modelpod-batcher", "modelpod-model"))


@pytest.mark.parametrize(
    ("model", "usual"), [("where", "modelpod-batcher"), ("plainwhere", "modelpod-model")]
)
def test_lone_requests_move_to_the_loop_once_the_model_proved_cheap(
    server: ServerProcess, model: str, usual: str
) -> None:
    seen = threads(server, model, 4 * MIN_RUNS)
    assert all(name.startswith(usual) for name in seen[:MIN_RUNS]), seen  # first it earns its record
    # then lone requests are computed on the loop (a compute stretched past the limit by a busy
    # machine sends it back to its threads for another MIN_RUNS: hence "any", over four times that)
    assert any(on_loop(name) for name in seen[MIN_RUNS:]), seen


def test_a_slow_compute_sends_the_model_back_to_its_threads(server: ServerProcess) -> None:
    assert any(on_loop(name) for name in threads(server, "plainwhere", 4 * MIN_RUNS))
    threads(server, "plainwhere", 1, sleep=0.2)  # over the limit
    assert all(name.startswith("modelpod-model") for name in threads(server, "plainwhere", MIN_RUNS))


def test_concurrent_requests_are_batched_as_before(server: ServerProcess) -> None:
    threads(server, "where", MIN_RUNS + 2)
    with httpx.Client(base_url=server.http_url, timeout=30) as http, ThreadPoolExecutor(8) as pool:

        def call(_: int) -> dict[str, Any]:
            return http.post("/models/where/predict", json={"sleep": 0.1}).json()  # type: ignore[no-any-return]

        answers = list(pool.map(call, range(32)))
    assert max(answer["rows"] for answer in answers) > 1  # company was batched
    assert sum(on_loop(answer["thread"]) for answer in answers) <= 1  # (the very first may be alone)


def test_a_request_of_many_rows_goes_to_the_batcher(server: ServerProcess) -> None:
    def infer(rows: int) -> list[str]:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 2], "data": [0.5] * (2 * rows)}]}
        answer = httpx.post(f"{server.http_url}/v2/models/tensorwhere/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return list(answer.json()["outputs"][0]["data"])

    assert any(on_loop(infer(1)[0]) for _ in range(4 * MIN_RUNS))
    assert all(name.startswith("modelpod-batcher") for name in infer(3))


def test_a_limit_of_zero_keeps_every_request_on_threads(start_server: StartServer) -> None:
    server = start_server(*MODELS, env={"MODELPOD_INLINE_MS": "0"})
    assert not any(on_loop(name) for name in threads(server, "where", MIN_RUNS + 4))
