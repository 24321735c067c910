"""Two replicas of the Ray backend in this test process, each with its own service, around one real
state actor, each reached through its own ASGI app: for the tests of what one replica changes and
the other applies. Import it after `pytest.importorskip("ray")`."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable

import httpx
import pytest

from modelpod.ray._replica import ModelpodReplica, ReplicaSpec
from modelpod.ray._sync import start_state, stop_state

Scenario = Callable[
    [ModelpodReplica, ModelpodReplica, httpx.AsyncClient, httpx.AsyncClient], Awaitable[None]
]  # (this replica, the other, a client of this one, a client of the other)


async def eventually(condition: Callable[[], bool], what: str, deadline_s: float) -> None:
    """Poll `condition` every 20 ms; fail the test naming `what` if it is still false at the deadline."""
    for _ in range(int(deadline_s / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"{what} did not happen within {deadline_s} s")


def run_replica_pair(spec: ReplicaSpec, defaults: dict[str, str], scenario: Scenario) -> None:
    """Start the state actor with `defaults`, run `scenario` on two replicas of `spec`, then close
    both, stop the actor, and give this process's garbage collector back its settings (the replicas
    tune it as they would their own process's)."""
    start_state(spec.state_name, defaults)
    thresholds = gc.get_threshold()

    async def run(this: ModelpodReplica, other: ModelpodReplica) -> None:
        apps = [await replica.__serve_build_asgi_app__() for replica in (this, other)]
        here, there = (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://replica")
            for app in apps
        )
        async with here, there:
            await scenario(this, other, here, there)

    replicas = (ModelpodReplica(spec), ModelpodReplica(spec))
    try:
        asyncio.run(run(*replicas))
    finally:
        for replica in replicas:
            replica.close()
        stop_state(spec.state_name)
        gc.unfreeze()
        gc.set_threshold(*thresholds)
