"""`/metrics` and the statistics extension of a real server: exact deltas after known requests."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from conftest import ServerProcess, launch, servable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(
        (servable("Echo"), servable("Batched"), servable("Broken")), tmp_path_factory.mktemp("metrics")
    )
    yield process
    assert process.stop() == 0


def samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.http_url}/metrics").text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counters_and_histograms_move_by_exactly_the_requests_made(server: ServerProcess) -> None:
    before = samples(server)
    for _ in range(5):
        assert httpx.post(f"{server.http_url}/models/echo/predict", json={"text": "x"}).status_code == 200
    for _ in range(2):
        assert httpx.post(f"{server.http_url}/models/echo/predict", json={}).status_code == 400
    assert httpx.post(f"{server.http_url}/models/broken/predict", json={}).status_code == 500
    with grpcclient.InferenceServerClient(server.grpc_address) as client:
        x = grpcclient.InferInput("x", [3, 4], "FP32")
        x.set_data_from_numpy(np.ones((3, 4), dtype=np.float32))
        client.infer("batched", [x])
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    echo = {"model": "echo", "version": "1"}
    assert delta("modelpod_requests_total", **echo, protocol="http", outcome="ok") == 5
    assert delta("modelpod_requests_total", **echo, protocol="http", outcome="invalid_input") == 2
    broken = {"model": "broken", "version": "1", "protocol": "http", "outcome": "model_error"}
    assert delta("modelpod_requests_total", **broken) == 1
    batched = {"model": "batched", "version": "1"}
    assert delta("modelpod_requests_total", **batched, protocol="grpc_v2", outcome="ok") == 1
    assert delta("modelpod_request_duration_seconds_count", **echo, protocol="http") == 7
    assert delta("modelpod_compute_duration_seconds_count", **echo) == 5  # invalid input never computes
    assert delta("modelpod_batch_size_rows_count", **batched) == 1
    assert delta("modelpod_batch_size_rows_sum", **batched) == 3  # one call of three rows
    assert delta("modelpod_queue_wait_seconds_count", **batched) == 1
    assert value(after, "modelpod_model_loads_total") >= 3
    assert value(after, "modelpod_in_flight_requests") == 0


def test_batch_sizes_under_concurrency_reach_the_histogram(server: ServerProcess) -> None:
    before = samples(server)

    def infer(i: int) -> None:
        with httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}") as client:
            x = httpclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.full((1, 4), i, dtype=np.float32))
            client.infer("batched", [x])

    with ThreadPoolExecutor(16) as executor:
        list(executor.map(infer, range(32)))
    after = samples(server)
    batched = {"model": "batched", "version": "1"}
    rows = value(after, "modelpod_batch_size_rows_sum", **batched) - value(
        before, "modelpod_batch_size_rows_sum", **batched
    )
    calls = value(after, "modelpod_batch_size_rows_count", **batched) - value(
        before, "modelpod_batch_size_rows_count", **batched
    )
    assert rows == 32
    assert calls < 32  # some requests shared a call


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_statistics_extension_through_tritonclient(server: ServerProcess, transport: str) -> None:
    if transport == "http":
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
        before = client.get_inference_statistics("echo")["model_stats"][0]
    else:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        before = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]
    for _ in range(3):
        httpx.post(f"{server.http_url}/models/echo/predict", json={"text": "x"})
    httpx.post(f"{server.http_url}/models/echo/predict", json={})
    if transport == "http":
        after = client.get_inference_statistics("echo")["model_stats"][0]
    else:
        after = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]
    client.close()

    def count(stats: dict, key: str) -> int:  # type: ignore[type-arg]
        return int(stats["inference_stats"][key].get("count", 0))

    assert (after["name"], after["version"]) == ("echo", "1")
    assert count(after, "success") - count(before, "success") == 3
    assert count(after, "fail") - count(before, "fail") == 1
    assert count(after, "compute_infer") - count(before, "compute_infer") == 3
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 3
    assert int(after["inference_stats"]["success"]["ns"]) > int(
        before["inference_stats"]["success"].get("ns", 0)
    )


def test_statistics_for_unknown_models_are_404(server: ServerProcess) -> None:
    assert httpx.get(f"{server.http_url}/v2/models/nope/stats").status_code == 404
