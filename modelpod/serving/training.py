"""Training as background jobs: at most one per model version, its state kept beside the version.

A job runs the model's `train` on a thread of its own, on an instance of its own, so the loaded
instance keeps answering predictions until the job succeeds. Its state is written to
`training.json` in the version's folder when it starts, every few seconds while it runs, and when
it ends: a failed job keeps its error, and other processes sharing the folder (a restarted server,
other replicas) read the job from there. A running job whose process is gone (on this host), or
that has not been written for a while (on another), reads as failed: interrupted.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from modelpod.errors import Conflict, InvalidInput, ModelError, ModelpodError
from modelpod.protocol import jsoncodec
from modelpod.runtime.state_files import DamagedState, read_json, write_json
from modelpod.runtime.storable import check_storable

logger = logging.getLogger("modelpod.serving.training")

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
JOB_FILE = "training.json"
HEARTBEAT = 5.0  # seconds between writes of a running job's file
STALE = 6 * HEARTBEAT  # a running job's file older than this, written on another host: interrupted
Key = tuple[str, str]
Reports = Callable[[], list[dict[str, Any]]]  # the training instance's log, as `Model.log` gives it
PROCESS_TOKEN = uuid.uuid4().hex  # this process, as no later process with its PID can claim to be
_writing = threading.Lock()  # a running job's rewrites and its last write, one at a time


@dataclass
class TrainingJob:
    """One run of a version's `train`; `as_dict` is what the server answers about it."""

    model: str
    version: str
    arguments: dict[str, Any]
    state: str = RUNNING
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    error_kind: str | None = None
    error_id: str | None = None
    log_start: int = 0  # log entries the version had before this job: its own progress comes after
    progress: dict[str, Any] | None = None  # the job's last report
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    written_at: float = field(default_factory=time.time)
    # What tells the process that runs the job from a later one given the same PID (a restarted
    # server that is PID 1 of its container): a token of its own, and when the process started.
    process: str | None = field(default_factory=lambda: PROCESS_TOKEN)
    process_started: int | None = field(init=False, default=None)  # that of `pid`, read when made

    def __post_init__(self) -> None:
        self.process_started = _start_time(self.pid)

    def as_dict(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        for internal in ("pid", "written_at", "process", "process_started"):
            del document[internal]
        return document

    def follow(self, reports: Reports) -> list[dict[str, Any]]:
        """This job's own reports, from its training instance's log; the last one is its progress."""
        own = reports()[self.log_start :]
        self.progress = own[-1] if own else None
        return own

    def interrupted(self) -> bool:
        """Whether a job recorded as running has lost the process that ran it."""
        if self.state != RUNNING:
            return False
        if self.host != socket.gethostname():
            return time.time() - self.written_at > STALE
        if self.pid == os.getpid():  # this process's own job, or one of a process before it
            return self.process != PROCESS_TOKEN
        if self.process_started is not None and _start_time(self.pid) not in (None, self.process_started):
            return True  # that PID is another process now
        return not _alive(self.pid)

    def fail(self, error: ModelpodError) -> None:
        self.state, self.finished_at = FAILED, time.time()
        self.error_kind = type(error).__name__
        cause = error.__cause__
        self.error = f"{error}: {cause}" if cause is not None and str(cause) else str(error)
        self.error_id = getattr(error, "error_id", None)


class TrainingJobs:
    """The jobs of one server: start, look up, and be told when one ends."""

    def __init__(
        self,
        on_start: Callable[[TrainingJob], None] = lambda job: None,
        on_end: Callable[[TrainingJob], None] = lambda job: None,
    ) -> None:
        self._jobs: dict[Key, TrainingJob] = {}
        self._reports: dict[Key, Reports] = {}  # of the jobs running here: their reports, in memory
        self._lock = threading.Lock()
        self._on_start = on_start
        self._on_end = on_end

    def start(
        self, job: TrainingJob, folder: Path, train: Callable[[], Any], reports: Reports
    ) -> TrainingJob:
        """Run `train` in the background as `job`, its progress read from `reports`; Conflict if the
        version is training already."""
        key = (job.model, job.version)
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.state == RUNNING:
                raise Conflict(
                    f"model {job.model!r} version {job.version!r} is already training (since "
                    f"{time.strftime('%H:%M:%S', time.localtime(current.started_at))}); wait for that "
                    "job to end: GET its /train, or follow /train/events"
                )
            self._jobs[key] = job
            self._reports[key] = reports
        try:
            _save(job, folder)
        except BaseException:  # not started: the version must not be left "running"
            with self._lock:
                self._reports.pop(key, None)
                if current is None:
                    self._jobs.pop(key, None)
                else:
                    self._jobs[key] = current
            raise
        self._on_start(job)
        context = contextvars.copy_context()  # the job's log lines carry the request id that started it
        thread = threading.Thread(
            target=context.run,
            args=(self._run, job, folder, train, reports),
            name=f"modelpod-train-{job.model}:{job.version}",
            daemon=True,  # a job the server does not live to finish reads as interrupted afterwards
        )
        thread.start()
        return job

    def _run(self, job: TrainingJob, folder: Path, train: Callable[[], Any], reports: Reports) -> None:
        logger.info("training %s version %s started", job.model, job.version)
        ended = threading.Event()
        threading.Thread(target=_keep_written, args=(job, folder, ended, reports), daemon=True).start()
        try:
            job.result = kept(train())
            job.state, job.finished_at = SUCCEEDED, time.time()
            logger.info("training %s version %s succeeded", job.model, job.version)
        except ModelpodError as error:
            job.fail(error)
            logger.warning("training %s version %s failed: %s", job.model, job.version, job.error)
        except Exception as error:  # a bug outside the model's code: still a failed job, never a dead thread
            failure = ModelError(f"training failed with {type(error).__name__}")
            logger.exception("error id %s: training %s version %s", failure.error_id, job.model, job.version)
            job.fail(failure)
        finally:
            with _writing:
                ended.set()
                job.follow(reports)
                _save(job, folder)
            with self._lock:
                self._reports.pop((job.model, job.version), None)  # the instance need not stay in memory
            self._on_end(job)

    def get(self, model: str, version: str, folder: Path) -> TrainingJob | None:
        """The version's latest job: this server's, or the one recorded on disk; None if never trained."""
        return self.follow(model, version, folder)[0]

    def follow(
        self, model: str, version: str, folder: Path
    ) -> tuple[TrainingJob | None, list[dict[str, Any]] | None]:
        """The version's latest job, and its reports when it runs here (read from memory, not disk);
        its `progress` is then up to the moment."""
        with self._lock:
            job = self._jobs.get((model, version))
            reports = self._reports.get((model, version))
        if job is None:
            return _load(folder), None
        return job, job.follow(reports) if reports is not None else None

    def problem(self, model: str, version: str, folder: Path) -> str | None:
        """Why the version's job record cannot be read, if it cannot (a listing shows it)."""
        with self._lock:
            if (model, version) in self._jobs:
                return None
        try:
            _read(folder)
        except DamagedState as error:
            return str(error)
        return None

    def running(self) -> list[TrainingJob]:
        with self._lock:
            return [job for job in self._jobs.values() if job.state == RUNNING]


def _keep_written(job: TrainingJob, folder: Path, ended: threading.Event, reports: Reports) -> None:
    """Rewrite a running job's file now and then: other hosts tell a live job by its freshness."""
    while not ended.wait(HEARTBEAT):
        with _writing:  # never after the last write, which says how the job ended
            if not ended.is_set():
                job.follow(reports)
                _save(job, folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (field 22 of /proc/PID/stat, Linux);
    None where that cannot be read (another system, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # the command name, field 2, is in parentheses and may hold spaces: count after its end
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _save(job: TrainingJob, folder: Path) -> None:
    job.written_at = time.time()
    write_json(folder / JOB_FILE, dataclasses.asdict(job), default=_unwritable)


def _load(folder: Path) -> TrainingJob | None:
    """The job recorded in the folder; None if none is, or if its record is damaged (logged; see
    `TrainingJobs.problem`)."""
    try:
        return _read(folder)
    except DamagedState as error:
        logger.warning("%s", error)
        return None


def _read(folder: Path) -> TrainingJob | None:
    """The job recorded in the folder, None if none is; `DamagedState` if its record is damaged."""
    path = folder / JOB_FILE
    recorded = read_json(path)
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise DamagedState(f"{path} is damaged: it holds no JSON object")
    started = recorded.pop("process_started", None)
    try:
        job = TrainingJob(**{"process": None, **recorded})  # older files had no process token
    except TypeError as error:
        raise DamagedState(f"{path} is damaged: {error}") from None
    if not isinstance(job.state, str) or not isinstance(job.pid, int) or not isinstance(job.host, str):
        raise DamagedState(f"{path} is damaged: no state or process recorded")
    job.process_started = started if isinstance(started, int) else None
    if job.interrupted():
        job.state, job.error_kind = FAILED, "Interrupted"
        job.error = "interrupted: the server stopped while this job was running"
    return job


def kept(result: Any) -> Any:
    """A job's result as it is kept and listed: unchanged when JSON holds it, else a note of why not
    (a result nested too deep, say, would otherwise fail every listing that shows the job)."""
    try:
        check_storable(result, "the result")
        return result
    except InvalidInput:
        pass
    try:  # numpy numbers, tuples, bytes: kept as a listing sends them
        plain = orjson.loads(jsoncodec.dumps(result))
        check_storable(plain, "the result")
    except (TypeError, InvalidInput) as error:  # orjson's JSONEncodeError is a TypeError
        return f"<not kept: {error}>"
    return plain


def _unwritable(value: object) -> str:
    """What stands in the job file for a result JSON cannot hold (the live job keeps the value)."""
    return f"<{type(value).__name__}>"
