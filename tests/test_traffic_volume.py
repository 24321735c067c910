"""The issue's volume checks, bounded in time: a 90/10 split over 2,000 requests within a binomial
bound; a shadow at 100% that leaves callers' latency within a generous bound of a run without it;
and the shadow's in-flight limit (`--shadow-max-in-flight`) shedding what is over it."""

from __future__ import annotations

import collections
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from conftest import StartServer, servable

SCALED = servable("Scaled")


def _timed(url: str, count: int) -> list[tuple[str, float]]:
    """`count` requests to the bare name, 8 at a time: the version that answered each, and its seconds."""

    def one(_: int) -> tuple[str, float]:
        started = time.monotonic()
        answer = http.post("/models/scaled/predict", json={"x": 0.5})
        assert answer.status_code == 200, answer.text
        return answer.headers["x-modelpod-version"], time.monotonic() - started

    with httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(8) as threads:
        return list(threads.map(one, range(count)))


def _put(http: httpx.Client, policy: dict[str, Any]) -> None:
    assert http.put("/models/scaled/traffic", json=policy).status_code == 200


def test_2000_requests_split_90_10_and_a_full_shadow_costs_callers_nothing(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(SCALED, args=("--model-pool-size", "3"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for version in ("2", "3"):
            assert http.post(f"/models/scaled/versions/{version}/initialize", json={}).status_code == 200
        _put(http, {"split": {"1": 90, "2": 10}})
        counts = collections.Counter(version for version, _ in _timed(server.http_url, 2000))
        # binomial(2000, 0.1): mean 200, standard deviation 13.4; five deviations either side
        assert set(counts) == {"1", "2"}
        assert 133 <= counts["2"] <= 267, counts

        _put(http, {"split": {"1": 1}})
        without = statistics.median(seconds for _, seconds in _timed(server.http_url, 300))
        _put(http, {"split": {"1": 1}, "shadow": {"version": "3", "share": 1}})
        shadowed = _timed(server.http_url, 300)
        results = http.get("/models/scaled/traffic").json()["shadow_results"]
    assert {version for version, _ in shadowed} == {"1"}
    assert results["sent"] > 0, results
    # generous: the shadow shares the CPU with the callers, but nobody waits for it
    assert statistics.median(seconds for _, seconds in shadowed) < 3 * without + 0.05


def test_the_shadow_in_flight_limit_is_a_setting(start_server: StartServer, tmp_path: Path) -> None:
    args = ("--model-pool-size", "2", "--shadow-max-in-flight", "2")
    server = start_server(SCALED, args=args, data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.post("/models/scaled/versions/2/initialize", json={"sleep": 3}).status_code == 200
        _put(http, {"split": {"1": 1}, "shadow": {"version": "2", "share": 1}})
        started = time.monotonic()
        for _ in range(10):  # one after the other, all while the first shadows still sleep
            assert http.post("/models/scaled/predict", json={"x": 0.5}).status_code == 200
        results = http.get("/models/scaled/traffic").json()["shadow_results"]
        assert time.monotonic() - started < 3, "too slow to prove the limit: the shadows may have ended"
    assert (results["sent"], results["shed"]) == (2, 8), results
