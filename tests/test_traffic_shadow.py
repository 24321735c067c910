"""Shadow traffic: requests to a model's bare name also sent to a shadow version after the caller is
answered, the answers compared per output; a slow or failing shadow is invisible to callers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from conftest import ServerProcess, StartServer, servable

SCALED = servable("Scaled")
VERSIONS = {"2": {}, "3": {"scale": 1.5}, "4": {"sleep": 2.0}, "5": {"fail": True}}


def _scaled_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    server = start_server(SCALED, args=("--model-pool-size", "5"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for version, config in VERSIONS.items():
            made = http.post(f"/models/scaled/versions/{version}/initialize", json=config)
            assert made.status_code == 200, made.text
    return server


def _shadow(http: httpx.Client, version: str) -> None:
    policy = {"split": {"1": 1}, "shadow": {"version": version, "share": 1}}
    assert http.put("/models/scaled/traffic", json=policy).status_code == 200


def _settled(http: httpx.Client, requests: int) -> dict[str, Any]:
    """The shadow's results once every one of `requests` was compared, failed or shed (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        results: dict[str, Any] = http.get("/models/scaled/traffic").json()["shadow_results"]
        if (
            results["compared"] + results["errors"] + results["shed"] >= requests
            or time.monotonic() > deadline
        ):
            return results
        time.sleep(0.05)


def test_shadow_answers_are_compared_per_output(start_server: StartServer, tmp_path: Path) -> None:
    server = _scaled_server(start_server, tmp_path)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        _shadow(http, "2")  # the same model: agrees on every output
        for _ in range(20):
            assert http.post("/models/scaled/predict", json={"x": 0.5}).json() == {"y": 0.5, "label": "small"}
        same = _settled(http, 20)
        assert same["compared"] > 0, same
        assert same["errors"] == 0
        assert same["agreement"] == {"y": 1.0, "label": 1.0}

        _shadow(http, "3")  # scaled by 1.5: its numbers disagree, its labels do not
        for _ in range(20):
            assert http.post("/models/scaled/predict", json={"x": 0.5}).json()["y"] == 0.5
        perturbed = _settled(http, 20)
        assert perturbed["compared"] > 0, perturbed
        assert perturbed["agreement"] == {"y": 0.0, "label": 1.0}

        for _ in range(5):  # a request that names its version is neither re-routed nor shadowed
            assert http.post("/models/scaled/versions/1/predict", json={"x": 0.5}).status_code == 200
        assert _settled(http, 20)["sent"] == perturbed["sent"]

        metrics = http.get("/metrics").text
    assert 'modelpod_shadow_agreement_total{agreed="false",model="scaled",output="y",version="3"}' in metrics
    assert 'modelpod_shadow_requests_total{model="scaled",outcome="compared",version="2"}' in metrics
    assert "modelpod_shadow_latency_difference_seconds_count" in metrics


def test_a_slow_or_failing_shadow_is_invisible_to_callers(start_server: StartServer, tmp_path: Path) -> None:
    server = _scaled_server(start_server, tmp_path)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        _shadow(http, "4")  # sleeps 2 s per request
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            answer = http.post("/models/scaled/predict", json={"x": 2.0})
            slowest = max(slowest, time.monotonic() - started)
            assert answer.json() == {"y": 2.0, "label": "big"}
        assert slowest < 1.0  # a caller that waited for the shadow would take 2 s
        slow = http.get("/models/scaled/traffic").json()["shadow_results"]
        assert slow["shed"] > 0, slow  # at most 4 in flight: the rest were skipped, not queued
        assert _settled(http, 20)["compared"] == slow["sent"]  # the slow ones end (in 2 s), unseen

        _shadow(http, "5")  # raises on every request
        for _ in range(10):
            answer = http.post("/models/scaled/predict", json={"x": 2.0})
            assert answer.status_code == 200, answer.text
        failing = _settled(http, 10)
        assert failing["errors"] > 0, failing
        assert failing["compared"] == 0


def test_v2_inference_is_shadowed_and_compared(start_server: StartServer, tmp_path: Path) -> None:
    server = _scaled_server(start_server, tmp_path)
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": [0.5, 3.0]}]}
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        _shadow(http, "3")
        for _ in range(10):
            answer = http.post("/v2/models/scaled/infer", json=body).json()
            assert answer["model_version"] == "1"
        results = _settled(http, 10)
    assert results["compared"] > 0, results
    assert results["agreement"] == {"y": 0.0, "label": 1.0}


def test_a_model_compare_decides_agreement(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(servable("Lenient"), args=("--model-pool-size", "2"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.post("/models/lenient/versions/2/initialize", json={"scale": 1.5}).status_code == 200
        policy = {"split": {"1": 1}, "shadow": {"version": "2", "share": 1}}
        assert http.put("/models/lenient/traffic", json=policy).status_code == 200
        for _ in range(10):
            assert http.post("/models/lenient/predict", json={"x": 0.5}).status_code == 200
        deadline = time.monotonic() + 10
        while (results := http.get("/models/lenient/traffic").json()["shadow_results"])["compared"] < 1:
            assert time.monotonic() < deadline, results
            time.sleep(0.05)
    assert results["agreement"] == {"y": 1.0, "label": 1.0}  # 0.5 and 0.75: within 1, by its compare
