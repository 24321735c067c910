"""Training jobs on their own: one at a time, their files, and telling a live job from a lost one."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from modelpod.errors import Conflict, InvalidInput
from modelpod.serving import training
from modelpod.serving.training import FAILED, JOB_FILE, RUNNING, SUCCEEDED, TrainingJob, TrainingJobs


def recorded(folder: Path, **changes: object) -> TrainingJob:
    """A running job as another process left it in `folder`."""
    job = dataclasses.replace(TrainingJob("m", "1", {}), **changes)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / JOB_FILE).write_text(json.dumps(dataclasses.asdict(job)))
    loaded = TrainingJobs().get("m", "1", folder)
    assert loaded is not None
    return loaded


def test_a_job_whose_process_is_gone_reads_as_interrupted(tmp_path: Path) -> None:
    with subprocess.Popen(["true"]) as finished:
        finished.wait()
    gone = recorded(tmp_path, pid=finished.pid)  # a process of this host that has exited
    assert gone.state == FAILED
    assert gone.error_kind == "Interrupted"


def test_a_job_whose_process_lives_on_this_host_is_running(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "30"]) as other:
        try:
            assert recorded(tmp_path, pid=other.pid).state == RUNNING
        finally:
            other.kill()


def test_on_another_host_a_job_is_live_while_its_file_is_fresh(tmp_path: Path) -> None:
    assert recorded(tmp_path, host="elsewhere", written_at=time.time()).state == RUNNING
    stale = time.time() - training.STALE - 1
    assert recorded(tmp_path, host="elsewhere", written_at=stale).state == FAILED


def test_one_job_at_a_time_per_version_and_the_file_tells_how_it_ended(tmp_path: Path) -> None:
    ended: list[TrainingJob] = []
    jobs = TrainingJobs(on_end=ended.append)
    release = threading.Event()
    jobs.start(TrainingJob("m", "1", {}), tmp_path, lambda: release.wait(10) and {"ok": 1}, list)
    with pytest.raises(Conflict, match="already training"):
        jobs.start(TrainingJob("m", "1", {}), tmp_path, dict, list)
    jobs.start(TrainingJob("m", "2", {}), tmp_path / "2", dict, list)  # another version may train
    assert json.loads((tmp_path / JOB_FILE).read_text())["state"] == RUNNING
    release.set()
    deadline = time.monotonic() + 10
    while len(ended) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert {job.version: job.state for job in ended} == {"1": SUCCEEDED, "2": SUCCEEDED}
    assert json.loads((tmp_path / JOB_FILE).read_text())["result"] == {"ok": 1}
    assert jobs.running() == []


def test_a_running_job_is_rewritten_so_other_hosts_see_it_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "HEARTBEAT", 0.05)
    release, ended = threading.Event(), threading.Event()
    jobs = TrainingJobs(on_end=lambda job: ended.set())

    def refuse() -> None:
        release.wait(10)
        raise InvalidInput("no data")

    reported = [{"step": 0}]  # the version's log before the job: not this job's progress
    jobs.start(TrainingJob("m", "1", {}, log_start=1), tmp_path, refuse, lambda: list(reported))
    first = json.loads((tmp_path / JOB_FILE).read_text())["written_at"]
    assert jobs.get("m", "1", tmp_path).progress is None  # type: ignore[union-attr]
    reported.append({"step": 1})
    assert jobs.get("m", "1", tmp_path).progress == {"step": 1}  # type: ignore[union-attr]
    time.sleep(0.3)
    rewritten = json.loads((tmp_path / JOB_FILE).read_text())
    assert rewritten["written_at"] > first
    assert rewritten["progress"] == {"step": 1}  # other hosts see it too
    release.set()
    assert ended.wait(10)
    time.sleep(0.2)  # no rewrite after the last one says how it ended
    final = json.loads((tmp_path / JOB_FILE).read_text())
    assert (final["state"], final["error_kind"], final["error"]) == (FAILED, "InvalidInput", "no data")
    assert final["progress"] == {"step": 1}  # kept with the job that ended


def test_an_unreadable_job_file_is_no_job(tmp_path: Path) -> None:
    (tmp_path / JOB_FILE).write_text("{not json")
    assert TrainingJobs().get("m", "1", tmp_path) is None
    assert TrainingJobs().get("m", "1", tmp_path / "absent") is None
