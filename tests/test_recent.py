"""The recent-activity recorder behind the status page: buckets, percentiles, bounds, errors."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpod.observe import logs
from modelpod.observe.activity import (
    ERRORS_KEPT,
    MESSAGE_CHARACTERS,
    RATE_SECONDS,
    WINDOW_SECONDS,
    RecentActivity,
    bin_middle,
    latency_bin,
    percentile,
)


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@given(st.floats(min_value=2e-4, max_value=3600.0))
def test_a_latency_is_within_ten_percent_of_its_bins_middle(seconds: float) -> None:
    middle = bin_middle(latency_bin(seconds))
    assert middle / 1.1 <= seconds <= middle * 1.1


def test_percentiles_of_a_known_histogram() -> None:
    histogram = Counter({latency_bin(0.001): 90, latency_bin(0.1): 9, latency_bin(2.0): 1})
    assert percentile(histogram, 0.5) == pytest.approx(0.001, rel=0.1)
    assert percentile(histogram, 0.95) == pytest.approx(0.1, rel=0.1)
    assert percentile(histogram, 0.99) == pytest.approx(0.1, rel=0.1)
    assert percentile(histogram, 1.0) == pytest.approx(2.0, rel=0.1)
    assert percentile(Counter(), 0.5) is None


def test_requests_fill_per_second_buckets_and_the_last_ten_seconds() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    for _ in range(3):
        for _request in range(4):
            recent.request("echo", "1", "ok", 0.010)
        recent.request("echo", "1", "invalid_input", 0.001, "text must be a string")
        clock.now += 1
    document = recent.document()
    server = document["server"]
    assert (server["requests"], server["errors"]) == (15, 3)
    assert server["rate"] == pytest.approx(15 / RATE_SECONDS)
    assert server["error_rate"] == pytest.approx(3 / RATE_SECONDS)
    assert server["p50"] == pytest.approx(0.010, rel=0.1)
    assert [p["requests"] for p in server["series"]] == [5, 5, 5]
    assert [p["t"] for p in server["series"]] == [1_000_000, 1_000_001, 1_000_002]
    assert server["series"][0]["p99"] == pytest.approx(0.010, rel=0.1)
    [version] = document["versions"]
    assert (version["model"], version["version"], version["requests"]) == ("echo", "1", 15)


def test_the_running_second_is_left_out_of_the_rate() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    recent.request("echo", "1", "ok", 0.01)
    assert recent.document()["server"]["rate"] == 0
    assert recent.document()["server"]["p50"] is None
    clock.now += 1
    assert recent.document()["server"]["rate"] == pytest.approx(1 / RATE_SECONDS)


def test_old_seconds_leave_the_window_but_totals_stay() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    recent.request("echo", "1", "ok", 0.01)
    recent.batch("echo", "1", 8)
    clock.now += WINDOW_SECONDS + 5
    recent.request("echo", "1", "ok", 0.01)
    server = recent.document()["server"]
    assert server["requests"] == 2
    assert len(server["series"]) == 1
    assert server["batch_sizes"] == {}


def test_server_series_add_up_the_versions_second_by_second() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    recent.request("echo", "1", "ok", 0.01)
    recent.request("echo", "2", "ok", 0.01)
    recent.request("slow", "1", "ok", 1.0)
    recent.batch("echo", "1", 4)
    recent.batch("echo", "2", 4)
    recent.batch("slow", "1", 1)
    document = recent.document()
    assert [(v["model"], v["version"]) for v in document["versions"]] == [
        ("echo", "1"),
        ("echo", "2"),
        ("slow", "1"),
    ]
    [point] = document["server"]["series"]
    assert point["requests"] == 3
    assert point["p50"] == pytest.approx(0.01, rel=0.1)
    assert point["p99"] == pytest.approx(1.0, rel=0.1)
    assert document["server"]["batch_sizes"] == {"1": 1, "4": 2}


def test_errors_keep_the_newest_first_with_their_request_id() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    for n in range(ERRORS_KEPT + 10):
        token = logs.request_id.set(f"req-{n}")
        try:
            recent.request("broken", "1", "model_error", 0.01, f"failure {n}" + "!" * 1000)
        finally:
            logs.request_id.reset(token)
    errors = recent.document()["errors"]
    assert len(errors) == ERRORS_KEPT
    newest = errors[0]
    assert newest["request_id"] == f"req-{ERRORS_KEPT + 9}"
    assert newest["message"].startswith(f"failure {ERRORS_KEPT + 9}")
    assert len(newest["message"]) == MESSAGE_CHARACTERS
    assert (newest["model"], newest["version"], newest["kind"]) == ("broken", "1", "model_error")
    assert newest["time"] == clock.now


def test_a_clock_stepping_back_counts_into_the_newest_second() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    recent.request("echo", "1", "ok", 0.01)
    clock.now -= 5
    recent.request("echo", "1", "ok", 0.01)
    [point] = recent.document()["server"]["series"]
    assert point["requests"] == 2


def test_memory_stays_bounded_however_long_it_runs() -> None:
    clock = Clock()
    recent = RecentActivity(clock)
    for _ in range(3 * WINDOW_SECONDS):
        recent.request("echo", "1", "ok", 0.01)
        clock.now += 1
    assert len(recent._versions["echo", "1"].seconds) == WINDOW_SECONDS


def test_concurrent_recording_loses_nothing() -> None:
    recent = RecentActivity()

    def record() -> None:
        for _ in range(2000):
            recent.request("echo", "1", "ok", 0.001)
            recent.batch("echo", "1", 1)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    server = recent.document()["server"]
    assert server["requests"] == 8000
    assert sum(p["requests"] for p in server["series"]) == 8000
    assert sum(server["batch_sizes"].values()) == 8000
