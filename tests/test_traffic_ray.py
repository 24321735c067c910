"""A traffic policy set through one Ray replica reaches the other: two replica objects in this
process, each with its own service, around one real shared-state actor on a local Ray (no Serve).
A rollout's decision made on one replica is shared the same way."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelpod.server.settings import Settings

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'modelpod[ray]'")
pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'modelpod[ray]'")
# After the skips: modelpod.ray imports Ray.
from ray_replicas import eventually, run_replica_pair  # noqa: E402

from modelpod.ray._replica import ModelpodReplica, ReplicaSpec  # noqa: E402

from servable_ray import Whoami  # noqa: E402

TESTS = Path(__file__).resolve().parent
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_a_policy_set_on_one_replica_reaches_the_other(local_ray: None, tmp_path: Path) -> None:
    spec = ReplicaSpec(
        targets=ray.cloudpickle.dumps([Whoami]),
        import_paths=(str(TESTS),),
        store_models=(),
        settings=Settings(
            data_path=tmp_path, http_port=1, model_pool_size=2, traffic="whoami=1:1", quotas="*=rate:1000"
        ).model_dump(),
        state_name="modelpod-state:traffic",
        url="http://127.0.0.1:1",
        server_id="in-process",
    )

    async def scenario(
        this: ModelpodReplica, other: ModelpodReplica, here: httpx.AsyncClient, there: httpx.AsyncClient
    ) -> None:
        followed = other.service.traffic.traffic
        assert followed.policy("whoami").split == {"1": 1.0}  # from the settings, as `modelpod serve`
        assert this.quotas
        assert (await here.post("/models/whoami/versions/2/initialize", json={})).status_code == 200
        put = await here.put("/models/whoami/traffic", json={"split": {"2": 1}})
        assert put.status_code == 200, put.text
        await eventually(
            lambda: followed.policy("whoami").split == {"2": 1.0}, "the policy's sharing", DEADLINE_S
        )
        answer = await there.post("/models/whoami/predict", json={"text": "hi"})
        assert answer.json()["version"] == "2"

        # a rollout that rolls its canary back on its first request: decided there, applied here
        rollout = {"version": "2", "min_requests": 1, "max_p99_seconds": 0, "window_seconds": 0.1}
        policy = {"split": {"1": 1, "2": 1}, "rollout": rollout}
        assert (await there.put("/models/whoami/traffic", json=policy)).status_code == 200
        mine = this.service.traffic.traffic
        await eventually(
            lambda: mine.policy("whoami").rollout is not None, "the rollout's sharing", DEADLINE_S
        )
        for _ in range(200):
            if followed.policy("whoami").rollout is None:
                break
            await there.post("/models/whoami/predict", json={"text": "hi"})
            await asyncio.sleep(0.02)
        await eventually(
            lambda: mine.policy("whoami").split == {"1": 1.0, "2": 0.0}, "the rollback's sharing", DEADLINE_S
        )

    run_replica_pair(spec, {"whoami": "1"}, scenario)
