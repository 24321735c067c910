"""An `async def predict`: awaited on the server's event loop (no model thread), concurrent while it
waits, bounded by the request's timeout, its errors and metrics like any model's; in-process the
`Runner` runs it on a private loop, or awaits it with `predict_async`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.http as triton_http
from servable_async import AsyncEcho, AsyncFails

from modelpod import ModelError, Runner
from modelpod.client import Client

from conftest import ServerProcess, launch

ASYNC = str(Path(__file__).with_name("servable_async.py"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (f"{ASYNC}:AsyncEcho", f"{ASYNC}:AsyncFails")
    process = launch(models, tmp_path_factory.mktemp("async") / "appdata")
    yield process
    assert process.stop() == 0, process.output


def predict(
    server: ServerProcess, model: str, headers: dict[str, str] | None = None, **body: object
) -> httpx.Response:
    return httpx.post(f"{server.http_url}/models/{model}/predict", json=body, headers=headers, timeout=30)


def test_it_runs_on_the_servers_event_loop_not_a_model_thread(server: ServerProcess) -> None:
    first = predict(server, "asyncecho", text="a").json()
    second = predict(server, "asyncecho", text="b").json()
    assert first["text"] == "a"
    assert not first["thread"].startswith("modelpod-model")  # the loop's thread, not a model thread
    assert first["loop"] == second["loop"]  # the server's one loop, the first request included


def test_requests_waiting_in_it_overlap(server: ServerProcess) -> None:
    with ThreadPoolExecutor(8) as executor:
        answers = list(
            executor.map(lambda i: predict(server, "asyncecho", text=str(i), delay=0.5).json(), range(8))
        )
    earliest_end = min(a["end"] for a in answers)
    assert all(a["start"] < earliest_end for a in answers)  # every one had started before any ended


def test_its_errors_are_answered_like_any_models(server: ServerProcess) -> None:
    refused = predict(server, "asyncecho", text="")
    assert refused.status_code == 400
    assert refused.json()["error"] == "text must not be empty"
    failed = predict(server, "asyncfails", text="x")
    assert failed.status_code == 500
    assert failed.headers["x-error-id"]
    assert "RuntimeError" in failed.json()["error"]
    assert "own bug" not in failed.text  # the details stay in the server's log
    assert predict(server, "asyncecho", text="still here").status_code == 200


def test_the_request_timeout_cancels_it_and_the_server_keeps_serving(server: ServerProcess) -> None:
    late = predict(server, "asyncecho", headers={"request-timeout": "0.3"}, text="slow", delay=30)
    assert late.status_code == 504
    assert "timeout of 0.3 s" in late.json()["error"]
    assert predict(server, "asyncecho", text="next").status_code == 200


def test_v2_grpc_and_metrics_see_it_as_any_model(server: ServerProcess) -> None:
    with Client(f"grpc://127.0.0.1:{server.grpc_port}") as client:
        assert client.model("asyncecho").predict(text="over grpc")["text"] == "over grpc"
    triton = triton_http.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        import numpy as np

        text = triton_http.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"v2"], dtype=object))
        result = triton.infer("asyncecho", [text])
        assert result.get_response()["outputs"]
    finally:
        triton.close()
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    served = re.search(
        r'modelpod_requests_total\{model="asyncecho",outcome="ok",protocol="http",version="1"\} (\S+)',
        metrics,
    )
    assert served is not None
    assert float(served.group(1)) >= 3


def test_in_process_a_runner_runs_it_on_a_private_loop_or_awaits_it(tmp_path: Path) -> None:
    runner = Runner(AsyncEcho, data_path=tmp_path)
    assert runner.predict(text="sync")["text"] == "sync"
    assert [a["text"] for a in runner.predict_batch([{"text": "x"}, {"text": "y"}])] == ["x", "y"]

    async def inside_a_loop() -> str:
        with pytest.raises(RuntimeError, match="cannot be called synchronously inside a running event loop"):
            runner.predict(text="blocked")
        answer = await runner.predict_async(text="awaited")
        return str(answer["text"])

    assert asyncio.run(inside_a_loop()) == "awaited"
    with pytest.raises(ModelError, match="raised RuntimeError"):
        Runner(AsyncFails, data_path=tmp_path).predict(text="x")


def test_worker_processes_run_it_too(tmp_path: Path) -> None:
    process = launch((f"{ASYNC}:AsyncEcho",), tmp_path / "appdata", ("--workers", "1"))
    try:
        answer = predict(process, "asyncecho", text="in a worker").json()
        assert answer["text"] == "in a worker"
        assert answer["pid"] != process.process.pid
    finally:
        assert process.stop() == 0, process.output


def test_an_async_generator_model_refuses_a_synchronous_call_inside_a_running_loop(tmp_path: Path) -> None:
    from collections.abc import AsyncIterator

    from modelpod import Model

    class Counts(Model):
        async def predict(self, n: int = 2) -> AsyncIterator[int]:
            for i in range(n):
                yield i

    runner = Runner(Counts, data_path=tmp_path)
    assert runner.predict(n=3) == [0, 1, 2]  # outside a loop: gathered on a private one

    async def inside_a_loop() -> None:
        with pytest.raises(
            RuntimeError, match="cannot be iterated synchronously inside a running event loop"
        ):
            runner.predict(n=3)

    asyncio.run(inside_a_loop())
