"""The LRU pool: bounded per model and by memory, one load per instance, no teardown under a request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpod import Model, ModelLoadError
from modelpod.runtime.memory import rss_bytes
from modelpod.runtime.runner import Runner
from modelpod.serving.pool import ModelPool


class Recorder(Model):
    """Logs setup/teardown into a shared list given in the config-free class attribute."""

    events: list[str] = []
    load_seconds = 0.0

    def setup(self) -> None:
        time.sleep(self.load_seconds)
        self.events.append(f"setup {self.version}")

    def teardown(self) -> None:
        self.events.append(f"teardown {self.version}")

    def predict(self, seconds: float = 0.0) -> str:
        time.sleep(seconds)
        return self.version


class Block(Model):
    """Holds `mb` megabytes while loaded."""

    def setup(self) -> None:
        self.block = np.ones(int(self.config.get("mb", 100)) * 2**20 // 8)

    def teardown(self) -> None:
        del self.block

    def predict(self) -> int:
        return int(self.block.nbytes)


@pytest.fixture(autouse=True)
def fresh_events() -> None:
    Recorder.events = []
    Recorder.load_seconds = 0.0


def factory(tmp_path: Path, version: str, cls: type[Model] = Recorder, **config: Any) -> Any:
    return lambda: Runner(cls, version=version, data_path=tmp_path, warmup=False, **config)


def use(pool: ModelPool, tmp_path: Path, version: str, name: str = "Recorder", **kwargs: Any) -> Any:
    with pool.use((name, version), factory(tmp_path, version)) as runner:
        return runner.predict(**kwargs)


def test_loads_once_and_reuses(tmp_path: Path) -> None:
    pool = ModelPool(per_model=2)
    assert use(pool, tmp_path, "1") == "1"
    assert use(pool, tmp_path, "1") == "1"
    assert Recorder.events == ["setup 1"]
    assert pool.stats().loads == 1


def test_evicts_least_recently_used_version(tmp_path: Path) -> None:
    pool = ModelPool(per_model=2)
    for version in ("1", "2", "1", "3"):  # 2 is the least recently used when 3 arrives
        use(pool, tmp_path, version)
    assert sorted(pool.loaded()) == [("Recorder", "1"), ("Recorder", "3")]
    assert Recorder.events == ["setup 1", "setup 2", "teardown 2", "setup 3"]
    assert pool.stats().evictions == 1


def test_size_one_alternating_versions_reload_each_time(tmp_path: Path) -> None:
    pool = ModelPool(per_model=1)
    for version in ("1", "2", "1", "2"):
        assert use(pool, tmp_path, version) == version
    assert Recorder.events == [
        "setup 1",
        "teardown 1",
        "setup 2",
        "teardown 2",
        "setup 1",
        "teardown 1",
        "setup 2",
    ]


def test_bound_is_per_model(tmp_path: Path) -> None:
    pool = ModelPool(per_model=1)
    with pool.use(("a", "1"), factory(tmp_path, "1")), pool.use(("b", "1"), factory(tmp_path, "1")):
        assert sorted(pool.loaded()) == [("a", "1"), ("b", "1")]


def test_concurrent_first_requests_load_once(tmp_path: Path) -> None:
    Recorder.load_seconds = 0.3
    pool = ModelPool()
    with ThreadPoolExecutor(8) as executor:
        results = list(executor.map(lambda _: use(pool, tmp_path, "1"), range(8)))
    assert results == ["1"] * 8
    assert Recorder.events == ["setup 1"]


def test_slow_load_of_one_version_does_not_stall_another(tmp_path: Path) -> None:
    pool = ModelPool(per_model=3)
    use(pool, tmp_path, "fast")
    Recorder.load_seconds = 1.0
    slow = threading.Thread(target=use, args=(pool, tmp_path, "slow"))
    slow.start()
    time.sleep(0.1)  # the slow load is under way
    started = time.perf_counter()
    assert use(pool, tmp_path, "fast") == "fast"
    took = time.perf_counter() - started
    slow.join()
    assert took < 0.5, f"a request to a loaded version waited {took:.2f} s for another version's load"


def test_instance_in_use_is_torn_down_only_after_its_request(tmp_path: Path) -> None:
    pool = ModelPool(per_model=1)
    outcome: list[str] = []
    in_flight = threading.Thread(target=lambda: outcome.append(use(pool, tmp_path, "1", seconds=0.5)))
    in_flight.start()
    time.sleep(0.1)
    assert use(pool, tmp_path, "2") == "2"  # evicts 1 while its request is running
    assert "teardown 1" not in Recorder.events
    in_flight.join()
    assert outcome == ["1"]
    assert Recorder.events == ["setup 1", "setup 2", "teardown 1"]
    assert pool.loaded() == [("Recorder", "2")]


def test_failed_load_is_reported_and_retried(tmp_path: Path) -> None:
    class Flaky(Model):
        attempts = 0

        def setup(self) -> None:
            Flaky.attempts += 1
            if Flaky.attempts == 1:
                raise OSError("disk not ready")

        def predict(self) -> str:
            return "ok"

    pool = ModelPool()
    make = lambda: Runner(Flaky, data_path=tmp_path, warmup=False)  # noqa: E731
    with pytest.raises(ModelLoadError, match="disk not ready"), pool.use(("Flaky", "1"), make):
        pass
    assert "disk not ready" in pool.load_errors[("Flaky", "1")]
    with pool.use(("Flaky", "1"), make) as runner:
        assert runner.predict() == "ok"
    assert pool.load_errors == {}
    assert pool.stats().load_failures == 1


def test_memory_budget_evicts_before_it_is_exceeded(tmp_path: Path) -> None:
    pool = ModelPool(per_model=10, memory_budget=250 * 2**20)
    for version in ("1", "2"):
        with pool.use(("Block", version), factory(tmp_path, version, Block, mb=100)) as runner:
            runner.predict()
    assert len(pool.loaded()) == 2
    costs = pool.stats().memory_bytes
    assert costs >= 180 * 2**20, f"measured only {costs} bytes for two 100 MiB instances"
    with pool.use(("Block", "3"), factory(tmp_path, "3", Block, mb=100)):
        pass
    assert pool.loaded() == [("Block", "2"), ("Block", "3")]


def test_eviction_frees_memory(tmp_path: Path) -> None:
    pool = ModelPool()
    with pool.use(("Block", "1"), factory(tmp_path, "1", Block, mb=300)):
        loaded = rss_bytes()
    pool.evict(("Block", "1"))
    assert loaded - rss_bytes() > 200 * 2**20


def test_close_tears_everything_down(tmp_path: Path) -> None:
    pool = ModelPool(per_model=2)
    use(pool, tmp_path, "1")
    use(pool, tmp_path, "2")
    pool.close()
    assert pool.loaded() == []
    assert sorted(Recorder.events) == ["setup 1", "setup 2", "teardown 1", "teardown 2"]


def test_per_model_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ModelPool(per_model=0)
