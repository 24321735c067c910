"""A model's methods other than `predict`, called by name (the native routes' `/{method}`, gRPC's `Call`):
`initialize`, `train` (starts a job), `training` (that job), `log`; and its traffic policy
(`traffic`, `set_traffic`). `predict` is the service's own: it is the request path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelpod.serving.changes import CHANGED, Changes
from modelpod.serving.execution import Execution
from modelpod.serving.traffic_control import TRAFFIC_METHODS, TrafficControl
from modelpod.serving.trainer import Trainer
from modelpod.serving.versions import Versions

METHODS = ("predict", "initialize", "train", "training", "log", *TRAFFIC_METHODS)


class ModelMethods:
    """Each method on a model thread (they read and write state files), through `Changes` when it
    changes what other replicas serve."""

    def __init__(
        self,
        execution: Execution,
        versions: Versions,
        trainer: Trainer,
        traffic: TrafficControl,
        changes: Changes,
    ) -> None:
        self.execution = execution
        self.versions = versions
        self.trainer = trainer
        self.traffic = traffic
        self.changes = changes

    async def call(self, name: str, version: str | None, method: str, arguments: Mapping[str, Any]) -> Any:
        """`method` (any of `METHODS` but `predict`) on `version`, or on the default version."""
        if method in TRAFFIC_METHODS:
            return await self.traffic.call(name, version, method, arguments)
        run = self.execution.admission.run
        repository = self.execution.repository
        if method == "initialize":
            resolved = version or repository.get(name).default_version
            initialize = self.versions.initialize
            return await self.changes.make(
                CHANGED, name, resolved, lambda: run(initialize, name, version, dict(arguments))
            )
        hosted, version = self.execution.available(name, version)
        if method == "log":
            return await run(lambda: repository.instance(hosted, version).log())
        if method == "train":
            return await run(self.trainer.start, hosted, version, dict(arguments))
        return await run(self.trainer.job, hosted.name, version)  # "training"
