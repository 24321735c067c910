"""Traffic between versions: a weighted split of a model's bare-name requests over its versions,
sticky by a request key, set by flag or by an admin at run time, saved and restored; requests that
name a version are never re-routed. Against real `modelpod serve` processes."""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from conftest import ROOT, ServerProcess, StartServer, servable

ECHO = servable("Echo")
POOL = ("--model-pool-size", "3")  # both versions stay loaded: no test waits on reloads


def _with_version_2(start_server: StartServer, data_path: Path, *args: str) -> ServerProcess:
    server = start_server(ECHO, args=(*POOL, *args), data_path=data_path)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        if http.post("/models/echo/versions/2/initialize", json={}).status_code != 200:
            raise AssertionError(server.output)
    return server


def _versions(url: str, path: str, count: int, keys: list[str] | None = None) -> list[str]:
    """The version that answered each of `count` requests (8 at a time), every one a 200."""

    def one(index: int) -> str:
        headers = {"x-modelpod-traffic-key": keys[index % len(keys)]} if keys else {}
        response = http.post(path, json={"text": "hi"}, headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["version"])

    with httpx.Client(base_url=url, timeout=30) as http, ThreadPoolExecutor(8) as threads:
        return list(threads.map(one, range(count)))


def test_a_split_sends_its_share_and_explicit_versions_are_never_rerouted(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _with_version_2(start_server, tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.get("/models/echo/traffic").json()["split"] == {}
        changed = http.put("/models/echo/traffic", json={"split": {"1": 90, "2": 10}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["split"] == {"1": 90.0, "2": 10.0}
    counts = collections.Counter(_versions(server.http_url, "/models/echo/predict", 400))
    # binomial(400, 0.1): mean 40, standard deviation 6; five deviations either side
    assert set(counts) == {"1", "2"}
    assert 10 <= counts["2"] <= 70, counts
    assert set(_versions(server.http_url, "/models/echo/versions/1/predict", 40)) == {"1"}
    assert set(_versions(server.http_url, "/models/echo/versions/2/predict", 40)) == {"2"}


def test_sticky_keys_keep_their_version(start_server: StartServer, tmp_path: Path) -> None:
    server = _with_version_2(start_server, tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        policy = {"split": {"1": 50, "2": 50}, "sticky": True}
        assert http.put("/models/echo/traffic", json=policy).status_code == 200
    keys = [f"user-{n}" for n in range(20)]
    answered = _versions(server.http_url, "/models/echo/predict", 200, keys)
    by_key: dict[str, set[str]] = collections.defaultdict(set)
    for index, version in enumerate(answered):
        by_key[keys[index % len(keys)]].add(version)
    assert all(len(versions) == 1 for versions in by_key.values()), by_key
    assert set().union(*by_key.values()) == {"1", "2"}  # 20 keys at 50/50 all on one: 2 in a million


def test_bad_policies_are_refused_naming_the_problem(start_server: StartServer, tmp_path: Path) -> None:
    server = _with_version_2(start_server, tmp_path / "data")
    refused = {
        "unknown version": {"split": {"1": 50, "7": 50}},
        "must be a number >= 0": {"split": {"1": -1, "2": 5}},
        "sum to zero": {"split": {"1": 0, "2": 0}},
        "share": {"shadow": {"version": "2", "share": 2}},
        "unknown traffic policy fields": {"splits": {"1": 1}},
        "must be an object": [1, 2],
    }
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for message, body in refused.items():
            response = http.put("/models/echo/traffic", json=body)
            assert response.status_code == 400, (body, response.text)
            assert message in response.text, (body, response.text)
        assert http.put("/models/nothing/traffic", json={}).status_code == 404
        assert http.get("/models/echo/traffic").json()["split"] == {}  # nothing refused was applied


def test_changes_under_load_fail_no_request_and_survive_a_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = _with_version_2(start_server, data)
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            for _ in range(2000):  # bounded; stopped sooner once the switches are done
                if stop.is_set():
                    return
                response = http.post("/models/echo/predict", json={"text": "hi"})
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text}")

    loaders = [threading.Thread(target=load) for _ in range(4)]
    for thread in loaders:
        thread.start()
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for round_ in range(10):
            wanted = "2" if round_ % 2 == 0 else "1"
            assert http.put("/models/echo/traffic", json={"split": {wanted: 1}}).status_code == 200
            assert {_versions(server.http_url, "/models/echo/predict", 8)[0]} == {wanted}
    stop.set()
    for thread in loaders:
        thread.join(timeout=60)
    assert failures == []
    assert set(_versions(server.http_url, "/models/echo/predict", 20)) == {"1"}  # the last policy
    server.stop()

    restarted = start_server(ECHO, args=POOL, data_path=data)
    with httpx.Client(base_url=restarted.http_url, timeout=30) as http:
        assert http.get("/models/echo/traffic").json()["split"] == {"1": 1.0}
        assert http.put("/models/echo/traffic", json={"split": {"2": 1}}).status_code == 200
    restarted.stop()
    again = start_server(ECHO, args=POOL, data_path=data)
    assert set(_versions(again.http_url, "/models/echo/predict", 20)) == {"2"}
    again.stop()

    # a flag that differs from what the saved policy was chosen over wins: someone chose again
    flagged = start_server(ECHO, args=(*POOL, "--traffic", "echo=1:3,2:1"), data_path=data)
    with httpx.Client(base_url=flagged.http_url, timeout=30) as http:
        assert http.get("/models/echo/traffic").json()["split"] == {"1": 3.0, "2": 1.0}


def test_a_bad_traffic_flag_stops_the_server_naming_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "modelpod", "serve", ECHO, "--http-port", "0", "--grpc-port", "0",
               "--data-path", str(tmp_path / "d"), "--traffic", "echo=1:90,9:10"]  # fmt: skip
    finished = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert finished.returncode != 0
    assert "unknown version" in finished.stdout + finished.stderr
