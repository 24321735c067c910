"""Faults injected into a real server: each fails only its own request, while the others are answered.

A model in worker processes (`Fragile`, two workers) segfaults, exits, aborts, is killed from
outside (what the OOM killer does) or hangs; a model in threads hangs past its deadline; models
fail to load. Every test runs healthy traffic to another model (`Steady`) meanwhile and checks
each of its answers, and a second request on the faulty model's other worker where it can.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelpod import Client, ModelLoadError, Timeout
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc

from conftest import ROOT, ServerProcess, launch

FAULTS = ROOT / "tests" / "servable_faults.py"
MODEL_TIMEOUT = 4  # seconds a call in a worker process may run (--model-timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tuple(
        f"{FAULTS}:{name}"
        for name in ("Fragile", "Steady", "Stall", "NoWeights", "NoWeightsInWorkers", "Hog", "BatchedHang")
    )
    args = ("--model-timeout", str(MODEL_TIMEOUT), "--rpc-max-workers", "16", "--model-pool-size", "5")
    process = launch(models, tmp_path_factory.mktemp("faults") / "appdata", args)
    yield process
    assert process.stop() == 0, process.output


class HealthyTraffic:
    """Requests to `steady` from a thread while a fault happens elsewhere; every answer is checked."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = f"{server.http_url}/v2/models/steady/infer"
        self.answered = 0
        self.wrong: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, daemon=True)

    def __enter__(self) -> HealthyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _send(self) -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                x = rng.normal(size=(int(rng.integers(1, 4)), 3))
                body = {
                    "inputs": [
                        {"name": "x", "datatype": "FP64", "shape": list(x.shape), "data": x.ravel().tolist()}
                    ]
                }
                try:
                    response = http.post(self.url, json=body)
                    (output,) = response.json()["outputs"]
                    y = np.array(output["data"]).reshape(output["shape"])
                    if not np.allclose(y, x * 3 + 1):
                        self.wrong.append(f"wrong answer {y} for {x}")
                    else:
                        self.answered += 1
                except Exception as error:
                    self.wrong.append(f"{type(error).__name__}: {error}")
                time.sleep(0.02)

    def assert_unaffected(self, at_least: int = 3) -> None:
        """No wrong answer or error, and at least `at_least` answers (waiting for them if need be)."""
        deadline = time.monotonic() + 30
        while self.answered < at_least and not self.wrong and time.monotonic() < deadline:
            time.sleep(0.02)
        self.__exit__()
        assert not self.wrong, self.wrong[:3]
        assert self.answered >= at_least, self.answered


def predict(server: ServerProcess, model: str, timeout: float = 60, headers: dict[str, str] | None = None,
            **body: Any) -> httpx.Response:  # fmt: skip
    return httpx.post(
        f"{server.http_url}/models/{model}/predict", json=body, headers=headers, timeout=timeout
    )


def wait_for_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.02)
    return path.read_text()


def two_ready_workers(server: ServerProcess, timeout: float = 30) -> set[int]:
    """The pids of fragile's two workers, once both answer: two overlapping requests run on two pids."""
    deadline = time.monotonic() + timeout
    with ThreadPoolExecutor(2) as executor:
        while True:
            tags = [f"probe-{uuid.uuid4().hex}" for _ in range(2)]
            answers = executor.map(
                lambda tag: predict(server, "fragile", how="wait", seconds=0.3, tag=tag), tags
            )
            pids = {answer.json()["pid"] for answer in answers}
            if len(pids) == 2:
                return pids
            assert time.monotonic() < deadline, "the pool did not get its two workers back"


def busy_on_one_worker(executor: ThreadPoolExecutor, server: ServerProcess, tag: str,
                       seconds: float) -> tuple[Future[httpx.Response], int]:  # fmt: skip
    """A request that keeps one worker busy for `seconds`; returns it and that worker's pid."""
    future = executor.submit(predict, server, "fragile", how="wait", seconds=seconds, tag=tag)
    return future, int(wait_for_file(server.data_path / "pids" / tag))


@pytest.mark.parametrize(
    ("how", "reason"),
    [("segfault", "signal SIGSEGV"), ("exit", "exit code 3"), ("abort", "signal SIGABRT")],
)
def test_a_dying_worker_fails_only_the_request_it_ran(server: ServerProcess, how: str, reason: str) -> None:
    before = two_ready_workers(server)
    with HealthyTraffic(server) as healthy, ThreadPoolExecutor(2) as executor:
        survivor, busy_pid = busy_on_one_worker(executor, server, f"beside-{how}", seconds=1.5)
        died = predict(server, "fragile", how=how)  # the other worker is the only idle one
        assert died.status_code == 500, died.text
        message = died.json()["error"]
        assert f"the worker process running model fragile:1 died ({reason}" in message
        assert died.headers["x-error-id"] in message
        answer = survivor.result(timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"pid": busy_pid, "how": "wait", "tag": f"beside-{how}"}
        healthy.assert_unaffected()
    after = two_ready_workers(server)
    assert busy_pid in after
    assert len(before - after) == 1  # the one that died was replaced by a new process
    server.wait_for_line(r"restarted a worker of model fragile:1")
    assert predict(server, "fragile").status_code == 200


def test_a_worker_killed_from_outside_fails_only_its_request(server: ServerProcess) -> None:
    """What the OOM killer does: SIGKILL to the worker while it computes."""
    two_ready_workers(server)
    with HealthyTraffic(server) as healthy, ThreadPoolExecutor(2) as executor:
        survivor, survivor_pid = busy_on_one_worker(executor, server, "survivor", seconds=2.0)
        victim, victim_pid = busy_on_one_worker(executor, server, "victim", seconds=60)
        assert victim_pid != survivor_pid
        os.kill(victim_pid, signal.SIGKILL)
        killed = victim.result(timeout=30)
        assert killed.status_code == 500, killed.text
        assert (
            "died (signal SIGKILL, e.g. from the OOM killer) while running this request"
            in killed.json()["error"]
        )
        assert survivor.result(timeout=30).json()["pid"] == survivor_pid
        healthy.assert_unaffected()
    assert victim_pid not in two_ready_workers(server)


def test_a_call_past_the_model_timeout_is_abandoned_and_its_worker_replaced(server: ServerProcess) -> None:
    before = two_ready_workers(server)
    with HealthyTraffic(server) as healthy:
        started = time.monotonic()
        hung = predict(server, "fragile", how="hang")
        assert hung.status_code == 504, hung.text
        assert f"did not answer within {MODEL_TIMEOUT} s; its worker was replaced" in hung.json()["error"]
        assert time.monotonic() - started < MODEL_TIMEOUT + 20  # abandoned, not waited for (an hour)
        healthy.assert_unaffected()
    after = two_ready_workers(server)
    assert len(before - after) == 1


def test_a_request_deadline_abandons_a_hung_worker_call_and_replaces_the_worker(
    server: ServerProcess,
) -> None:
    """The client's deadline (Request-Timeout header) bounds the worker call too, not only the answer."""
    before = two_ready_workers(server)
    with HealthyTraffic(server) as healthy:
        hung = predict(server, "fragile", headers={"request-timeout": "1"}, how="hang")
        assert hung.status_code == 504, hung.text
        assert "DEADLINE" not in hung.text  # a message for people: the timeout, in seconds
        assert "1 s" in hung.json()["error"]
        server.wait_for_line(r"did not answer within 0\.\d+ s; its worker was replaced")
        healthy.assert_unaffected()
    after = two_ready_workers(server)
    assert len(before - after) == 1  # replaced long before --model-timeout


def test_a_request_deadline_bounds_a_batch_in_worker_processes(server: ServerProcess) -> None:
    """A batch runs in its worker until the latest deadline of its requests, not until --model-timeout."""
    first = predict(server, "batchedhang").json()["pid"]
    with HealthyTraffic(server) as healthy:
        started = time.monotonic()
        hung = predict(server, "batchedhang", headers={"request-timeout": "1"}, hang=True)
        assert hung.status_code == 504, hung.text
        server.wait_for_line(r"model batchedhang:1 did not answer within 0\.\d+ s; its worker was replaced")
        assert time.monotonic() - started < MODEL_TIMEOUT  # the worker went at the deadline
        healthy.assert_unaffected()
    answer = predict(server, "batchedhang")
    assert answer.status_code == 200, answer.text
    assert answer.json()["pid"] != first  # a new worker


def test_a_grpc_deadline_abandons_a_hung_worker_call(server: ServerProcess) -> None:
    with (
        Client(server.grpc_address, model="fragile", timeout=1.0) as fragile,
        HealthyTraffic(server) as healthy,
    ):
        with pytest.raises(Timeout):
            fragile.predict(how="hang")
        healthy.assert_unaffected(at_least=1)
    two_ready_workers(server)
    with Client(server.grpc_address, model="fragile") as fragile:
        assert fragile.predict()["how"] == "ok"


def test_a_thread_model_that_hangs_past_the_deadline_is_answered_504(server: ServerProcess) -> None:
    with HealthyTraffic(server) as healthy:
        stalled = predict(server, "stall", headers={"request-timeout": "0.5"}, seconds=5, tag="stalled")
        assert stalled.status_code == 504, stalled.text
        assert "no answer within the request's timeout of 0.5 s" in stalled.json()["error"]
        assert predict(server, "stall", tag="next").json() == "next"  # other threads serve it meanwhile
        healthy.assert_unaffected()


@pytest.mark.parametrize("model", ["noweights", "noweightsinworkers"])
def test_a_model_that_fails_to_load_says_why_while_the_others_serve(
    server: ServerProcess, model: str
) -> None:
    why = "weights.bin is missing from the model folder"
    assert any(f"{model}:1" in line and why in line for line in server.lines), server.output
    with httpx.Client(base_url=server.http_url, timeout=30) as http, HealthyTraffic(server) as healthy:
        ready = http.get(f"/v2/models/{model}/ready")
        assert (ready.status_code, ready.json()) == (503, {"name": model, "ready": False})
        assert why in http.get(f"/v2/models/{model}").json()["load_error"]
        [version] = http.get(f"/models/{model}").json()["versions"]
        assert why in version["load_error"]
        assert version["loaded"] is False
        refused = http.post(f"/models/{model}/predict", json={})
        assert refused.status_code == 503
        assert why in refused.json()["error"]
        assert http.get("/v2/models/steady").json().get("load_error") is None
        healthy.assert_unaffected()
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ModelReady(pb.ModelReadyRequest(name=model), timeout=30).ready is False
        assert stub.ModelReady(pb.ModelReadyRequest(name="steady"), timeout=30).ready is True
    with (
        Client(server.grpc_address, model=model, retries=0) as client,
        pytest.raises(ModelLoadError, match=why),
    ):
        client.predict()


def test_a_models_memory_budget_evicts_its_oldest_version_before_a_load_would_pass_it(
    server: ServerProcess,
) -> None:
    """Three versions of 32 MiB do not fit hog's 80 MiB: the third load evicts the first, first."""
    with httpx.Client(base_url=server.http_url, timeout=60) as http:
        for version in ("2", "3"):
            assert http.post(f"/models/hog/versions/{version}/initialize", json={}).status_code == 200
        for version in ("1", "2", "3"):
            assert http.post(f"/models/hog/versions/{version}/predict", json={}).json() == version
        versions = http.get("/models/hog").json()["versions"]
    assert {v["version"] for v in versions if v["loaded"]} == {"2", "3"}
    evicted = server.wait_for_line(r"evicting hog:1 \(pool full\)")
    loaded = server.wait_for_line(r"loaded hog:3 in")
    assert server.lines.index(evicted) < server.lines.index(loaded)  # room was made before the load
