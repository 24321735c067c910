"""What every replica of one Ray deployment must agree on, kept in one small actor.

A request that changes a server (`PUT /models/{name}/default`, the repository's load and unload,
`initialize` of a version) reaches one replica only, and a training job runs on one replica
only. That replica publishes the change (the job's success) to the deployment's `SharedState`
actor; every replica follows the actor (a long poll, so a change arrives within milliseconds) and
applies it to itself: it loads and warms the new default before switching, as `modelpod serve`
does, and drops a loaded copy of a version that was initialized or trained elsewhere. A replica
that Ray starts later (a restart, a scale-up) applies the whole state before it takes requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import ray

from modelpod.errors import Unavailable
from modelpod.serving.changes import CHANGED, Changes
from modelpod.serving.service import InferenceService

logger = logging.getLogger("modelpod.ray")

NAMESPACE = "modelpod"
WATCH_SECONDS = 30.0  # how long one long poll waits for a change before asking again
RETRY_SECONDS = 1.0  # after the actor could not be reached (it is being replaced)
PUBLISH_ATTEMPTS = 5

Version = tuple[str, str]  # (model, version)
T = TypeVar("T")


@dataclass(frozen=True)
class Snapshot:
    """The shared state at one generation; a replica applies it whole, never as a diff."""

    epoch: str  # new each time the actor starts: a restarted actor begins again at generation 0
    generation: int
    defaults: dict[str, str]
    unloaded: frozenset[str]
    changed: dict[Version, int] = field(default_factory=dict)  # version -> generation of its last change
    traffic: dict[str, str] = field(default_factory=dict)  # model -> its traffic policy, as JSON


class SharedState:
    """Each model's default version, the unloaded models, the versions changed on disk, and each
    model's traffic policy."""

    def __init__(self, defaults: Mapping[str, str]) -> None:
        self._snapshot = Snapshot(uuid.uuid4().hex, 0, dict(defaults), frozenset())
        self._changed = asyncio.Condition()

    async def publish(self, kind: str, name: str, value: str = "") -> Snapshot:
        """Record one change (`default` to version `value`, `unload`, `load`, or `changed` version
        `value`) and wake every replica that follows."""
        async with self._changed:  # one change at a time: none is lost to a concurrent one
            old = self._snapshot
            generation = old.generation + 1
            defaults, unloaded, changed = dict(old.defaults), set(old.unloaded), dict(old.changed)
            traffic = dict(old.traffic)
            if kind == "default":
                defaults[name] = value
            elif kind == "unload":
                unloaded.add(name)
            elif kind == "load":
                unloaded.discard(name)
            elif kind == "changed":
                changed[(name, value)] = generation
            elif kind == "traffic":
                traffic[name] = value
            else:
                raise ValueError(f"unknown change {kind!r}")
            self._snapshot = Snapshot(old.epoch, generation, defaults, frozenset(unloaded), changed, traffic)
            self._changed.notify_all()
            return self._snapshot

    async def watch(self, generation: int, timeout: float = WATCH_SECONDS) -> Snapshot:
        """The state as soon as it differs from `generation` (at once if it does), or after `timeout`."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._snapshot.generation != generation), timeout
                )
            return self._snapshot


def start_state(name: str, defaults: Mapping[str, str]) -> Any:
    """A fresh shared state for a deployment (replacing one left by an earlier deployment of it).

    Detached, so that it lives as long as the deployment, not as long as the process that deployed
    it; `stop_state` removes it when the deployment is removed."""
    stop_state(name)
    actor = ray.remote(num_cpus=0, max_restarts=-1)(SharedState)
    return actor.options(name=name, namespace=NAMESPACE, lifetime="detached").remote(dict(defaults))


def stop_state(name: str) -> None:
    with contextlib.suppress(ValueError):  # ValueError: there is none
        ray.kill(ray.get_actor(name, namespace=NAMESPACE))


class SharedChanges(Changes):
    """The changes of one replica's service: it publishes its own and applies the others'.

    One lock orders, within the replica, its own changes and the snapshots it applies: a snapshot
    published before a change made here can never be applied after it and undo it. `attach` the
    service before it takes requests."""

    def __init__(self, state_name: str) -> None:
        self.state_name = state_name
        self._service: InferenceService | None = None
        self._state: Any = None
        self._applied = ("", -1)  # (epoch, generation) of the last snapshot applied
        self._seen: dict[Version, int] = {}
        self._changing = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the replica's, where changes are shared

    def attach(self, service: InferenceService) -> None:
        self._service = service

    @property
    def service(self) -> InferenceService:
        assert self._service is not None, "attach the service first"
        return self._service

    def _actor(self) -> Any:
        if self._state is None:
            self._state = ray.get_actor(self.state_name, namespace=NAMESPACE)
        return self._state

    # -- this replica's changes -----------------------------------------------------------------

    async def make(self, kind: str, name: str, value: str, change: Callable[[], Awaitable[T]]) -> T:
        async with self._changing:
            result = await change()
            await self._share(kind, name, value)
        return result

    def trained(self, name: str, version: str) -> None:
        """A training job ends on a thread of its own, after the request that started it was answered:
        its success, not that request, is what the other replicas must hear of."""
        if self._loop is None:
            return
        sharing = self._share_change(name, version)
        try:
            shared = asyncio.run_coroutine_threadsafe(sharing, self._loop)
        except RuntimeError:  # the replica has stopped: nobody left to tell
            sharing.close()
            return
        shared.add_done_callback(_log_failure)

    async def _share_change(self, name: str, version: str) -> None:
        async with self._changing:
            await self._share(CHANGED, name, version)

    async def _share(self, kind: str, name: str, value: str = "") -> None:
        """Publish a change made here (lock held), then apply what others published before it."""
        for attempt in range(PUBLISH_ATTEMPTS):
            try:
                snapshot: Snapshot = await self._actor().publish.remote(kind, name, value)
                break
            except (ray.exceptions.RayActorError, ValueError) as error:  # being replaced: ask again
                self._state = None
                if attempt + 1 == PUBLISH_ATTEMPTS:
                    raise Unavailable(
                        f"{kind} of {name} was done on one replica but could not be shared with the others "
                        f"({error}); repeat the request"
                    ) from None
                await asyncio.sleep(RETRY_SECONDS)
        if kind == CHANGED:
            self._seen[(name, value)] = snapshot.changed[(name, value)]  # dropped here already
        await self._apply_snapshot(snapshot)

    # -- the others' changes ----------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Apply the current state once (a new replica does this before it takes requests)."""
        self._loop = asyncio.get_running_loop()
        await self._apply(await self._actor().watch.remote(-1, 0.0))

    async def load_defaults(self) -> None:
        """Load each available model's default version (a new replica, before it takes requests)."""
        repository = self.service.repository
        for name in repository.names():
            if repository.get(name).unloaded:
                continue
            try:
                await self.service.versions.load(name)  # this replica's own start: nothing to share
            except Exception as error:  # one broken model must not stop the others
                logger.error("%s", error)

    async def follow(self) -> None:
        """Apply every change as it is published, until cancelled."""
        while True:
            try:
                snapshot = await self._actor().watch.remote(self._applied[1])
            except (ray.exceptions.RayActorError, ValueError) as error:  # being replaced: ask again
                logger.warning("the shared state %s is unreachable (%s); retrying", self.state_name, error)
                self._state = None
                await asyncio.sleep(RETRY_SECONDS)
                continue
            await self._apply(snapshot)

    async def _apply(self, snapshot: Snapshot) -> None:
        async with self._changing:
            await self._apply_snapshot(snapshot)

    async def _apply_snapshot(self, snapshot: Snapshot) -> None:
        epoch, generation = self._applied
        if snapshot.epoch == epoch and snapshot.generation <= generation:
            return  # applied already, or older than what this replica has (a restarted actor is a new epoch)
        for name in self.service.repository.names():
            await self._apply_model(name, snapshot)
        for key, changed_at in snapshot.changed.items():
            if self._seen.get(key) != changed_at:
                self._seen[key] = changed_at
                await asyncio.to_thread(
                    self.service.pool.evict, key, "initialized or trained on another replica"
                )
        self._applied = (snapshot.epoch, snapshot.generation)

    async def _apply_model(self, name: str, snapshot: Snapshot) -> None:
        """Follow the others' changes to one model, made here without sharing them again."""
        hosted = self.service.repository.get(name)
        versions = self.service.versions
        try:
            wanted = snapshot.defaults.get(name, hosted.default_version)
            if wanted != hosted.default_version:
                await versions.set_default(name, wanted)
            if name in snapshot.unloaded and not hosted.unloaded:
                await versions.unload(name)
            elif name not in snapshot.unloaded and hosted.unloaded:
                await versions.load(name)
            if name in snapshot.traffic:
                self.service.traffic.follow(name, snapshot.traffic[name])
        except Exception as error:  # e.g. the version is not on this node's disk: say so, keep serving
            logger.error("could not follow the shared state of %s: %s", name, error)


def _log_failure(shared: Future[None]) -> None:
    if not shared.cancelled() and shared.exception() is not None:
        logger.error(
            "a finished training could not be shared with the other replicas: %s", shared.exception()
        )
