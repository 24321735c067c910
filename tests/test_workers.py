"""Worker processes: real children, real shared memory, real crashes."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpod import InvalidInput, ModelError, ModelLoadError, Response, Runner, Timeout, Unavailable
from modelpod.errors import ProcessorError
from modelpod.runtime.adapters import as_model
from modelpod.runtime.objects import load_object
from modelpod.workers.handle import reference_of
from modelpod.workers.pool import WorkerPool
from modelpod.workers.shm import BLOCK_PREFIX, DEFAULT_THRESHOLD, Encoder, decode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and /dev/shm")

SERVABLE = Path(__file__).resolve().parent / "servable_workers.py"
CPU = {"device": "cpu"}  # device selection imports torch where it is installed: 1 s and 200 MB per worker

MakePool = Callable[..., WorkerPool]


def model(name: str) -> Any:
    """A test model loaded from its file, as `modelpod serve path.py:Name` loads it."""
    return load_object(f"{SERVABLE}:{name}")


def our_blocks() -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"{BLOCK_PREFIX}{os.getpid()}-")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_children() -> list[int]:
    """Our spawned children (the resource tracker aside), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().split(")")[-1].split()[1])
            with open(f"/proc/{entry}/cmdline") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and "spawn_main" in command and "resource_tracker" not in command:
            found.append(int(entry))
    return found


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[MakePool]:
    """Started pools, closed after the test; no worker and no shared block may outlive them."""
    pools: list[WorkerPool] = []

    def make(target: Any, workers: int = 1, **options: Any) -> WorkerPool:
        name = options.pop("name", "m")
        pool = WorkerPool(
            target, "1", name=name, data_path=tmp_path, workers=workers, runner_options={**CPU, **options}
        )
        pools.append(pool)
        pool.start()
        return pool

    yield make
    for pool in pools:
        pool.close()
    assert worker_children() == []
    assert our_blocks() == []


# -- the codec ------------------------------------------------------------------------------------


def test_large_arrays_travel_beside_the_message_and_come_back_exactly() -> None:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 100))  # 240 KB
    strided = rng.integers(0, 255, (1000, 1000), dtype=np.uint8)[::2, ::3]  # not contiguous
    small = np.arange(10, dtype=">i4")
    value = {"big": big, "strided": strided, "small": small, "pair": (1, "two"), "n": np.float32(1.5)}
    encoder = Encoder(DEFAULT_THRESHOLD)
    data = encoder.encode(value)
    assert len(data) < 1024  # only references to the large arrays
    assert encoder.size >= big.nbytes + strided.nbytes
    buffer = bytearray(encoder.size)
    encoder.write(memoryview(buffer))
    back = decode(bytes(data), memoryview(buffer))
    for key in ("big", "strided", "small"):
        assert back[key].dtype == value[key].dtype
        np.testing.assert_array_equal(back[key], value[key])
    assert back["pair"] == (1, "two")
    assert back["n"] == 1.5
    inline = Encoder(None)
    assert decode(inline.encode(value))["big"].tobytes() == big.tobytes()
    assert inline.size == 0


def test_errors_and_responses_keep_what_they_say() -> None:
    encoder = Encoder()
    model_error = ModelError("the model broke", "0123456789ab")
    processor = ProcessorError("scaler", "preprocessor 'scaler' raised KeyError", "ba9876543210")
    busy = Unavailable("busy", retry_after=2.5)
    refused = Response({"error": "refused"}, status=400, headers={"x-a": "b"}, media_type=None)
    back = decode(encoder.encode([model_error, processor, busy, InvalidInput("bad"), refused]))
    assert type(back[0]) is ModelError
    assert back[0].error_id == "0123456789ab"
    assert back[0].message == "the model broke"
    assert type(back[1]) is ProcessorError
    assert back[1].processor == "scaler"
    assert back[1].error_id == "ba9876543210"
    assert type(back[2]) is Unavailable
    assert back[2].retry_after == 2.5
    assert type(back[3]) is InvalidInput
    assert back[3].message == "bad"
    assert back[4] == refused
    with pytest.raises(TypeError, match="set"):
        encoder.encode({"a": {1, 2}})


# -- results ------------------------------------------------------------------------------------


def test_a_tensor_model_answers_as_in_process_through_shared_memory(
    make_pool: MakePool, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    items = [
        {"x": rng.standard_normal((200, 64)), "k": rng.integers(-9, 9, (200, 100), dtype=np.int32)},
        {"x": rng.standard_normal((3, 64)), "k": rng.integers(-9, 9, (3, 100), dtype=np.int32)},
    ]
    assert items[0]["x"].nbytes > DEFAULT_THRESHOLD
    with Runner(as_model(model("Scale"), "1", name="scale", data_path=tmp_path), **CPU) as runner:
        expected = runner.predict_batch(items, skip_errors=True)
    pool = make_pool(model("Scale"), name="scale")
    results = pool.run_batch(items)
    assert len(our_blocks()) == 2  # the worker's two blocks: requests, responses
    for got, want in zip(results, expected, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype
            assert got[key].shape == want[key].shape
            assert got[key].tobytes() == want[key].tobytes()
    bigger = [{"x": rng.standard_normal((2000, 64)), "k": np.zeros((2000, 100), np.int32)}]
    assert pool.run_batch(bigger)[0]["y"].tobytes() == (bigger[0]["x"] * 2).tobytes()  # blocks grow
    assert len(our_blocks()) == 2


def test_a_keyword_model_answers_as_in_process_with_each_error_in_its_place(
    make_pool: MakePool, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    items: list[dict[str, Any]] = [
        {"text": "a b", "repeat": 2},
        {"text": "invalid"},
        {"text": "boom"},
        {"text": "refuse"},
        {"text": "x", "unknown": 1},
        {"text": "x y z"},
    ]
    with Runner(as_model(model("Words"), "1", name="words", data_path=tmp_path), **CPU) as runner:
        expected = runner.predict_batch(items, skip_errors=True)
    pool = make_pool(model("Words"), name="words")
    results = pool.run_batch(items)
    assert results[0] == expected[0] == {"text": "a ba b", "words": ("a", "b"), "length": 3}
    assert results[5] == expected[5]
    assert results[3] == expected[3] == Response({"error": "refused"}, status=400)
    for index in (1, 2, 4):
        assert type(results[index]) is type(expected[index])
        assert results[index].message == expected[index].message
    boom = results[2]
    assert isinstance(boom, ModelError)
    assert boom.message == "model words:1 raised RuntimeError"
    assert (
        f"error id {boom.error_id}" in capfd.readouterr().err
    )  # the id the worker logged, with the traceback


def test_values_that_cannot_cross_fail_alone(make_pool: MakePool) -> None:
    pool = make_pool(model("Words"), name="words")
    results = pool.run_batch([{"text": {1, 2}}, {"text": "set"}, {"text": "ok"}])
    assert isinstance(results[0], InvalidInput)
    assert results[0].message == "item 0: cannot send a set to another process"
    assert isinstance(results[1], ModelError)
    assert "returned a value that cannot leave its worker" in results[1].message
    assert results[2]["text"] == "ok"


def test_functions_and_string_references_run_in_workers(make_pool: MakePool) -> None:
    assert reference_of(model("shout")) == f"{SERVABLE}:shout"
    assert make_pool(model("shout"), name="shout").run_batch([{"text": "hi"}]) == ["HI"]
    by_reference = make_pool(f"{SERVABLE}:Words", name="words")
    assert by_reference.run_batch([{"text": "hi"}])[0]["text"] == "hi"


def test_targets_a_worker_cannot_import_are_refused() -> None:
    class Local:
        def predict(self, payload: Any) -> Any:
            return payload

    with pytest.raises(TypeError, match="defined inside a function"):
        reference_of(Local)
    with pytest.raises(TypeError, match="class or a module-level function"):
        reference_of(as_model(model("Words"), "1"))


def test_a_model_that_cannot_load_raises_with_the_workers_message(tmp_path: Path) -> None:
    pool = WorkerPool(
        model("BrokenWeights"), "1", name="broken", data_path=tmp_path, workers=2, runner_options=CPU
    )
    with pytest.raises(ModelLoadError) as raised:
        pool.start()
    assert raised.value.message == (
        "model broken:1 failed to load: FileNotFoundError: weights.bin is missing from the model folder"
    )
    assert worker_children() == []
    assert pool.pids() == []
    pool.close()
    assert our_blocks() == []


# -- crashes and hangs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("segfault", "signal SIGSEGV"),
        ("exit", "exit code 3"),
        ("kill", "signal SIGKILL, e.g. from the OOM killer"),
    ],
)
def test_a_worker_that_dies_fails_only_its_batch_and_is_restarted(
    make_pool: MakePool, how: str, reason: str
) -> None:
    pool = make_pool(model("Crash"), name="crash")
    [before] = pool.pids()
    results = pool.run_batch([{"how": "ok"}, {"how": how}])
    message = f"the worker process running model crash:1 died ({reason}) while running this request"
    assert [type(r) for r in results] == [ModelError, ModelError]
    assert [r.message for r in results] == [message, message]
    assert results[0].error_id == results[1].error_id
    assert not alive(before)
    after = pool.run_batch([{"how": "ok"}], timeout=30)[0]  # waits for the replacement
    assert after != before
    assert pool.pids() == [after]
    assert pool.restarts == 1


def test_other_workers_keep_serving_while_one_is_killed(make_pool: MakePool) -> None:
    pool = make_pool(model("Crash"), workers=2, name="crash")
    results: list[Any] = []
    running = threading.Thread(target=lambda: results.extend(pool.run_batch([{"how": "sleep30"}])))
    running.start()
    deadline = time.monotonic() + 10
    while len(pool._busy) != 1 and time.monotonic() < deadline:  # the sleeping batch is on a worker
        time.sleep(0.01)
    [victim] = [w.pid for w in pool._busy]
    [other] = [pid for pid in pool.pids() if pid != victim]
    os.kill(victim, signal.SIGKILL)
    assert pool.run_batch([{"how": "ok"}]) == [other]  # the other worker answers meanwhile
    running.join(10)
    assert isinstance(results[0], ModelError)
    assert "died (signal SIGKILL, e.g. from the OOM killer)" in results[0].message
    deadline = time.monotonic() + 30
    while pool.restarts == 0 and time.monotonic() < deadline:  # replaced in the background
        time.sleep(0.05)
    assert pool.restarts == 1
    assert len(pool.pids()) == 2
    assert victim not in pool.pids()


def test_a_hung_worker_is_abandoned_and_replaced(make_pool: MakePool) -> None:
    pool = make_pool(model("Crash"), name="crash")
    [before] = pool.pids()
    started = time.monotonic()
    [result] = pool.run_batch([{"how": "hang"}], timeout=0.5)
    assert time.monotonic() - started < 10
    assert type(result) is Timeout
    assert result.message == "model crash:1 did not answer within 0.5 s; its worker was replaced"
    assert not alive(before)
    [after] = pool.run_batch([{"how": "ok"}], timeout=30)
    assert after != before
    assert pool.restarts == 1


def test_restarts_back_off_while_the_model_cannot_load(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(model("Crash"), name="crash")
    (tmp_path / "fail-load").touch()  # from now on the model cannot load
    [crashed] = pool.run_batch([{"how": "exit"}])
    assert isinstance(crashed, ModelError)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # waits for the first restart to fail, then refuses at once
        [result] = pool.run_batch([{"how": "ok"}], timeout=20)
        if isinstance(result, Unavailable):
            break
    assert isinstance(result, Unavailable)
    assert "has no running worker process (model crash:1 failed to load" in result.message
    assert result.retry_after is not None
    assert result.retry_after > 0.1
    (tmp_path / "fail-load").unlink()
    [recovered] = pool.run_batch([{"how": "ok"}], timeout=30)  # loaded again on a later attempt
    while isinstance(recovered, Unavailable) and time.monotonic() < deadline + 10:
        time.sleep(0.1)
        [recovered] = pool.run_batch([{"how": "ok"}], timeout=30)
    assert recovered == pool.pids()[0]
    assert pool.restarts == 1


# -- parallelism, memory, shutdown ------------------------------------------------------------------


def test_workers_run_gil_bound_batches_in_parallel(make_pool: MakePool) -> None:
    pool = make_pool(model("Spin"), workers=2, name="spin")
    answers: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        [answer] = pool.run_batch([{"seconds": 0.3}])
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=run) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert len(answers) == 4
    assert len({a["pid"] for a in answers}) == 2
    # two batches of different workers ran at the same time (no timing bound: CI machines vary)
    assert any(
        a["pid"] != b["pid"] and a["start"] < b["end"] and b["start"] < a["end"]
        for a in answers
        for b in answers
    )
    print(f"4 batches of 0.3 s CPU on 2 workers: {elapsed:.2f} s")


def test_memory_is_told_per_worker(make_pool: MakePool) -> None:
    pool = make_pool(model("Crash"), workers=2, name="crash")
    sizes = pool.memory()
    assert sorted(sizes) == sorted(pool.pids())
    assert all(size > 10 * 1024 * 1024 for size in sizes.values())


def test_close_leaves_no_process_and_no_shared_memory(tmp_path: Path) -> None:
    pool = WorkerPool(model("Scale"), "1", name="scale", data_path=tmp_path, workers=2, runner_options=CPU)
    pool.start()
    pids = pool.pids()
    x = np.ones((300, 64))
    threads = [
        threading.Thread(target=pool.run_batch, args=([{"x": x, "k": np.ones((300, 100), np.int32)}],))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert our_blocks()
    pool.close()
    pool.close()  # twice is fine
    assert not any(alive(pid) for pid in pids)
    assert worker_children() == []
    assert our_blocks() == []
    [after] = pool.run_batch([{"x": x, "k": np.ones((300, 100), np.int32)}])
    assert isinstance(after, Unavailable)


def test_close_stops_a_batch_that_runs_too_long(make_pool: MakePool) -> None:
    pool = make_pool(model("Crash"), name="crash")
    results: list[Any] = []
    running = threading.Thread(target=lambda: results.extend(pool.run_batch([{"how": "hang"}])))
    running.start()
    while not pool._busy:
        time.sleep(0.01)
    started = time.monotonic()
    pool.close(timeout=1.0)
    running.join(10)
    assert time.monotonic() - started < 5
    assert isinstance(results[0], Unavailable)
    assert re.search(r"shut down while running this request", results[0].message)
