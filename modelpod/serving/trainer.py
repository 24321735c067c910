"""The service's training requests: start a version's job, read it, follow its progress. The jobs
themselves (threads, state on disk) are `TrainingJobs`'."""

from __future__ import annotations

from typing import Any

from modelpod.observe.events import Recorder, TrainingChanged
from modelpod.runtime.calls import check_train_options
from modelpod.runtime.runner import Runner
from modelpod.runtime.storable import check_arguments
from modelpod.serving.changes import Changes
from modelpod.serving.pool import ModelPool
from modelpod.serving.repository import HostedModel, Repository
from modelpod.serving.training import SUCCEEDED, TrainingJob, TrainingJobs


class Trainer:
    """Training jobs of the versions of one repository."""

    def __init__(self, repository: Repository, pool: ModelPool, recorder: Recorder, changes: Changes) -> None:
        self.repository = repository
        self.pool = pool
        self.recorder = recorder
        self.changes = changes
        self.jobs = TrainingJobs(on_start=self._started, on_end=self._ended)

    def start(self, hosted: HostedModel, version: str, options: dict[str, Any]) -> dict[str, Any]:
        """Start training `version` in the background; its document says how to follow it.

        The job trains an instance of its own: the loaded one keeps serving until the job
        succeeds, then the pool reloads the version with what `train` saved."""
        check_arguments(options, "training arguments")  # before any state changes: they are stored
        instance = self.repository.instance(hosted, version)
        check_train_options(instance, options)
        job = TrainingJob(hosted.name, version, options, log_start=len(instance.log()))

        def train() -> Any:
            with Runner(instance, **hosted.runner_options) as runner:
                result = runner.train(**options)
            self.pool.evict((hosted.name, version), "trained: reload the new weights")
            return result

        self.jobs.start(job, self.repository.folder(hosted.name, version), train, instance.log)
        return job.as_dict()

    def _started(self, job: TrainingJob) -> None:
        self.recorder.on_training(TrainingChanged(job.model, job.version, job.state))

    def _ended(self, job: TrainingJob) -> None:
        """On the job's thread when a job ends (its state is saved by then)."""
        self.recorder.on_training(TrainingChanged(job.model, job.version, job.state))
        if job.state == SUCCEEDED:
            self.changes.trained(job.model, job.version)

    def job(self, name: str, version: str) -> dict[str, Any] | None:
        """The version's latest training job with its progress; None if it was never trained."""
        job = self.jobs.get(name, version, self.repository.folder(name, version))
        return None if job is None else job.as_dict()

    def problem(self, name: str, version: str) -> str | None:
        """What is wrong with the version's stored job, if anything (a damaged file)."""
        return self.jobs.problem(name, version, self.repository.folder(name, version))

    def progress(
        self, name: str, version: str, after: int = 0
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """What the version's latest job reported past its entry `after`, and the job's document."""
        job, reported = self.jobs.follow(name, version, self.repository.folder(name, version))
        if job is None:
            return [], None
        if reported is None:  # a job that ended, or ran elsewhere: its reports are in the log on disk
            reported = self.repository.instance(self.repository.get(name), version).log()[job.log_start :]
        return reported[after:], job.as_dict()
