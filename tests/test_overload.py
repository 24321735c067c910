"""Overload against a real server: bounded queues refuse at once, deadlines and hang-ups drop work
before compute, the client waits as long as Retry-After says, and bodies are bounded.

`Queued` batches (2 rows per batch, room for 2 queued rows); `Lone` does not batch (room for 2
waiting requests, and the server has only 2 model threads). Both write every request they compute
to a log under the data path, so each test can tell what ran from what was dropped: a request is
either answered with its own result, or refused with a clear error and never computed. None is lost.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from modelpod import Client
from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ROOT, ServerProcess, StartServer, launch

FAULTS = ROOT / "tests" / "servable_faults.py"
SLOW = 2.0  # seconds a request that fills a queue computes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tuple(f"{FAULTS}:{name}" for name in ("Queued", "Lone", "Affine"))
    process = launch(models, tmp_path_factory.mktemp("overload") / "appdata", ("--rpc-max-workers", "2"))
    yield process
    assert process.stop() == 0, process.output


def computed(server: ServerProcess, model: str) -> list[str]:
    """The tags a model computed, in order."""
    log = server.data_path / f"{model}.log"
    return log.read_text().split() if log.exists() else []


def predict(server: ServerProcess, model: str, timeout: float = 60, **body: object) -> httpx.Response:
    return httpx.post(f"{server.http_url}/models/{model}/predict", json=body, timeout=timeout)


def timed(server: ServerProcess, model: str, **body: object) -> tuple[httpx.Response, float]:
    response = predict(server, model, **body)
    return response, time.monotonic()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def refusals(server: ServerProcess, model: str) -> float:
    """How many requests to `model` the server refused as unavailable, from its metrics."""
    text = httpx.get(f"{server.http_url}/metrics").text
    pattern = rf'modelpod_requests_total{{[^}}]*model="{model}"[^}}]*outcome="unavailable"[^}}]*}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def assert_affine_serves(server: ServerProcess) -> None:
    with Client(server.http_url, model="affine") as affine:
        a, b = np.ones((2, 3), np.float32), np.full((2, 2), 0.5, np.float32)
        expected = a @ np.arange(6, dtype=np.float32).reshape(3, 2) + b
        np.testing.assert_array_equal(affine.infer({"a": a, "b": b})["y"], expected)


BUSY = {"queued": 1, "lone": 2}  # slow requests that keep the model busy: its batch, or its 2 threads
FULL = {"queued": 3, "lone": 4}  # and that also fill its queue (2 rows) or its waiting room (2)


def occupy(
    server: ServerProcess, model: str, executor: ThreadPoolExecutor, count: int
) -> list[Future[httpx.Response]]:
    """`count` slow requests, each sent once the one before is running or waiting, as its place says."""
    futures = []
    for sent in range(1, count + 1):
        futures.append(executor.submit(predict, server, model, tag=unique("filler"), seconds=SLOW))
        waiting = max(sent - BUSY[model], 0)
        deadline = time.monotonic() + 15
        while live_state(server, model) != (sent, waiting):
            assert time.monotonic() < deadline, f"{model} never had {sent} requests in, {waiting} waiting"
            time.sleep(0.01)
    return futures


def live_state(server: ServerProcess, model: str) -> tuple[int, int]:
    """Requests being answered (all models), and those waiting for `model`, from the metrics."""
    text = httpx.get(f"{server.http_url}/metrics", timeout=30).text
    in_flight = re.search(r"^modelpod_in_flight_requests (\S+)$", text, re.MULTILINE)
    depth = re.search(rf'^modelpod_queue_depth_rows{{model="{model}"[^}}]*}} (\S+)$', text, re.MULTILINE)
    return int(float(in_flight.group(1))) if in_flight else 0, int(float(depth.group(1))) if depth else 0


@pytest.mark.parametrize("model", ["queued", "lone"])
def test_a_full_queue_refuses_at_once_with_retry_after_and_loses_nothing(
    server: ServerProcess, model: str
) -> None:
    sent = [unique(f"flood-{model}") for _ in range(10)]
    with ThreadPoolExecutor(len(sent)) as executor:
        answers = list(executor.map(lambda tag: timed(server, model, tag=tag, seconds=SLOW), sent))
    accepted = [(tag, r, at) for tag, (r, at) in zip(sent, answers, strict=True) if r.status_code == 200]
    refused = [(tag, r, at) for tag, (r, at) in zip(sent, answers, strict=True) if r.status_code != 200]
    for tag, response, _ in accepted:
        assert response.json() == tag
    for _, response, _ in refused:
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-modelpod-error"] == "Unavailable"
        assert "is overloaded" in response.json()["error"]
    # at most 2 running (a batch of 2, or 2 threads) and 2 waiting; as few as 2 when all 10 arrived
    # before any started, so that 2 filled the queue and then ran as the first batch
    assert 2 <= len(accepted) <= 4, [r.status_code for r, _ in answers]
    assert max(at for _, _, at in refused) < min(at for _, _, at in accepted)  # refused at once
    ran = computed(server, model)
    assert sorted(tag for tag in ran if tag.startswith(f"flood-{model}")) == sorted(
        tag for tag, _, _ in accepted
    )
    assert_affine_serves(server)


def test_the_client_waits_as_retry_after_says_then_succeeds(server: ServerProcess) -> None:
    before = refusals(server, "queued")
    with ThreadPoolExecutor(4) as executor:
        fillers = occupy(server, "queued", executor, FULL["queued"])
        assert predict(server, "queued", tag=unique("probe")).status_code == 503  # the queue is full
        with Client(server.http_url, model="queued", retries=6) as client:
            started = time.monotonic()
            assert client.predict(tag="patient") == "patient"
            waited = time.monotonic() - started
        assert all(filler.result().status_code == 200 for filler in fillers)
    refused_client = refusals(server, "queued") - before - 1  # less the probe
    assert refused_client >= 1
    assert waited >= refused_client * 1.0  # each retry waited at least the 1 s the server asked for
    assert "patient" in computed(server, "queued")


def test_grpc_refuses_at_once_with_unavailable_and_retry_after(server: ServerProcess) -> None:
    with ThreadPoolExecutor(4) as executor, grpc.insecure_channel(server.grpc_address) as channel:
        fillers = occupy(server, "queued", executor, FULL["queued"])
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(
            model="queued", method="predict", payload=native.pack({"tag": unique("g")})
        )
        with pytest.raises(grpc.RpcError) as refused:
            stub.Call(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "is overloaded" in refused.value.details()
        assert dict(refused.value.trailing_metadata())["retry-after"] == "1"
        assert all(filler.result().status_code == 200 for filler in fillers)


@pytest.mark.parametrize("model", ["queued", "lone"])
def test_a_request_past_its_deadline_is_dropped_before_compute(server: ServerProcess, model: str) -> None:
    tag = unique(f"late-{model}")
    with ThreadPoolExecutor(4) as executor:
        fillers = occupy(server, model, executor, BUSY[model])
        late = httpx.post(f"{server.http_url}/models/{model}/predict", json={"tag": tag},
                          headers={"request-timeout": "0.5"}, timeout=30)  # fmt: skip
        assert late.status_code == 504, late.text
        assert "timeout of 0.5 s" in late.json()["error"]
        assert all(filler.result().status_code == 200 for filler in fillers)
    assert predict(server, model, tag=unique("after")).status_code == 200
    assert tag not in computed(server, model)


def test_a_grpc_deadline_drops_the_queued_request_before_compute(server: ServerProcess) -> None:
    tag = unique("grpc-late")
    with ThreadPoolExecutor(4) as executor, grpc.insecure_channel(server.grpc_address) as channel:
        fillers = occupy(server, "lone", executor, BUSY["lone"])
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(model="lone", method="predict", payload=native.pack({"tag": tag}))
        with pytest.raises(grpc.RpcError) as late:
            stub.Call(request, timeout=0.5)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert all(filler.result().status_code == 200 for filler in fillers)
    assert predict(server, "lone", tag=unique("after")).status_code == 200
    assert tag not in computed(server, "lone")


@pytest.mark.parametrize("model", ["queued", "lone"])
def test_a_client_that_hangs_up_has_its_waiting_request_dropped(server: ServerProcess, model: str) -> None:
    tag = unique(f"gone-{model}")
    with ThreadPoolExecutor(4) as executor:
        fillers = occupy(server, model, executor, BUSY[model])
        with pytest.raises(httpx.ReadTimeout):
            predict(server, model, tag=tag, timeout=0.5)  # gives up and hangs up while it waits
        assert all(filler.result().status_code == 200 for filler in fillers)
    # its place is free again: a full queue's worth of requests is accepted
    with ThreadPoolExecutor(4) as executor:
        assert all(f.result().status_code == 200 for f in occupy(server, model, executor, FULL[model]))
    assert tag not in computed(server, model)


def test_a_cancelled_grpc_call_is_dropped_before_compute(server: ServerProcess) -> None:
    tag = unique("cancelled")
    with ThreadPoolExecutor(4) as executor, grpc.insecure_channel(server.grpc_address) as channel:
        fillers = occupy(server, "queued", executor, BUSY["queued"])
        stub = native_pb2_grpc.ModelServiceStub(channel)
        call = stub.Call.future(native_pb2.CallRequest(model="queued", method="predict",
                                                       payload=native.pack({"tag": tag})))  # fmt: skip
        time.sleep(0.3)
        assert call.cancel()
        assert all(filler.result().status_code == 200 for filler in fillers)
    assert predict(server, "queued", tag=unique("after")).status_code == 200
    assert tag not in computed(server, "queued")


# -- bounded bodies ------------------------------------------------------------------------------


def test_bodies_over_the_limit_are_refused_413_on_every_route(
    start_server: StartServer, tmp_path: Path
) -> None:
    small = start_server(f"{FAULTS}:Affine", f"{FAULTS}:Careful", args=("--max-message-size", "64KiB"))
    big = np.zeros((8192, 3), np.float32)  # 96 KiB
    with httpx.Client(base_url=small.http_url, timeout=30) as http:
        native_too_big = http.post("/models/careful/predict", json={"text": "x" * 70_000})
        assert native_too_big.status_code == 413
        assert "at most 65536" in native_too_big.json()["error"]
        with Client(small.http_url, model="affine") as affine, pytest.raises(Exception, match="65536"):
            affine.infer({"a": big, "b": np.zeros((8192, 2), np.float32)})

        def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as it reads
            yield b'{"text": "'
            for _ in range(100):
                yield b"x" * 1000
            yield b'"}'

        streamed = http.post(
            "/models/careful/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert "over 65536 bytes" in streamed.json()["error"]
        assert http.post("/models/careful/predict", json={"text": "ok"}).json() == {"text": "ok", "length": 2}
    with grpc.insecure_channel(small.grpc_address) as channel:
        request = pb.ModelInferRequest(model_name="affine")
        request.inputs.add(name="a", datatype="FP32", shape=list(big.shape))
        request.raw_input_contents.append(big.tobytes())
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_affine_serves(small)
