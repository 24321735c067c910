"""Training as a background job on a real server: one per version, followed, failed, interrupted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelpod import Client, Conflict, ModelError

from conftest import ROOT, ServerProcess, StartServer, launch

LEARNER = f"{ROOT / 'tests' / 'servable_training.py'}:Learner"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch((LEARNER,), tmp_path_factory.mktemp("training"))
    yield process
    assert process.stop() == 0


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def wait_until_ended(http: httpx.Client, path: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = http.get(path).json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    pytest.fail(f"the training job at {path} did not end within {timeout} s")


def events(http: httpx.Client, path: str) -> list[tuple[str, Any]]:
    """The server-sent events of a route, as (event, data) pairs, read until the stream ends."""
    found, event = [], "message"
    with http.stream("GET", path) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                found.append((event, json.loads(line.partition(":")[2])))
                event = "message"
    return found


def test_a_job_runs_in_the_background_while_the_old_weights_keep_serving(http: httpx.Client) -> None:
    base = "/models/learner/versions/bg"
    http.post(f"{base}/initialize", json={})
    started = http.post(f"{base}/train", json={"steps": 5, "seconds_per_step": 0.2})
    assert started.status_code == 202
    job = started.json()
    assert (job["model"], job["version"], job["state"]) == ("learner", "bg", "running")
    assert job["arguments"] == {"steps": 5, "seconds_per_step": 0.2}

    second = http.post(f"{base}/train", json={"steps": 1})
    assert second.status_code == 409
    assert "already training" in second.json()["error"]
    assert http.post(f"{base}/predict", json={"x": 1}).json() == {"weights": "untrained", "x": 1}

    ended = wait_until_ended(http, f"{base}/train")
    assert ended["state"] == "succeeded"
    assert ended["result"] == {"steps": 5}
    assert ended["progress"]["step"] == 5
    assert ended["finished_at"] >= ended["started_at"]
    assert http.post(f"{base}/predict", json={"x": 2}).json() == {"weights": "trained for 5 steps", "x": 2}
    assert [entry["step"] for entry in http.get(f"{base}/log").json()] == [1, 2, 3, 4, 5]
    listed = {v["version"]: v for v in http.get("/models/learner").json()["versions"]}
    assert listed["bg"]["training"]["state"] == "succeeded"


def test_progress_streams_as_server_sent_events_until_the_job_ends(http: httpx.Client) -> None:
    base = "/models/learner/versions/sse"
    http.post(f"{base}/initialize", json={})
    http.post(f"{base}/train", json={"steps": 1})  # an earlier job: its entries are not this one's
    wait_until_ended(http, f"{base}/train")
    assert http.post(f"{base}/train", json={"steps": 4, "seconds_per_step": 0.1}).status_code == 202
    received = events(http, f"{base}/train/events")
    assert [name for name, _ in received] == ["progress"] * 4 + ["end"]
    assert [data["step"] for _, data in received[:4]] == [1, 2, 3, 4]
    assert received[-1][1]["state"] == "succeeded"
    again = events(http, f"{base}/train/events")  # an ended job: its whole progress, then the end
    assert [name for name, _ in again] == ["progress"] * 4 + ["end"]


def test_a_failed_job_keeps_its_error_and_partial_log_and_the_old_weights(http: httpx.Client) -> None:
    base = "/models/learner/versions/fails"
    http.post(f"{base}/initialize", json={})
    http.post(f"{base}/train", json={"steps": 2})
    wait_until_ended(http, f"{base}/train")
    http.post(f"{base}/train", json={"steps": 5, "fail_at": 3})
    job = wait_until_ended(http, f"{base}/train")
    assert job["state"] == "failed"
    assert job["error_kind"] == "ModelError"
    assert "raised RuntimeError" in job["error"]
    assert job["error"].endswith(": diverged at step 3")
    assert len(job["error_id"]) == 12
    assert job["progress"]["step"] == 2
    assert [e["step"] for e in http.get(f"{base}/log").json()] == [1, 2, 1, 2]
    assert http.post(f"{base}/predict", json={}).json()["weights"] == "trained for 2 steps"


def test_bad_train_requests_are_refused_before_a_job_starts(http: httpx.Client) -> None:
    refused = http.post("/models/learner/train", json={"epochs": 3})
    assert refused.status_code == 400
    assert "epochs" in refused.json()["error"]
    no_version = http.get("/models/learner/versions/never/train")
    assert no_version.status_code == 404
    assert "no version 'never'" in no_version.json()["error"]
    never_trained = http.get("/models/learner/train")
    assert never_trained.status_code == 404
    assert "start one with POST /models/learner/train" in never_trained.json()["error"]


def test_the_client_waits_for_the_job_over_both_transports(server: ServerProcess) -> None:
    for address in (server.http_url, server.grpc_address):
        with Client(address, model="learner", version="client") as client:
            client.initialize()
            assert client.train(steps=3, seconds_per_step=0.05) == {"steps": 3}
            assert client.training()["state"] == "succeeded"
            assert client.predict(x=3) == {"weights": "trained for 3 steps", "x": 3}
            job = client.start_training(steps=3, seconds_per_step=0.3)
            assert job["state"] == "running"
            with pytest.raises(Conflict, match="already training"):
                client.start_training(steps=1)
            with pytest.raises(Conflict):
                client.train(steps=1)
            while client.training()["state"] == "running":
                time.sleep(0.05)
            with pytest.raises(ModelError, match="diverged at step 1") as failure:
                client.train(steps=2, fail_at=1)
            assert failure.value.error_id == client.training()["error_id"]


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{server.http_url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_training_jobs_are_counted_by_state(http: httpx.Client, server: ServerProcess) -> None:
    base = "/models/learner/versions/counted"
    http.post(f"{base}/initialize", json={})
    labels = {"model": "learner", "version": "counted"}
    http.post(f"{base}/train", json={"steps": 3, "seconds_per_step": 0.2})
    assert metric(server, "modelpod_training_jobs_running", **labels) == 1
    wait_until_ended(http, f"{base}/train")
    http.post(f"{base}/train", json={"fail_at": 1})
    wait_until_ended(http, f"{base}/train")
    assert metric(server, "modelpod_training_jobs_running", **labels) == 0
    assert metric(server, "modelpod_training_jobs_total", **labels, outcome="succeeded") == 1
    assert metric(server, "modelpod_training_jobs_total", **labels, outcome="failed") == 1


def test_a_job_the_server_did_not_live_to_finish_reads_as_interrupted(start_server: StartServer) -> None:
    first = start_server(LEARNER)
    with httpx.Client(base_url=first.http_url) as http:
        http.post("/models/learner/train", json={"steps": 100, "seconds_per_step": 0.1})
    first.stop(signal.SIGKILL)
    second = start_server(LEARNER)
    with httpx.Client(base_url=second.http_url) as http:
        job = http.get("/models/learner/train").json()
        assert job["state"] == "failed"
        assert job["error_kind"] == "Interrupted"
        assert "server stopped" in job["error"]
        assert http.post("/models/learner/train", json={"steps": 1}).status_code == 202


def modelpod_cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "modelpod", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


def test_the_command_line_starts_and_follows_a_job(server: ServerProcess) -> None:
    Client(server.http_url, model="learner", version="cli").initialize()
    started = modelpod_cli("train", server.http_url, "learner:cli", "steps=2")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["state"] == "running"
    Client(server.http_url, model="learner", version="cli").train(steps=1)  # waits for the first
    followed = modelpod_cli("train", server.grpc_address, "learner:cli", "steps=3", "seconds_per_step=0.1",
                            "--follow")  # fmt: skip
    assert followed.returncode == 0, followed.stderr
    assert "succeeded" in followed.stdout
    assert '"steps": 3' in followed.stdout
    failed = modelpod_cli("train", server.http_url, "learner:cli", "fail_at=1", "--follow")
    assert failed.returncode == 1
    assert "diverged at step 1" in failed.stderr
    refused = modelpod_cli("train", server.http_url, "learner:cli", "epochs=1")
    assert refused.returncode == 1
    assert "epochs" in refused.stderr
