"""LatencyStats: counts, histogram buckets, percentiles against numpy, thread safety."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpod.runtime.latency import BUCKET_KEYS, LatencyStats, StatsSnapshot

latencies = st.lists(
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=300,
)


def test_empty_snapshot_is_all_zero() -> None:
    snapshot = LatencyStats().snapshot()
    assert snapshot == StatsSnapshot()
    assert (snapshot.total, snapshot.ok, snapshot.failed) == (0, 0, 0)
    assert snapshot.mean_ms == snapshot.p99_ms == snapshot.max_ms == 0.0
    assert snapshot.histogram == dict.fromkeys(BUCKET_KEYS, 0)


def test_bucket_keys_in_order() -> None:
    assert BUCKET_KEYS == (
        "le_1",
        "le_2.5",
        "le_5",
        "le_10",
        "le_25",
        "le_50",
        "le_100",
        "le_250",
        "le_500",
        "le_1000",
        "le_2500",
        "le_5000",
        "le_10000",
        "le_inf",
    )


def test_counts_mean_max_and_json() -> None:
    stats = LatencyStats()
    for seconds, ok in [(0.010, True), (0.020, True), (0.030, False)]:
        stats.record(seconds, ok)
    snapshot = stats.snapshot()
    assert (snapshot.total, snapshot.ok, snapshot.failed) == (3, 2, 1)
    assert snapshot.mean_ms == pytest.approx(20.0)
    assert snapshot.max_ms == pytest.approx(30.0)
    assert snapshot.p50_ms == pytest.approx(20.0)
    data = json.loads(json.dumps(snapshot.as_dict()))
    assert data["total"] == 3
    assert data["histogram"]["le_10"] == 1
    assert data["histogram"]["le_25"] == 1
    assert data["histogram"]["le_50"] == 1
    assert list(data["histogram"]) == list(BUCKET_KEYS)
    assert "3 requests (2 ok, 1 failed)" in str(snapshot)


@pytest.mark.parametrize(
    ("seconds", "key"),
    [
        (0.0, "le_1"),
        (0.001, "le_1"),
        (0.0010001, "le_2.5"),
        (0.0025, "le_2.5"),
        (0.005, "le_5"),
        (0.0050001, "le_10"),
        (0.1, "le_100"),
        (0.25, "le_250"),
        (1.0, "le_1000"),
        (10.0, "le_10000"),
        (10.0001, "le_inf"),
        (3600.0, "le_inf"),
    ],
)
def test_histogram_bucket_edges_are_inclusive_upper_bounds(seconds: float, key: str) -> None:
    stats = LatencyStats()
    stats.record(seconds, ok=True)
    histogram = stats.snapshot().histogram
    assert histogram[key] == 1
    assert sum(histogram.values()) == 1


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_invalid_latency_is_refused(bad: float) -> None:
    stats = LatencyStats()
    with pytest.raises(ValueError, match="latency"):
        stats.record(bad, ok=True)
    assert stats.snapshot().total == 0


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        LatencyStats(window=0)


@settings(max_examples=60, deadline=None)
@given(values=latencies)
def test_percentiles_match_numpy(values: list[float]) -> None:
    stats = LatencyStats()
    for value in values:
        stats.record(value, ok=True)
    snapshot = stats.snapshot()
    expected = np.percentile(np.array(values) * 1000.0, [50, 95, 99])
    assert [snapshot.p50_ms, snapshot.p95_ms, snapshot.p99_ms] == pytest.approx(list(expected))
    assert snapshot.max_ms == pytest.approx(max(values) * 1000.0)
    assert snapshot.mean_ms == pytest.approx(float(np.mean(values)) * 1000.0)
    assert sum(snapshot.histogram.values()) == len(values)


@settings(max_examples=40, deadline=None)
@given(values=latencies, window=st.integers(min_value=1, max_value=50))
def test_percentiles_cover_only_the_window_counts_cover_all(values: list[float], window: int) -> None:
    stats = LatencyStats(window=window)
    for value in values:
        stats.record(value, ok=False)
    snapshot = stats.snapshot()
    recent = np.array(values[-window:]) * 1000.0
    expected = np.percentile(recent, [50, 95, 99])
    assert [snapshot.p50_ms, snapshot.p95_ms, snapshot.p99_ms] == pytest.approx(list(expected))
    assert snapshot.total == snapshot.failed == len(values)
    assert sum(snapshot.histogram.values()) == len(values)
    assert snapshot.max_ms == pytest.approx(max(values) * 1000.0)


def test_concurrent_record_loses_nothing() -> None:
    stats = LatencyStats(window=1000)
    threads_count, per_thread = 8, 5000
    barrier = threading.Barrier(threads_count)

    def worker(index: int) -> None:
        barrier.wait()
        seconds = 0.002 if index % 2 else 0.2  # le_2.5 or le_250
        for i in range(per_thread):
            stats.record(seconds, ok=i % 5 != 0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = stats.snapshot()
    total = threads_count * per_thread
    assert snapshot.total == total
    assert snapshot.failed == total // 5
    assert snapshot.ok == total - total // 5
    assert snapshot.histogram["le_2.5"] == total // 2
    assert snapshot.histogram["le_250"] == total // 2
    assert snapshot.mean_ms == pytest.approx(101.0)
    assert 2.0 <= snapshot.p50_ms <= 200.0


def test_snapshot_while_recording_is_consistent() -> None:
    stats = LatencyStats(window=100)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            stats.record(0.003, ok=True)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(200):
            snapshot = stats.snapshot()
            assert snapshot.ok == snapshot.total == sum(snapshot.histogram.values())
            assert snapshot.total == 0 or snapshot.p99_ms == pytest.approx(3.0)
    finally:
        stop.set()
        thread.join()


def test_reset_forgets_everything() -> None:
    stats = LatencyStats()
    stats.record(0.5, ok=False)
    stats.reset()
    assert stats.snapshot() == StatsSnapshot()
    stats.record(0.001, ok=True)
    assert stats.snapshot().total == 1
    assert stats.snapshot().max_ms == pytest.approx(1.0)
