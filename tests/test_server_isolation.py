"""Models in worker processes behind a real server: parallel, and a crash fails only its own requests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import ROOT, ServerProcess, launch, servable

WORKERS = ROOT / "tests" / "servable_workers.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (f"{WORKERS}:Crash", f"{WORKERS}:Spin", servable("Echo"))
    args = ("--workers", "2", "--model-timeout", "3", "--rpc-max-workers", "8")
    process = launch(models, tmp_path_factory.mktemp("isolation") / "appdata", args)
    yield process
    assert process.stop() == 0, process.output


def predict(server: ServerProcess, model: str, **body: object) -> httpx.Response:
    return httpx.post(f"{server.http_url}/models/{model}/predict", json=body, timeout=30)


def test_models_run_in_worker_processes_not_in_the_server(server: ServerProcess) -> None:
    pids = {predict(server, "crash").json() for _ in range(8)}
    assert server.process.pid not in pids
    assert 1 <= len(pids) <= 2


def test_two_workers_run_two_requests_at_once(server: ServerProcess) -> None:
    with ThreadPoolExecutor(2) as executor:
        answers = list(executor.map(lambda _: predict(server, "spin", seconds=0.4).json(), range(2)))
    first, second = sorted(answers, key=lambda a: a["start"])
    assert first["pid"] != second["pid"]
    assert second["start"] < first["end"]  # they overlapped: two interpreters, two GILs


@pytest.mark.parametrize("how", ["segfault", "exit", "kill"])
def test_a_dying_worker_fails_only_its_request_and_is_replaced(server: ServerProcess, how: str) -> None:
    died = predict(server, "crash", how=how)
    assert died.status_code == 500
    message = died.json()["error"]
    assert "the worker process running model crash:1 died" in message
    reason = {"segfault": "SIGSEGV", "exit": "exit code 3", "kill": "SIGKILL"}[how]
    assert reason in message
    assert predict(server, "echo", text="still here").json()["text"] == "still here"
    answers = [predict(server, "crash") for _ in range(20)]  # the replacement comes up with backoff
    assert answers[-1].status_code == 200, answers[-1].text


def test_a_hanging_model_is_abandoned_and_its_worker_replaced(server: ServerProcess) -> None:
    hung = predict(server, "crash", how="hang")
    assert hung.status_code == 504
    assert "did not answer within 3 s; its worker was replaced" in hung.json()["error"]
    assert predict(server, "crash").status_code == 200


def test_memory_of_worker_processes_counts_for_the_pool(server: ServerProcess) -> None:
    listing = httpx.get(f"{server.http_url}/models/crash").json()
    assert listing["versions"][0]["loaded"] is True
    for pid in {predict(server, "crash").json() for _ in range(4)}:
        assert os.path.exists(f"/proc/{pid}")


def test_stopping_the_server_leaves_no_worker_behind(tmp_path_factory: pytest.TempPathFactory) -> None:
    process = launch((f"{WORKERS}:Crash",), tmp_path_factory.mktemp("stop"), ("--workers", "2"))
    pids = {predict(process, "crash").json() for _ in range(6)}
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=30) == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
