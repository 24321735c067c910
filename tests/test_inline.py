"""A lone request to a cheap model is computed on the event loop, and so is every request to a cheap
model that does not batch; company (for a model that batches), cost, waiting or a setting send them
back to the batcher and the model threads (modelpod/serving/inline.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from modelpod.serving.inline import MAX_STRIKES, MIN_RUNS, WEIGHT, InlineGate

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


@contextmanager
def company(server: ServerProcess, seconds: float) -> Iterator[None]:
    """Another request in flight meanwhile (a batched model sleeping): no request is alone."""
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(
            httpx.post, f"{server.http_url}/models/where/predict", json={"sleep": seconds}, timeout=30
        )
        time.sleep(0.2)  # under way
        yield
        assert busy.result().status_code == 200


def test_under_load_a_cheap_model_that_does_not_batch_is_computed_on_the_loop(server: ServerProcess) -> None:
    with company(server, 4.0):
        seen = threads(server, "plainwhere", 3 * MIN_RUNS)
    assert all(name.startswith("modelpod-model") for name in seen[:MIN_RUNS]), seen  # earning its place
    assert all(on_loop(name) for name in seen[MIN_RUNS:]), seen  # then it stays: no flipping back


def test_a_model_that_blocked_the_loop_earns_its_place_back_more_slowly(server: ServerProcess) -> None:
    with company(server, 6.0):
        assert on_loop(threads(server, "plainwhere", MIN_RUNS + 1)[-1])
        assert on_loop(threads(server, "plainwhere", 1, sleep=0.08)[0])  # waited on the loop: a strike
        seen = threads(server, "plainwhere", 2 * MIN_RUNS + 2)
    assert all(name.startswith("modelpod-model") for name in seen[: 2 * MIN_RUNS]), seen
    assert on_loop(seen[-1]), seen


def test_the_steady_gate_averages_cpu_time_and_refuses_waits() -> None:
    gate = InlineGate(limit_ms=1.0)
    key = ("m", "1")
    for _ in range(MIN_RUNS - 1):  # on a model thread, waits (for the interpreter lock) do not count
        gate.observe_cpu(key, compute=0.050, cpu=0.0001, on_loop=False)
    assert not gate.steady(key)
    gate.observe_cpu(key, compute=0.050, cpu=0.0001, on_loop=False)
    assert gate.steady(key)
    assert gate.takes(key, None, in_flight=3)
    gate.observe_cpu(key, compute=0.050, cpu=0.0001, on_loop=False)  # sent to a thread before it moved
    assert gate.steady(key)  # its wait (the interpreter lock's, as likely as not) is no strike
    gate.observe_cpu(key, compute=0.006, cpu=0.006, on_loop=True)  # a collection lands in one compute
    assert gate.steady(key)  # counted at half the limit, it moves the average by a sixteenth of it
    for _ in range(WEIGHT * 2):  # computes that cost more than a quarter of the limit, again and again
        gate.observe_cpu(key, compute=0.0005, cpu=0.0005, on_loop=True)
    assert not gate.steady(key)
    for _ in range(MIN_RUNS):  # an average between an eighth and a quarter: it stays where it is
        gate.observe_cpu(key, compute=0.0002, cpu=0.0002, on_loop=False)
    assert not gate.steady(key)
    for _ in range(WEIGHT * 2):
        gate.observe_cpu(key, compute=0.0001, cpu=0.0001, on_loop=False)
    assert gate.steady(key)
    gate.observe_cpu(key, compute=0.050, cpu=0.0001, on_loop=True)  # waited on the loop: a strike
    assert not gate.steady(key)
    for _ in range(2 * MIN_RUNS - 1):
        gate.observe_cpu(key, compute=0.0001, cpu=0.0001, on_loop=False)
    assert not gate.steady(key)
    gate.observe_cpu(key, compute=0.0001, cpu=0.0001, on_loop=False)
    assert gate.steady(key)
    for strikes in range(2, MAX_STRIKES + 1):  # blocked the loop again: four times as many, then never
        gate.observe_cpu(key, compute=0.050, cpu=0.0001, on_loop=True)
        for _ in range(MIN_RUNS << strikes):
            gate.observe_cpu(key, compute=0.0001, cpu=0.0001, on_loop=False)
        assert gate.steady(key) == (strikes < MAX_STRIKES)
    assert not gate.takes(key, batcher=object(), in_flight=3)  # type: ignore[arg-type]  # a batching model: lone only
    assert not InlineGate(limit_ms=0).steady(key)
