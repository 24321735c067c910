"""Changing what is served: a version initialized with a new config, a model loaded or unloaded, the
default version switched with no request dropped. These make the change here; the service passes
each through its `Changes` so that other replicas can follow."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from modelpod.runtime.storable import check_arguments
from modelpod.serving.execution import Execution

logger = logging.getLogger("modelpod.serving.versions")


class Versions:
    """Load, unload, initialize, and switch the default, for the models of one repository."""

    def __init__(self, execution: Execution) -> None:
        self.execution = execution
        self.repository = execution.repository
        self.pool = execution.pool

    def initialize(self, name: str, version: str | None, config: dict[str, Any]) -> dict[str, Any]:
        """(On a model thread) record a version's config; a loaded instance reloads with it."""
        hosted = self.repository.get(name)
        version = version or hosted.default_version
        check_arguments(config, "initialize() arguments")  # before the call: `self` cannot even reach it
        info = self.repository.instance(hosted, version).initialize(**config)
        self.pool.evict((hosted.name, version), "initialized with a new config")
        return info

    async def load(self, name: str) -> None:
        """Load the default version now, and accept requests for the model again."""
        hosted = self.repository.get(name)
        hosted.unloaded = False
        run = self.execution.admission.run
        await run(self.execution.with_runner, hosted, hosted.default_version, lambda runner: None)

    async def unload(self, name: str) -> None:
        """Unload every loaded version; requests are refused until the model is loaded again."""
        hosted = self.repository.get(name)
        hosted.unloaded = True
        executor = self.execution.admission.executor
        await asyncio.get_running_loop().run_in_executor(executor, self.pool.evict_model, name)

    async def set_default(self, name: str, version: str) -> dict[str, Any]:
        """Load and warm `version`, then make it the default; in-flight requests finish on the old one."""
        hosted, version = self.repository.resolve(name, version)
        previous = hosted.default_version
        await self.execution.admission.run(self._switch, name, previous, version)
        logger.info("default version of %s: %s -> %s", name, previous, version)
        return {"name": name, "default_version": version, "previous": previous}

    def _switch(self, name: str, previous: str, version: str) -> None:
        hosted = self.repository.get(name)
        with self.pool.pinned((name, previous)):  # the old version serves until the swap
            self.execution.with_runner(hosted, version, lambda runner: None)
            self.repository.set_default(name, version)
        self.pool.trim(keep=(name, version))
