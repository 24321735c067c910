"""Starting, switching, evicting, restarting and stopping a real server, with requests in flight."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import pytest

from modelpod.protocol import native
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ROOT, StartServer, servable


def events(data_path: Path) -> list[str]:
    return (data_path / "events.log").read_text().splitlines()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_shutdown_finishes_requests_in_flight(start_server: StartServer, sig: int) -> None:
    server = start_server(servable("Slow"), args=("--drain-timeout", "20"))
    with (
        httpx.Client(base_url=server.http_url, timeout=30) as client,
        ThreadPoolExecutor(6) as executor,
    ):
        in_flight = [
            executor.submit(client.post, "/models/slow/predict", json={"seconds": 1.5}) for _ in range(6)
        ]
        time.sleep(0.5)  # all six are running in the model now
        server.process.send_signal(sig)
        server.wait_for_line("shutting down")
        late = client.post("/models/slow/predict", json={"seconds": 0})
        answers = [future.result() for future in in_flight]
    assert [a.status_code for a in answers] == [200] * 6
    assert all(a.json() == {"slept": 1.5, "version": "1"} for a in answers)
    assert late.status_code == 503
    assert late.headers["retry-after"] == "1"
    assert server.process.wait(timeout=30) == 0
    assert server.lines[-1] == "modelpod: stopped"
    assert events(server.data_path)[-1] == "teardown slow:1"


def test_graceful_shutdown_finishes_grpc_calls_in_flight(start_server: StartServer) -> None:
    server = start_server(servable("Slow"), args=("--drain-timeout", "20"))
    request = native_pb2.CallRequest(model="slow", method="predict", payload=native.pack({"seconds": 1.5}))
    with grpc.insecure_channel(server.grpc_address) as channel, ThreadPoolExecutor(4) as executor:
        stub = native_pb2_grpc.ModelServiceStub(channel)
        in_flight = [executor.submit(stub.Call, request, timeout=30) for _ in range(4)]
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        answers = [native.unpack(future.result().payload) for future in in_flight]
    assert answers == [{"slept": 1.5, "version": "1"}] * 4
    assert server.process.wait(timeout=30) == 0


def test_pool_of_one_alternates_two_versions(start_server: StartServer) -> None:
    server = start_server(servable("Echo"))
    with httpx.Client(base_url=server.http_url) as client:
        client.post("/models/echo/versions/2/initialize", json={})
        for version in ("2", "1", "2", "1"):
            assert (
                client.post(f"/models/echo/versions/{version}/predict", json={"text": "x"}).json()["version"]
                == version
            )
        loaded = {v["version"]: v["loaded"] for v in client.get("/models/echo").json()["versions"]}
    assert loaded == {"1": True, "2": False}
    assert events(server.data_path) == [
        "setup echo:1",  # loaded at start
        "teardown echo:1",
        "setup echo:2",
        "teardown echo:2",
        "setup echo:1",
        "teardown echo:1",
        "setup echo:2",
        "teardown echo:2",
        "setup echo:1",
    ]


def test_concurrent_first_requests_load_a_version_once(start_server: StartServer) -> None:
    server = start_server(servable("Counter"), args=("--model-pool-size", "2"))
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        client.post("/models/counter/versions/2/initialize", json={})
        with ThreadPoolExecutor(8) as executor:
            calls = [
                executor.submit(client.post, "/models/counter/versions/2/predict", json={}) for _ in range(8)
            ]
            answers = [call.result().json() for call in calls]
    assert answers == [{"loads": 2}] * 8  # version 1 at start-up, version 2 once
    assert events(server.data_path).count("setup counter:2") == 1


def test_switching_the_default_version_drops_no_request(start_server: StartServer) -> None:
    server = start_server(servable("Slow"), args=("--rpc-max-workers", "8"))
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with httpx.Client(base_url=server.http_url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/models/slow/predict", json={"seconds": 0.05})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    versions.append(response.json()["version"])

    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        client.post("/models/slow/versions/2/initialize", json={"load_seconds": 0.5})
        callers = [threading.Thread(target=keep_calling) for _ in range(4)]
        for caller in callers:
            caller.start()
        time.sleep(0.3)
        switched = client.put("/models/slow/default", json={"version": "2"})
        time.sleep(0.3)
        stop.set()
        for caller in callers:
            caller.join()
        assert switched.json() == {"name": "slow", "default_version": "2", "previous": "1"}
        assert client.get("/models/slow").json()["default_version"] == "2"
    assert failures == []
    assert "1" in versions
    assert versions[-1] == "2"
    assert events(server.data_path).index("setup slow:2") < events(server.data_path).index("teardown slow:1")


def test_versions_survive_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    data_path = tmp_path / "kept"
    first = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=first.http_url) as client:
        client.post("/models/echo/versions/v3/initialize", json={"colour": "blue"})
        client.post("/models/echo/versions/v3/train", json={"steps": 2})
        while client.get("/models/echo/versions/v3/train").json()["state"] == "running":
            time.sleep(0.02)
    assert first.stop() == 0
    second = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=second.http_url) as client:
        answer = client.post("/models/echo/versions/v3/predict", json={"text": "again"}).json()
        log = client.get("/models/echo/versions/v3/log").json()
        versions = [v["version"] for v in client.get("/models/echo").json()["versions"]]
    assert answer == {"text": "again", "version": "v3", "config": {"colour": "blue"}}
    assert [entry["step"] for entry in log] == [1, 2]
    assert versions == ["1", "v3"]


def test_memory_budget_bounds_loaded_instances(start_server: StartServer) -> None:
    server = start_server(
        servable("Hungry"),
        args=("--model-pool-size", "10"),
        env={"MODELPOD_MODEL_POOL_MEMORY": "250MiB"},
    )
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        for version in ("2", "3"):
            client.post(f"/models/hungry/versions/{version}/initialize", json={"megabytes": 100})
        client.post("/models/hungry/versions/1/initialize", json={"megabytes": 100})
        for version in ("1", "2", "3"):
            assert client.post(f"/models/hungry/versions/{version}/predict", json={}).status_code == 200
        loaded = [v["version"] for v in client.get("/models/hungry").json()["versions"] if v["loaded"]]
    assert loaded == ["2", "3"]


def test_repository_load_and_unload(start_server: StartServer) -> None:
    server = start_server(servable("Echo"))
    with httpx.Client(base_url=server.http_url) as client:
        assert client.post("/v2/repository/models/echo/unload").status_code == 200
        assert client.get("/v2/models/echo/ready").status_code == 503
        refused = client.post("/models/echo/predict", json={"text": "x"})
        assert refused.status_code == 503
        assert "POST /v2/repository/models/echo/load" in refused.json()["error"]
        assert client.post("/v2/repository/models/echo/load").status_code == 200
        assert client.get("/v2/models/echo/ready").json()["ready"] is True
        assert client.post("/models/echo/predict", json={"text": "x"}).status_code == 200
        assert client.post("/v2/repository/models/nope/load").status_code == 404
    assert events(server.data_path) == ["setup echo:1", "teardown echo:1", "setup echo:1"]


def modelpod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpod", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_serve_help_documents_every_setting() -> None:
    result = modelpod("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for variable, default in [
        ("HTTP_PORT", "8080"),
        ("GRPC_PORT", "50051"),
        ("HOST", "127.0.0.1"),
        ("DATA_PATH", "appdata"),
        ("MODEL_POOL_SIZE", "1"),
        ("RPC_MAX_WORKERS", "12"),
        ("MODEL_POOL_MEMORY", "no limit"),
    ]:
        assert f"env MODELPOD_{variable}; default {default}" in text, variable


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("serve", "tests/nowhere.py:Model"), "no such file"),
        (("serve", "tests/servable.py:Nothing"), "has no 'Nothing'"),
        (("serve", "tests/servable.py"), "expected FILE.py:NAME"),
        (("serve", "no_such_package.module:Model"), "cannot import 'no_such_package.module'"),
        (("serve", "tests/servable.py:Echo", "--http-port", "99999"), "http_port"),
        (
            ("serve", "tests/servable.py:Echo", "--model-pool-memory", "lots"),
            "cannot read 'lots' as a size",
        ),
    ],
)
def test_serve_refuses_bad_arguments_clearly(args: tuple[str, ...], message: str) -> None:
    result = modelpod(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_is_a_clear_error(start_server: StartServer, tmp_path: Path) -> None:
    first = start_server(servable("Echo"))
    result = modelpod(
        "serve",
        "tests/servable.py:Echo",
        "--http-port",
        str(first.http_port),
        "--grpc-port",
        "0",
        "--data-path",
        str(tmp_path / "other"),
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{first.http_port}" in result.stderr


def test_serve_from_python(tmp_path: Path) -> None:
    script = (
        "import sys; sys.path.insert(0, 'tests'); import modelpod, servable\n"
        f"modelpod.serve(servable.Echo, ('renamed', servable.Slow), http_port=0, grpc_port=0, "
        f"data_path={str(tmp_path)!r})\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.strip())
        if line.strip() == "modelpod: ready":
            break
    port = int(next(line for line in lines if "HTTP listening" in line).rsplit(":", 1)[1])
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        assert client.post("/models/echo/predict", json={"text": "py"}).json()["text"] == "py"
        assert client.post("/models/renamed/predict", json={"seconds": 0}).json()["slept"] == 0
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
