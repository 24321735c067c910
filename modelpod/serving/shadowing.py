"""Shadow traffic: a share of a model's requests also sent to a shadow version once the caller's
answer is decided, and the shadow's answers compared with the served ones.

The caller never waits for the shadow and never sees its errors: the shadow runs as a task of its
own, at the lowest priority, and is shed first under load: skipped when that model already has
`max_in_flight` shadow requests running or its shadow version has requests waiting.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from modelpod.observe.events import Recorder, ShadowDone
from modelpod.serving.agreement import agreement
from modelpod.serving.execution import Execution
from modelpod.serving.options import Options
from modelpod.serving.repository import HostedModel

logger = logging.getLogger("modelpod.traffic")

SHADOW_PRIORITY = -(2**31)  # below any caller's: a batcher sheds it first when its queue is full
SHADOW_TIMEOUT = 60.0  # seconds: a shadow that hangs frees its place in the end


@dataclass
class ShadowResults:
    """What one model's shadow version did, as GET /models/{name}/traffic shows it."""

    sent: int = 0
    compared: int = 0
    errors: int = 0
    shed: int = 0
    agreed: collections.Counter[str] = field(default_factory=collections.Counter)  # per output
    disagreed: collections.Counter[str] = field(default_factory=collections.Counter)
    latency_difference: float = 0.0  # summed over the compared requests, seconds

    def document(self) -> dict[str, Any]:
        outputs = sorted(set(self.agreed) | set(self.disagreed))
        rates = {o: self.agreed[o] / (self.agreed[o] + self.disagreed[o]) for o in outputs}
        mean = self.latency_difference / self.compared if self.compared else None
        return {"sent": self.sent, "compared": self.compared, "errors": self.errors, "shed": self.shed,
                "agreement": rates, "agreed": dict(self.agreed), "disagreed": dict(self.disagreed),
                "mean_latency_difference_seconds": mean}  # fmt: skip


class Shadowing:
    """Runs and compares the shadow requests of a service's models."""

    def __init__(self, execution: Execution, recorder: Recorder, max_in_flight: int = 4) -> None:
        self.execution = execution
        self.recorder = recorder
        self.max_in_flight = max_in_flight  # per model: the model threads a shadow may take
        self.results: dict[tuple[str, str], ShadowResults] = {}
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._tasks: set[asyncio.Task[None]] = set()  # held, so that none is collected while running

    def send(
        self,
        hosted: HostedModel,
        version: str,
        requests: list[dict[str, Any]],
        served: list[Any],
        seconds: float,
    ) -> None:
        """(On the event loop, after the caller's answer) send `requests` to shadow `version` too."""
        results = self.results.setdefault((hosted.name, version), ShadowResults())
        waiting = self.execution.batchers.queue_depths().get((hosted.name, version), 0)
        if self._in_flight[hosted.name] >= self.max_in_flight or waiting:
            results.shed += 1
            self.recorder.on_shadow(ShadowDone(hosted.name, version, "shed"))
            return
        results.sent += 1
        self._in_flight[hosted.name] += 1
        task = asyncio.get_running_loop().create_task(self._run(hosted, version, requests, served, seconds))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        hosted: HostedModel,
        version: str,
        requests: list[dict[str, Any]],
        served: list[Any],
        seconds: float,
    ) -> None:
        results = self.results[(hosted.name, version)]
        options = Options(priority=SHADOW_PRIORITY, timeout=SHADOW_TIMEOUT, protocol="shadow")
        started = time.monotonic()
        try:
            answers = await self.execution.predict_many(hosted, version, requests, options)
            took = time.monotonic() - started
            difference = took - seconds
            compare = getattr(hosted.probe, "compare", None)
            outputs: dict[str, bool] = collections.defaultdict(lambda: True)
            for served_answer, shadow_answer in zip(served, answers, strict=True):
                for output, agreed in agreement(served_answer, shadow_answer, compare).items():
                    outputs[output] = outputs[output] and agreed
        except Exception as error:  # the shadow's failure is counted, never the caller's
            results.errors += 1
            logger.info("%s: shadow version %s failed: %s", hosted.name, version, error)
            self.recorder.on_shadow(
                ShadowDone(hosted.name, version, "error", seconds=time.monotonic() - started)
            )
            return
        finally:
            self._in_flight[hosted.name] -= 1
        results.compared += 1
        results.latency_difference += difference
        for output, agreed in outputs.items():
            (results.agreed if agreed else results.disagreed)[output] += 1
        self.recorder.on_shadow(ShadowDone(hosted.name, version, "compared", dict(outputs), difference, took))

    def document(self, name: str, version: str | None) -> dict[str, Any] | None:
        """The shadow results of a model's shadow version; None when it has none."""
        results = self.results.get((name, version or ""))
        return None if results is None else results.document()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
