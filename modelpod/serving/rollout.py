"""Rollouts decided by the numbers: a model's traffic policy may name a candidate version (a canary
of its split, or its shadow) with rules; over each window the candidate's error rate, p99 latency
and agreement are judged, and it is stepped up, promoted to the default, or rolled back to 0.

Judged as requests arrive (`check`, at most every `interval` of the clock), so no task runs for an
idle model; a decision replaces the policy as a whole (requests in flight finish where they went),
is logged with its numbers, published as a `RolloutDecided` event and kept for GET /traffic.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from modelpod.observe.events import Recorder, RolloutDecided
from modelpod.serving.rollout_rules import PROMOTE, ROLLBACK, STEP, WAIT, Numbers, RolloutRules, verdict
from modelpod.serving.rollout_watch import RolloutWatch
from modelpod.serving.traffic import Traffic
from modelpod.serving.traffic_policy import TrafficPolicy

logger = logging.getLogger("modelpod.traffic")

DECISIONS_KEPT = 20  # per model, newest last
LONGEST_INTERVAL = 0.5  # seconds between two judgements of one model at most


@dataclass
class _Window:
    policy: TrafficPolicy  # the policy it judges; another one (set by anyone) starts a new window
    started: float
    next_check: float


class Rollouts:
    """The rollouts of a service's models: judged on its requests, applied to its `Traffic`."""

    def __init__(
        self,
        traffic: Traffic,
        watch: RolloutWatch,
        promote: Callable[[str, str], Awaitable[Any]],
        recorder: Recorder,
    ) -> None:
        self.traffic = traffic
        self.watch = watch  # one of the service's recorders: the candidates' outcomes
        self.promote = promote  # makes a version the model's default (through the replicas' Changes)
        self.recorder = recorder
        self.clock = watch.clock
        self.decided: Callable[[str, TrafficPolicy], None] | None = None  # told of each policy it sets
        self.decisions: dict[str, collections.deque[dict[str, Any]]] = {}
        self._windows: dict[str, _Window] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def check(self, name: str, policy: TrafficPolicy) -> None:
        """(On the event loop, as a request to the model arrives) judge its rollout if it is due."""
        rules = policy.rollout
        if rules is None:
            return
        now = self.clock()
        window = self._windows.get(name)
        if window is None or window.policy is not policy:
            self.watch.watch(name, rules.version, _shadowed(policy))
            self._windows[name] = _Window(policy, now, now + _interval(rules))
            return
        if now < window.next_check:
            return
        window.next_check = now + _interval(rules)
        numbers = self.watch.numbers(name, rules.version, _shadowed(policy))
        over = now - window.started >= rules.window_seconds
        decision, reason = verdict(rules, numbers, over, _last_step(policy, rules))
        if decision != WAIT:
            self._apply(name, policy, rules, decision, reason, numbers)

    def _apply(
        self,
        name: str,
        policy: TrafficPolicy,
        rules: RolloutRules,
        decision: str,
        reason: str,
        numbers: Numbers,
    ) -> None:
        if decision == ROLLBACK:
            changed = rolled_back(policy, rules.version)
        elif decision == STEP:
            changed = stepped(policy, rules, self.traffic.repository.get(name).default_version)
        else:
            changed = dataclasses.replace(policy, rollout=None)  # the split holds until the switch
        self._set(name, changed)
        share = share_of(changed, rules.version)
        self._record(name, rules.version, decision, reason, numbers, share)
        if changed.rollout is None:  # it ended: its numbers are no longer kept
            self.watch.forget(name)
        if decision == PROMOTE:
            task = asyncio.get_running_loop().create_task(self._promote(name, rules.version))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _promote(self, name: str, version: str) -> None:
        """Make the candidate the default, then send every request there: the split goes."""
        try:
            await self.promote(name, version)
        except Exception as error:  # the split stays as it was: nothing is lost but the promotion
            logger.error("%s: promoting version %s failed, the split stays: %s", name, version, error)
            return
        policy = self.traffic.policy(name)
        shadow = None if policy.shadow is None or policy.shadow.version == version else policy.shadow
        self._set(name, TrafficPolicy(sticky=policy.sticky, shadow=shadow))

    def _set(self, name: str, policy: TrafficPolicy) -> None:
        self.traffic.set(name, policy.document())
        if self.decided is not None:
            self.decided(name, policy)

    def _record(
        self, name: str, version: str, decision: str, reason: str, numbers: Numbers, share: float | None
    ) -> None:
        entry = {"at": time.time(), "version": version, "decision": decision, "reason": reason,
                 "share": share, **numbers.document()}  # fmt: skip
        self.decisions.setdefault(name, collections.deque(maxlen=DECISIONS_KEPT)).append(entry)
        level = logging.WARNING if decision == ROLLBACK else logging.INFO
        logger.log(level, "%s: rollout of version %s: %s (%s) on %s", name, version, decision, reason,
                   numbers.document())  # fmt: skip
        self.recorder.on_rollout(RolloutDecided(name, version, decision, reason, numbers.document(), share))

    def document(self, name: str) -> dict[str, Any]:
        """The rollout's current window and the decisions made, for GET /models/{name}/traffic."""
        policy = self.traffic.policy(name)
        window = self._windows.get(name)
        current = None
        if policy.rollout is not None and window is not None and window.policy is policy:
            numbers = self.watch.numbers(name, policy.rollout.version, _shadowed(policy))
            current = {"seconds": self.clock() - window.started, **numbers.document()}
        return {"window": current, "decisions": list(self.decisions.get(name, ()))}

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


def _interval(rules: RolloutRules) -> float:
    return min(rules.window_seconds / 10, LONGEST_INTERVAL)


def _shadowed(policy: TrafficPolicy) -> bool:
    """Whether the candidate is the shadow (judged on its shadow requests) rather than a canary."""
    rules = policy.rollout
    return rules is not None and rules.version not in policy.split


def share_of(policy: TrafficPolicy, version: str) -> float | None:
    """The version's percent of the split (None: it is not in the split)."""
    if version not in policy.split:
        return None
    return 100.0 * policy.split[version] / sum(policy.split.values())


def _last_step(policy: TrafficPolicy, rules: RolloutRules) -> bool:
    if not rules.steps:
        return True
    share = share_of(policy, rules.version)
    return share is not None and share >= rules.steps[-1] - 1e-9


def stepped(policy: TrafficPolicy, rules: RolloutRules, default: str) -> TrafficPolicy:
    """The candidate at its next step's share, the others scaled to the rest. A shadow becomes a
    canary at the first step (its agreement can no longer be judged)."""
    share = share_of(policy, rules.version)
    target = next(s for s in rules.steps if share is None or s > share + 1e-9)
    others = {v: w for v, w in policy.split.items() if v != rules.version}
    if sum(others.values()) <= 0:
        others = {default: 1.0}
    total = sum(others.values())
    split = {v: w * (100.0 - target) / total for v, w in others.items()}
    split[rules.version] = target
    if share is None:  # the shadow steps into the split
        shadow = None if policy.shadow and policy.shadow.version == rules.version else policy.shadow
        return TrafficPolicy(split, policy.sticky, shadow, dataclasses.replace(rules, min_agreement=None))
    return dataclasses.replace(policy, split=split)


def rolled_back(policy: TrafficPolicy, version: str) -> TrafficPolicy:
    """The candidate out: its weight 0 (the default takes all when no other has weight), or no
    shadow; the rollout ends."""
    if version in policy.split:
        split = {**policy.split, version: 0.0}
        if sum(split.values()) <= 0:
            split = {}
        return dataclasses.replace(policy, split=split, rollout=None)
    return dataclasses.replace(policy, shadow=None, rollout=None)
