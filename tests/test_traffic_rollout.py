"""Rollouts decided by the numbers: a canary (or a shadow) stepped up window by window while it stays
within its bounds, promoted to the default at its last step, or rolled back to 0 as soon as enough of
its requests cross a bound. Against real `modelpod serve` processes, under load."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpod.observe.events import Recorder, RequestDone
from modelpod.serving.repository import Repository
from modelpod.serving.rollout import Rollouts, rolled_back, stepped
from modelpod.serving.rollout_rules import PROMOTE, ROLLBACK, STEP, WAIT, Numbers, RolloutRules, verdict
from modelpod.serving.rollout_watch import RolloutWatch
from modelpod.serving.traffic import Traffic
from modelpod.serving.traffic_policy import policy_of

from conftest import ServerProcess, StartServer, servable
from servable import Echo

SCALED = servable("Scaled")
VERSIONS = {"2": {}, "3": {"scale": 1.5}, "4": {"fail_share": 0.2}}


def _server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    server = start_server(SCALED, args=("--model-pool-size", "4"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for version, config in VERSIONS.items():
            made = http.post(f"/models/scaled/versions/{version}/initialize", json=config)
            assert made.status_code == 200, made.text
    return server


class Load:
    """Callers sending requests to the bare name from 4 threads until stopped (or 4,000 sent); each
    answer kept as (status, the version that answered)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send) for _ in range(4)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _send(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for _ in range(1000):
                if self._stop.is_set():
                    return
                answer = http.post("/models/scaled/predict", json={"x": 0.5})
                self.answers.append((answer.status_code, answer.headers.get("x-modelpod-version", "")))


def _until(http: httpx.Client, done: Callable[[dict[str, Any]], bool], seconds: float = 30) -> dict[str, Any]:
    """The traffic document once `done` holds of it (failing with the document after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not done(document := http.get("/models/scaled/traffic").json()):
        assert time.monotonic() < deadline, document
        time.sleep(0.05)
    return document


def _decisions(document: dict[str, Any]) -> list[str]:
    return [d["decision"] for d in document["rollout_state"]["decisions"]]


def test_a_failing_canary_is_rolled_back_under_load(start_server: StartServer, tmp_path: Path) -> None:
    server = _server(start_server, tmp_path)
    rollout = {"version": "4", "window_seconds": 60, "min_requests": 20, "max_error_rate": 0.05,
               "steps": [50, 100], "promote": True}  # fmt: skip
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        put = http.put("/models/scaled/traffic", json={"split": {"1": 80, "4": 20}, "rollout": rollout})
        assert put.status_code == 200, put.text
        assert put.json()["rollout"]["version"] == "4"
        with Load(server.http_url) as load:
            # rolled back long before its 60 s window ends: a rollback waits only for min_requests
            document = _until(http, lambda d: d["rollout"] is None)
            time.sleep(0.3)
            after = len(load.answers)
            time.sleep(0.5)
        metrics = http.get("/metrics").text
        shown = http.get("/ui/activity").json()["rollouts"]  # what the status page shows
    assert document["split"] == {"1": 80.0, "4": 0.0}
    assert [(d["model"], d["version"], d["decision"]) for d in shown] == [("scaled", "4", "rollback")]
    [decision] = document["rollout_state"]["decisions"]
    assert decision["decision"] == "rollback"
    assert decision["version"] == "4"
    assert decision["requests"] >= 20
    assert decision["error_rate"] > 0.05
    assert "error rate" in decision["reason"]
    failed = [(status, version) for status, version in load.answers if status != 200]
    assert failed, "the canary failed no request: the test proves nothing"
    assert {version for _, version in failed} == {"4"}  # no caller failed beyond the canary's own
    assert {status for status, _ in failed} == {500}
    assert {version for _, version in load.answers[after:]} == {"1"}  # all on the old version since
    assert 'modelpod_rollout_decisions_total{decision="rollback",model="scaled",version="4"} 1.0' in metrics
    assert any("rollout of version 4: rollback" in line for line in server.lines)  # logged, numbers too


def test_a_matching_canary_steps_up_and_is_promoted(start_server: StartServer, tmp_path: Path) -> None:
    server = _server(start_server, tmp_path)
    rollout = {"version": "2", "window_seconds": 0.5, "min_requests": 5, "max_error_rate": 0,
               "max_p99_seconds": 5, "steps": [50, 100], "promote": True}  # fmt: skip
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        put = http.put("/models/scaled/traffic", json={"split": {"1": 90, "2": 10}, "rollout": rollout})
        assert put.status_code == 200, put.text
        with Load(server.http_url) as load:
            document = _until(http, lambda d: d["split"] == {} and d["rollout"] is None)
            model = http.get("/models/scaled").json()
            time.sleep(0.3)
            after = len(load.answers)
            time.sleep(0.3)
    assert model["default_version"] == "2", model
    assert _decisions(document) == ["step", "step", "promote"]
    assert [d["share"] for d in document["rollout_state"]["decisions"]] == [50.0, 100.0, 100.0]
    assert {status for status, _ in load.answers} == {200}  # no request failed because of a switch
    assert {version for _, version in load.answers[after:]} == {"2"}


def test_a_shadow_is_rolled_back_on_disagreement_or_stepped_into_the_split(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _server(start_server, tmp_path)
    judged = {"window_seconds": 0.5, "min_requests": 5, "min_agreement": 0.9}
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        policy = {"split": {"1": 1}, "shadow": {"version": "3"}, "rollout": {"version": "3", **judged}}
        assert http.put("/models/scaled/traffic", json=policy).status_code == 200
        with Load(server.http_url) as load:
            disagreed = _until(http, lambda d: d["rollout"] is None)
            policy = {"split": {"1": 1}, "shadow": {"version": "2"},
                      "rollout": {"version": "2", **judged, "steps": [50], "promote": True}}  # fmt: skip
            assert http.put("/models/scaled/traffic", json=policy).status_code == 200
            promoted = _until(http, lambda d: d["split"] == {} and d["rollout"] is None)
    assert disagreed["shadow"] is None
    [rollback] = disagreed["rollout_state"]["decisions"]
    assert (rollback["decision"], rollback["version"], rollback["agreement"]) == ("rollback", "3", 0.0)
    assert _decisions(promoted)[-2:] == ["step", "promote"]
    assert promoted["shadow"] is None
    assert {status for status, _ in load.answers} == {200}


def test_bad_rollouts_are_refused_naming_the_problem(start_server: StartServer, tmp_path: Path) -> None:
    server = _server(start_server, tmp_path)
    refused = {
        "neither in the split nor the shadow": {"split": {"1": 1}, "rollout": {"version": "2"}},
        "needs the rollout's version to be the shadow": {
            "split": {"1": 9, "2": 1}, "rollout": {"version": "2", "min_agreement": 0.9}
        },
        "steps must rise": {"split": {"1": 9, "2": 1}, "rollout": {"version": "2", "steps": [50, 20]}},
        "percents in (0, 100]": {"split": {"1": 9, "2": 1}, "rollout": {"version": "2", "steps": [150]}},
        "unknown rollout fields": {"split": {"1": 9, "2": 1}, "rollout": {"version": "2", "window": 5}},
        "min_requests must be an integer": {
            "split": {"1": 9, "2": 1}, "rollout": {"version": "2", "min_requests": 0}
        },
        "max_error_rate must be a number in [0, 1]": {
            "split": {"1": 9, "2": 1}, "rollout": {"version": "2", "max_error_rate": 2}
        },
    }  # fmt: skip
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for message, body in refused.items():
            response = http.put("/models/scaled/traffic", json=body)
            assert response.status_code == 400, (body, response.text)
            assert message in response.text, (body, response.text)
        assert http.get("/models/scaled/traffic").json()["rollout"] is None


RULES = RolloutRules("2", window_seconds=10, min_requests=10, max_error_rate=0.1, max_p99_seconds=1.0,
                     steps=(25.0, 100.0), promote=True)  # fmt: skip


def test_the_verdict_of_a_window() -> None:
    good = Numbers(requests=10, errors=1, p99_seconds=0.5, agreement=None)
    assert verdict(RULES, Numbers(9, 9, 9.0, None), True, False)[0] == WAIT  # too few to judge
    assert verdict(RULES, good, False, False)[0] == WAIT  # within bounds, window not over
    assert verdict(RULES, good, True, False)[0] == STEP
    assert verdict(RULES, good, True, True)[0] == PROMOTE
    assert verdict(RolloutRules("2", min_requests=1), good, True, True)[0] == WAIT  # promote is off
    slow = verdict(RULES, Numbers(10, 0, 1.5, None), False, False)
    assert slow == (ROLLBACK, "p99 1.5 s > 1 s")  # at once: the window need not be over
    failing = verdict(RULES, Numbers(10, 2, 0.1, None), False, False)
    assert failing == (ROLLBACK, "error rate 0.2 > 0.1")


def test_steps_and_rollbacks_rewrite_the_split() -> None:
    canary = policy_of(
        {"split": {"1": 60, "3": 30, "2": 10}, "rollout": {"version": "2", "steps": [25, 100]}}
    )
    step = stepped(canary, RULES, default="1")
    assert step.split == {"1": 50.0, "3": 25.0, "2": 25.0}  # the others keep their proportions
    assert stepped(step, RULES, default="1").split == {"1": 0.0, "3": 0.0, "2": 100.0}
    back = rolled_back(canary, "2")
    assert (back.split, back.rollout) == ({"1": 60.0, "3": 30.0, "2": 0.0}, None)
    alone = policy_of({"split": {"2": 1}, "rollout": {"version": "2"}})
    assert rolled_back(alone, "2").split == {}  # no other weight: the default takes it all
    shadow = policy_of({"shadow": {"version": "2"}, "rollout": {"version": "2", "min_agreement": 1}})
    into = stepped(shadow, RULES, default="1")
    assert (into.split, into.shadow) == ({"1": 75.0, "2": 25.0}, None)
    assert into.rollout is not None
    assert into.rollout.min_agreement is None


class _Bench:
    """The real Rollouts on a real repository (echo, versions 1 and 2), its clock driven by hand."""

    def __init__(self, tmp_path: Path) -> None:
        repository = Repository(tmp_path)
        repository.instance(repository.add(Echo), "2").initialize()
        self.now = 0.0
        self.watch = RolloutWatch(clock=lambda: self.now)
        self.promoted: list[tuple[str, str]] = []
        self.traffic = Traffic(repository, pool_size=2)
        self.rollouts = Rollouts(self.traffic, self.watch, self._promote, Recorder())
        self.traffic.on_rollout = self.rollouts.check

    async def _promote(self, name: str, version: str) -> None:
        self.promoted.append((name, version))

    def at(self, now: float, count: int = 0, outcome: str = "ok") -> dict[str, float]:
        """At `now`, a request arrives (the rollout is judged if due), then `count` of the candidate's
        are answered with `outcome`; the split as it then stands."""
        self.now = now
        self.traffic.version_for("echo", None, None)
        for _ in range(count):
            self.watch.on_request(RequestDone("echo", "2", "http", outcome, 0.01))
        return self.traffic.policy("echo").split


def test_windows_by_an_injected_clock(tmp_path: Path) -> None:
    """A step waits for a whole window within bounds; a rollback for nothing but min_requests."""
    bench = _Bench(tmp_path)
    rollout = {"version": "2", "window_seconds": 10, "min_requests": 5, "max_error_rate": 0.2,
               "steps": [50, 100], "promote": True}  # fmt: skip
    bench.traffic.set("echo", {"split": {"1": 9, "2": 1}, "rollout": rollout})
    bench.at(0.0)  # the window begins
    bench.at(5.0, 10)
    assert bench.at(5.5) == {"1": 9.0, "2": 1.0}  # within bounds, the window not over
    assert bench.at(10.0) == {"1": 50.0, "2": 50.0}  # a whole window: the next step
    bench.at(11.0)  # the new window begins: the old numbers no longer count
    assert bench.at(21.0) == {"1": 50.0, "2": 50.0}  # no requests: no verdict
    bench.at(21.0, 4, "model_error")
    bench.at(21.0, 2, "invalid_input")  # the callers' faults are no failure of the candidate
    assert bench.at(21.5) == {"1": 50.0, "2": 0.0}  # rolled back at once, mid-window
    assert bench.traffic.policy("echo").rollout is None
    assert [d["decision"] for d in bench.rollouts.decisions["echo"]] == ["step", "rollback"]
    assert bench.rollouts.decisions["echo"][-1]["error_rate"] == pytest.approx(4 / 6)
    assert bench.promoted == []


def test_a_promotion_by_an_injected_clock(tmp_path: Path) -> None:
    bench = _Bench(tmp_path)

    async def scenario() -> None:
        matching = {"version": "2", "min_requests": 1, "window_seconds": 1, "promote": True}
        bench.traffic.set("echo", {"split": {"1": 1, "2": 1}, "rollout": matching})
        bench.at(0.0)
        bench.at(0.5, 1)
        bench.at(1.0)
        for _ in range(3):
            await asyncio.sleep(0)  # the promotion runs as a task
        assert bench.promoted == [("echo", "2")]
        assert bench.traffic.policy("echo").split == {}  # every request to the new default

    asyncio.run(scenario())
