"""Traffic between a model's versions, as the service offers it: the policies (`Traffic`), the shadow
requests (`Shadowing`) and the rollouts decided by the numbers (`Rollouts`), behind one object."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from modelpod.errors import InvalidInput
from modelpod.observe.events import Recorder
from modelpod.serving.changes import TRAFFIC, Changes
from modelpod.serving.execution import Execution
from modelpod.serving.repository import HostedModel
from modelpod.serving.rollout import Rollouts
from modelpod.serving.rollout_watch import RolloutWatch
from modelpod.serving.shadowing import Shadowing
from modelpod.serving.traffic import Traffic
from modelpod.serving.traffic_policy import TrafficPolicy, policy_of

TRAFFIC_METHODS = ("traffic", "set_traffic")  # as native calls: the gRPC native service and Client


class TrafficControl:
    """The traffic policies of a service's models, their shadows and their rollouts."""

    def __init__(
        self,
        execution: Execution,
        pool_size: int,
        watch: RolloutWatch,
        recorder: Recorder,
        promote: Callable[[str, str], Awaitable[Any]],
        changes: Changes,
    ) -> None:
        self.repository = execution.repository
        self.changes = changes  # other replicas hear of each new policy through it
        self.traffic = Traffic(execution.repository, pool_size)
        self.shadowing = Shadowing(execution, recorder)
        self.rollouts = Rollouts(self.traffic, watch, promote, recorder)
        self.rollouts.decided = self._share_decision
        self.traffic.on_rollout = self.rollouts.check
        self._tasks: set[asyncio.Task[Any]] = set()

    def version_for(self, name: str, version: str | None, key: str | None) -> str | None:
        return self.traffic.version_for(name, version, key)

    def shadow(
        self, hosted: HostedModel, requested: str | None, calls: list[Any], answers: list[Any], started: float
    ) -> None:
        """Once the caller's answer is decided: a request to the bare name may go to the shadow too."""
        shadow = None if requested else self.traffic.policy(hosted.name).shadows()
        if shadow is not None:
            copies = [dict(call) if isinstance(call, dict) else call for call in calls]
            self.shadowing.send(hosted, shadow, copies, answers, time.monotonic() - started)

    def document(self, name: str) -> dict[str, Any]:
        """The model's policy, its shadow's results and its rollout's window and decisions."""
        self.repository.get(name)
        document = self.traffic.policy(name).document()
        shadow = document["shadow"]["version"] if document["shadow"] else None
        results = self.shadowing.document(name, shadow)
        return {**document, "shadow_results": results, "rollout_state": self.rollouts.document(name),
                "warning": self.traffic.warning(name)}  # fmt: skip

    async def set(self, name: str, document: Any) -> dict[str, Any]:
        """Check, save and apply a new policy, and share it with the other replicas; requests in
        flight finish where they went."""

        async def change() -> None:
            if self.traffic.set(name, document).rollout is None:
                self.rollouts.watch.forget(name)  # an ended rollout's numbers are not kept

        self.repository.get(name)
        shared = json.dumps(policy_of(document).document())  # refused here before anything is shared
        await self.changes.make(TRAFFIC, name, shared, change)
        return self.document(name)

    def follow(self, name: str, value: str) -> None:
        """Apply a policy another replica set (shared through `Changes`), unless it is this one's."""
        document = json.loads(value)
        if policy_of(document) != self.traffic.policy(name):
            self.traffic.set(name, document)

    def _share_decision(self, name: str, policy: TrafficPolicy) -> None:
        """A rollout decided here: tell the other replicas (applied here already)."""

        async def applied() -> None:
            return None

        value = json.dumps(policy.document())
        task = asyncio.get_running_loop().create_task(self.changes.make(TRAFFIC, name, value, applied))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def call(
        self, name: str, version: str | None, method: str, arguments: Mapping[str, Any]
    ) -> dict[str, Any]:
        """`traffic` (read) or `set_traffic` (`policy`: the new one) as a native call."""
        if version:
            raise InvalidInput(
                f"a traffic policy is the model's, not a version's: call {method} without a version"
            )
        if method == "traffic":
            return self.document(name)
        if set(arguments) != {"policy"}:
            raise InvalidInput(
                'set_traffic takes one argument, policy: {"policy": {"split": {"1": 90, "2": 10}}}'
            )
        return await self.set(name, arguments["policy"])

    def configure(self, policies: dict[str, TrafficPolicy]) -> None:
        self.traffic.configure(policies)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self.rollouts.close()
        self.shadowing.close()
