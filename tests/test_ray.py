"""The Ray Serve backend on a real local Ray cluster (2 CPUs, no dashboard), shared by the module.

One deployment of two replicas serves `tests/servable_ray.py`; the tests call it through
modelpod's client and tritonclient, see requests spread over both replicas, change the default
version through one replica and see every replica follow, and kill a replica's actor while
requests keep succeeding. The CLI deploys a store model beside it. Two replica objects in this
process, around one real state actor, show each change one replica makes reaching the other. The
cluster is shut down at the end, and no process it started may be left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from modelpod import Client, NotFound, Store
from modelpod.cli.main import main
from modelpod.server.settings import Settings

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'modelpod[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'modelpod[ray]'")
modelpod_ray = pytest.importorskip("modelpod.ray")

# After the skips: modelpod.ray imports Ray.
from ray_replicas import eventually, run_replica_pair  # noqa: E402

from modelpod.ray._replica import ModelpodReplica, ReplicaSpec  # noqa: E402
from modelpod.ray._sync import SharedState  # noqa: E402

from servable_ray import BatchedDoubler, Whoami  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
APP = "pytest"
REPLICAS = 2
REPLICA_CPUS = 0.25
DEADLINE_S = 60.0  # for anything that waits on Ray: starting, replacing a replica, following a change


@dataclass
class Cluster:
    gcs_address: str
    http_port: int


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A local Ray cluster with Serve's proxy on a free loopback port; afterwards, nothing of it runs."""
    before = {child.pid for child in psutil.Process().children(recursive=True)}
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield Cluster(context.address_info["gcs_address"], port)
    finally:
        # Everything Ray started from here: GCS, raylet, its workers (replicas, proxy, controller).
        started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        serve.shutdown()
        ray.shutdown()
        _, alive = psutil.wait_procs(started, timeout=30)
        for process in alive:  # ours: fail, but do not leave them running
            process.kill()
        assert started, "the cluster's processes were not found: the check below would prove nothing"
        assert not alive, f"Ray left processes running: {[p.pid for p in alive]}"


@pytest.fixture(scope="module")
def deployment(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    deployed = modelpod_ray.deploy(
        Whoami,
        BatchedDoubler,
        name=APP,
        num_replicas=REPLICAS,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
        http_port=cluster.http_port,
        data_path=tmp_path_factory.mktemp("ray-data"),
    )
    yield deployed
    deployed.undeploy()


def _predict_many(url: str, count: int, threads: int = 16) -> list[dict[str, Any]]:
    """`count` predictions, `threads` at a time, each through its own client."""

    def one(i: int) -> dict[str, Any]:
        with Client(url, model="whoami", timeout=30) as client:
            answer: dict[str, Any] = client.predict(text=str(i))
            return answer

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def _eventually(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


def test_modelpod_client_speaks_the_native_routes(deployment: Any) -> None:
    with Client(deployment.url, model="whoami") as client:
        answer = client.predict(text="hello")
        assert answer["text"] == "hello"
        assert answer["version"] == "1"
        assert answer["pid"] != os.getpid()  # a replica answered, not this process
        with pytest.raises(NotFound, match="not served here"):
            client.model("nope").predict()
    models = httpx.get(f"{deployment.url}/models", timeout=10).json()
    assert [m["name"] for m in models] == ["whoami", "doubler"]
    response = httpx.post(f"{deployment.url}/models/whoami/predict", content=b"{nope", timeout=10)
    assert response.status_code == 400
    assert "error" in response.json()
    assert response.headers.get_list("x-request-id") == [response.headers["x-request-id"]]  # one, not two


def test_tritonclient_speaks_the_open_inference_protocol(deployment: Any) -> None:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(deployment.url.removeprefix("http://"))
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("doubler")
        metadata = client.get_model_metadata("doubler")
        assert metadata["inputs"][0]["name"] == "x"
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for binary in (True, False):
            tensor = httpclient.InferInput("x", [2, 4], "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("y", binary_data=binary)]
            result = client.infer("doubler", [tensor], outputs=wanted)
            np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    finally:
        client.close()


def test_requests_are_spread_over_both_replicas(deployment: Any) -> None:
    answers = _predict_many(deployment.url, 64)
    assert len({answer["pid"] for answer in answers}) == REPLICAS


def test_changes_made_through_one_replica_reach_every_replica(deployment: Any) -> None:
    with Client(deployment.url, model="whoami") as client:
        client.version("2").initialize(greeting="hej")
        switched = httpx.put(f"{deployment.url}/models/whoami/default", json={"version": "2"}, timeout=30)
        assert switched.status_code == 200, switched.text

        def everyone_on_version_2() -> bool:
            answers = _predict_many(deployment.url, 32)
            replicas = {answer["pid"] for answer in answers}
            return len(replicas) == REPLICAS and {a["version"] for a in answers} == {"2"}

        _eventually(everyone_on_version_2, "every replica switching to version 2")
        # A training job runs on the replica that got the request; the others hear of its success.
        assert client.version("2").start_training(steps=5)["state"] in ("running", "succeeded")

        def everyone_trained() -> bool:
            answers = _predict_many(deployment.url, 32)
            return {a["weights"] for a in answers} == {"trained 5"}  # the other replica reloaded too

        _eventually(everyone_trained, "every replica reloading the trained version")


def test_a_killed_replica_is_replaced_while_requests_keep_succeeding(deployment: Any) -> None:
    pids_before = {answer["pid"] for answer in _predict_many(deployment.url, 32)}
    replicas = [
        actor
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(f"SERVE_REPLICA::{APP}#")
    ]
    assert len(replicas) == REPLICAS
    outcomes: list[tuple[float, BaseException | None]] = []  # (when the request was sent, its error)
    stop = threading.Event()

    def keep_asking() -> None:
        with Client(deployment.url, model="whoami", timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    client.predict(text="still there?")
                    outcomes.append((sent, None))
                except Exception as error:
                    outcomes.append((sent, error))
                time.sleep(0.01)

    askers = [threading.Thread(target=keep_asking) for _ in range(4)]
    for asker in askers:
        asker.start()
    try:
        time.sleep(0.5)
        ray.kill(ray.get_actor(replicas[0]["name"], namespace="serve"))
        killed_at = time.monotonic()

        def replaced() -> bool:
            recent = {answer["pid"] for answer in _predict_many(deployment.url, 32)}
            return len(recent) == REPLICAS and bool(recent - pids_before)

        _eventually(replaced, "Ray Serve replacing the killed replica")
    finally:
        stop.set()
        for asker in askers:
            asker.join(timeout=60)
    # A request running on the replica as it was killed may fail (Ray answers it 500); every request
    # sent after the kill succeeds, on the other replica until the new one is up.
    after = [error for sent, error in outcomes if sent > killed_at]
    assert len(after) > 10
    assert [error for error in after if error is not None] == []
    assert sum(error is not None for _, error in outcomes) <= len(askers)
    default = httpx.get(f"{deployment.url}/models/whoami", timeout=10).json()["default_version"]
    newcomer = {answer["version"] for answer in _predict_many(deployment.url, 32)}
    assert newcomer == {default}  # the new replica follows what was changed before it started


def test_cli_deploys_a_store_model_that_remote_models_reach(cluster: Cluster, tmp_path: Path) -> None:
    store = Store(data_path=tmp_path)
    record = store.apply(Whoami(data_path=tmp_path, greeting="from the store"))
    command = [sys.executable, "-m", "modelpod", "serve", "--backend", "ray",
               "--ray-address", cluster.gcs_address, "--ray-app", "cli", "--ray-route-prefix", "/cli",
               "--ray-replicas", "1", "--ray-replica-cpus", str(REPLICA_CPUS),
               "--http-port", str(cluster.http_port), "--store", store.url, "--model", "whoami",
               "--heartbeat-seconds", "1", "--data-path", str(tmp_path / "served")]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(TESTS)}
    server = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:
            lines.append(line.rstrip())
            if line.strip() == "modelpod: ready":
                break
        else:
            pytest.fail("the Ray backend stopped before it was ready:\n" + "\n".join(lines))
        threading.Thread(
            target=lambda: lines.extend(x.rstrip() for x in server.stdout or ()), daemon=True
        ).start()
        url = f"http://127.0.0.1:{cluster.http_port}/cli"
        assert f"modelpod: HTTP listening on {url}" in lines

        proxy = Store(store.url, data_path=tmp_path / "elsewhere").load("whoami")
        proxy.refresh_seconds = 0
        answer = proxy.predict(text="via ray")
        assert proxy.route == f"remote {url}"
        assert answer["config"] == {"greeting": "from the store"}
        assert answer["version"] == record.version
        assert answer["pid"] != os.getpid()

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, "\n".join(lines)
        assert proxy.predict(text="here")["pid"] == os.getpid()  # no deployment left: it runs locally
        assert proxy.route == "local"
        assert httpx.get(f"{url}/models", timeout=10).status_code == 404  # Ray removed the application
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_deploy_refuses_what_cannot_work_before_touching_ray(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fixed HTTP port"):
        modelpod_ray.deploy(Whoami, http_port=0, data_path=tmp_path)
    with pytest.raises(ValueError, match="nothing to serve"):
        modelpod_ray.deploy(http_port=8123, data_path=tmp_path)
    with pytest.raises(ValueError, match="store"):
        modelpod_ray.deploy("whoami", http_port=8123, data_path=tmp_path)
    whoami = f"{TESTS / 'servable_ray.py'}:Whoami"
    assert main(["serve", "--backend", "ray", "--ray-replicas", "0", whoami]) == 2
    assert main(["serve", "--backend", "ray", "--ray-replicas", "2", "--ray-max-replicas", "1", whoami]) == 2


def test_the_shared_state_wakes_watchers_on_each_change() -> None:
    async def scenario() -> None:
        state = SharedState({"whoami": "1"})
        first = await state.watch(-1)  # a new replica: the state at once
        assert (first.generation, first.defaults, first.unloaded) == (0, {"whoami": "1"}, frozenset())
        assert (await state.watch(0, timeout=0.05)).generation == 0  # nothing changed: same state
        waiting = asyncio.create_task(state.watch(0))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await state.publish("default", "whoami", "2")
        assert (await asyncio.wait_for(waiting, 5)).defaults == {"whoami": "2"}
        await state.publish("unload", "whoami")
        trained = await state.publish("changed", "whoami", "2")
        assert trained.unloaded == {"whoami"}
        assert trained.changed == {("whoami", "2"): 3}
        assert (await state.publish("load", "whoami")).unloaded == frozenset()
        with pytest.raises(ValueError, match="unknown change"):
            await state.publish("rename", "whoami")

    asyncio.run(scenario())


def test_replicas_apply_what_another_replica_changed(cluster: Cluster, tmp_path: Path) -> None:
    """Two replicas in this process, each with its own service, around one real state actor: what
    one is asked to change (default, unload, load, train), the other applies."""
    spec = ReplicaSpec(
        targets=ray.cloudpickle.dumps([Whoami]),
        import_paths=(str(TESTS),),
        store_models=(),
        settings=Settings(data_path=tmp_path, http_port=1).model_dump(),
        state_name="modelpod-state:in-process",
        url="http://127.0.0.1:1",
        server_id="in-process",
    )

    async def scenario(
        this: ModelpodReplica, other: ModelpodReplica, here: httpx.AsyncClient, there: httpx.AsyncClient
    ) -> None:
        assert (await here.post("/models/whoami/versions/2/initialize", json={})).status_code == 200
        assert (await here.put("/models/whoami/default", json={"version": "2"})).status_code == 200
        await eventually(
            lambda: other.service.repository.get("whoami").default_version == "2", "switch", DEADLINE_S
        )
        answer = await there.post("/models/whoami/predict", json={"text": "hi"})
        assert answer.json()["version"] == "2"
        assert "x-request-id" not in answer.headers  # Ray's proxy adds the one it gave the request

        assert (await there.post("/v2/repository/models/whoami/unload")).status_code == 200
        await eventually(lambda: this.service.repository.get("whoami").unloaded, "unload", DEADLINE_S)
        assert (await here.post("/models/whoami/predict", json={})).status_code == 503
        assert (await here.post("/v2/repository/models/whoami/load")).status_code == 200
        await eventually(lambda: not other.service.repository.get("whoami").unloaded, "load", DEADLINE_S)

        assert other.service.pool.is_loaded(("whoami", "2"))
        assert (await here.post("/models/whoami/versions/2/train", json={"steps": 7})).status_code == 202
        await eventually(
            lambda: not other.service.pool.is_loaded(("whoami", "2")), "dropping stale weights", DEADLINE_S
        )
        assert (await there.post("/models/whoami/predict", json={})).json()["weights"] == "trained 7"

    run_replica_pair(spec, {"whoami": "1"}, scenario)
