"""State that outlives a request: versions and their default, training jobs, the files beside them.

Each test drives real `modelpod serve` processes, restarting them where what matters is what a
restarted server finds: a default switch keeps every version and is restored; arguments that
could not be stored are refused before anything changes; one damaged or hostile file never fails
a listing for everyone; a job is judged alive by its process, not by a PID a restart can reuse.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ServerProcess, StartServer, servable

SWITCHES = 10  # back and forth, under load


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_json(depth: int) -> bytes:
    """An object `depth` levels deep, as JSON text: deeper than a JSON library here would write."""
    return b'{"a":' * depth + b"1" + b"}" * depth


def listed_versions(http: httpx.Client, model: str = "echo") -> dict[str, dict[str, Any]]:
    response = http.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    return {entry["version"]: entry for entry in response.json()["versions"]}


def native_call(
    server: ServerProcess, method: str, version: str, payload: bytes
) -> tuple[grpc.StatusCode, str]:
    """A gRPC native call's status and message (OK and the answer's text when it succeeds)."""
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(model="echo", version=version, method=method, payload=payload)
        try:
            answer = stub.Call(request, timeout=30)
        except grpc.RpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, repr(native.unpack(answer.payload))


def repository_index(server: ServerProcess) -> dict[str, tuple[str, str]]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        index = pb_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(
            pb.RepositoryIndexRequest(), timeout=30
        )
    return {entry.version: (entry.state, entry.reason) for entry in index.models if entry.name == "echo"}


def events(http: httpx.Client, path: str) -> list[tuple[str, Any]]:
    """The server-sent events of a route, read until the stream ends (the client's timeout bounds it)."""
    found, event = [], "message"
    with http.stream("GET", path) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                found.append((event, json.loads(line.partition(":")[2])))
    return found


@pytest.fixture
def data_path(tmp_path: Path) -> Path:
    return tmp_path / "kept"


@pytest.fixture
def echo(start_server: StartServer, data_path: Path) -> ServerProcess:
    return start_server(servable("Echo"), data_path=data_path, args=("--rpc-max-workers", "8"))


# -- versions are durable ------------------------------------------------------------------------


def test_switching_the_default_back_and_forth_under_load_fails_no_request(echo: ServerProcess) -> None:
    failures: list[str] = []
    answered: list[str] = []
    stop = threading.Event()

    def keep_calling(path: str) -> None:
        with httpx.Client(base_url=echo.http_url, timeout=30) as client:
            while not stop.is_set():
                response = client.post(path, json={"text": "x"})
                if response.status_code != 200:
                    failures.append(f"{path}: {response.status_code} {response.text}")
                else:
                    answered.append(response.json()["version"])

    def keep_calling_grpc() -> None:
        while not stop.is_set():
            code, message = native_call(echo, "predict", "1", native.pack({"text": "x"}))
            if code != grpc.StatusCode.OK:
                failures.append(f"gRPC versions/1: {code} {message}")

    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        assert http.post("/models/echo/versions/2/initialize", json={"colour": "red"}).status_code == 200
        paths = ["/models/echo/predict", "/models/echo/versions/1/predict", "/models/echo/versions/2/predict"]
        callers = [threading.Thread(target=keep_calling, args=(path,)) for path in paths]
        callers.append(threading.Thread(target=keep_calling_grpc))
        for caller in callers:
            caller.start()
        try:
            switches = []
            for turn in range(SWITCHES):
                wanted = "2" if turn % 2 == 0 else "1"
                switched = http.put("/models/echo/default", json={"version": wanted})
                switches.append((switched.status_code, switched.json().get("default_version")))
                assert sorted(listed_versions(http)) == ["1", "2"]  # neither version ever leaves
                time.sleep(0.05)
        finally:
            stop.set()
            for caller in callers:
                caller.join(timeout=60)
        assert switches == [(200, "2" if turn % 2 == 0 else "1") for turn in range(SWITCHES)]
        assert http.get("/models/echo").json()["default_version"] == "1"  # rolled back, last
    assert failures == []
    assert {"1", "2"} <= set(answered)


def test_the_default_is_saved_and_restored_on_restart(
    start_server: StartServer, echo: ServerProcess, data_path: Path
) -> None:
    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        http.post("/models/echo/versions/2/initialize", json={})
        assert http.put("/models/echo/default", json={"version": "2"}).status_code == 200
    assert echo.stop() == 0
    saved = json.loads((data_path / "echo" / "default.json").read_text())
    assert saved["version"] == "2"
    again = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=again.http_url, timeout=30) as http:
        listing = http.get("/models/echo").json()
        assert listing["default_version"] == "2"
        assert [v["version"] for v in listing["versions"]] == ["1", "2"]
        assert http.post("/models/echo/predict", json={"text": "x"}).json()["version"] == "2"
        assert http.post("/models/echo/versions/1/predict", json={"text": "x"}).json()["version"] == "1"
        assert http.put("/models/echo/default", json={"version": "1"}).status_code == 200  # rollback
    assert again.stop() == 0
    third = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=third.http_url, timeout=30) as http:
        assert http.get("/models/echo").json()["default_version"] == "1"
    assert sorted(repository_index(third)) == ["1", "2"]
    assert [name for name in os.listdir(data_path / "echo") if name.startswith(".")] == []  # no temporaries


# -- job state that cannot be poisoned ----------------------------------------------------------


def test_training_arguments_that_cannot_be_stored_are_refused_before_the_job_starts(
    start_server: StartServer, echo: ServerProcess, data_path: Path
) -> None:
    msgpack = {"content-type": "application/msgpack"}
    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        too_deep = http.post("/models/echo/train", json={"steps": nested(300)})
        assert too_deep.status_code == 400, too_deep.text
        assert "deeper than" in too_deep.json()["error"]
        bytes_key = http.post(
            "/models/echo/train", content=native.pack({"steps": {b"k": 1}}), headers=msgpack
        )
        assert bytes_key.status_code == 400, bytes_key.text
        assert "key of type bytes" in bytes_key.json()["error"]
        not_json = http.post("/models/echo/train", content=native.pack({"steps": b"\x00"}), headers=msgpack)
        assert not_json.status_code == 400, not_json.text
        assert "steps" in not_json.json()["error"]
        reserved = http.post("/models/echo/train", json={"self": 1})
        assert reserved.status_code == 400, reserved.text
        assert "reserved" in reserved.json()["error"]
        code, message = native_call(echo, "train", "1", native.pack({"steps": {b"k": 1}}))
        assert (code, "key of type bytes" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)
        # nothing changed: the version is not "running", no job was recorded, the listings answer
        assert http.get("/models/echo/train").status_code == 404
        assert not (data_path / "echo" / "1" / "training.json").exists()
        assert http.get("/models").status_code == 200
        started = http.post("/models/echo/train", json={"steps": 2})
        assert started.status_code == 202, started.text  # not 409: no job was left running
    assert echo.stop() == 0
    again = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=again.http_url, timeout=30) as http:
        assert http.get("/models").status_code == 200
        assert listed_versions(http)["1"]["training"]["state"] == "succeeded"


def test_one_damaged_file_leaves_the_listings_working(
    start_server: StartServer, echo: ServerProcess, data_path: Path
) -> None:
    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        for version in ("2", "3", "4"):
            http.post(f"/models/echo/versions/{version}/initialize", json={"v": version})
        http.post("/models/echo/versions/2/train", json={"steps": 1})
        while http.get("/models/echo/versions/2/train").json()["state"] == "running":
            time.sleep(0.02)
        assert http.put("/models/echo/default", json={"version": "4"}).status_code == 200
    assert echo.stop() == 0
    (data_path / "echo" / "2" / "training.json").write_text('{"model": "echo", "state": ')  # cut short
    (data_path / "echo" / "3" / "model_info.json").write_text("")
    (data_path / "echo" / "default.json").write_bytes(b"\xff not json")
    with (data_path / "echo" / "2" / "log.jsonl").open("a") as log:
        log.write('{"time": 1, "st')  # the last line of a process killed while writing it
    again = start_server(servable("Echo"), data_path=data_path)
    with httpx.Client(base_url=again.http_url, timeout=30) as http:
        everything = http.get("/models")
        assert everything.status_code == 200, everything.text
        [model] = everything.json()
        assert model["default_version"] == "1"  # the saved default was unreadable: the configured one
        assert "default.json" in model["default_error"]
        versions = {entry["version"]: entry for entry in model["versions"]}
        assert sorted(versions) == ["1", "2", "3", "4"]
        assert "training.json" in versions["2"]["error"]
        assert "model_info.json" in versions["3"]["error"]
        assert "error" not in versions["1"]
        assert "error" not in versions["4"]
        assert http.post("/models/echo/versions/2/predict", json={"text": "x"}).status_code == 200
        assert [entry["step"] for entry in http.get("/models/echo/versions/2/log").json()] == [1]
        broken = http.post("/models/echo/versions/3/predict", json={"text": "x"})
        assert broken.status_code == 503, broken.text  # the server's own file, named, not a crash
        assert "model_info.json" in broken.json()["error"]
        assert http.post("/models/echo/versions/3/initialize", json={"v": "3"}).status_code == 200  # mended
        assert http.post("/models/echo/versions/3/predict", json={"text": "x"}).json()["config"] == {"v": "3"}
        assert http.post("/models/echo/versions/2/train", json={"steps": 1}).status_code == 202
    assert repository_index(again)["2"][0] == "READY"


def test_a_job_recorded_by_an_earlier_process_with_the_same_pid_reads_as_interrupted(
    echo: ServerProcess, data_path: Path
) -> None:
    """A server that is PID 1 of its container gets the same PID after a restart: the PID alone
    cannot tell its job from the previous process's."""
    folder = data_path / "echo" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    claim = {
        "model": "echo", "version": "1", "arguments": {}, "state": "running", "started_at": time.time(),
        "host": socket.gethostname(), "pid": echo.process.pid, "written_at": time.time(),
        "process": "an-earlier-process", "process_started": 1,
    }  # fmt: skip
    (folder / "training.json").write_text(json.dumps(claim))
    with httpx.Client(base_url=echo.http_url, timeout=10) as http:
        job = http.get("/models/echo/train").json()
        assert (job["state"], job["error_kind"]) == ("failed", "Interrupted")
        assert events(http, "/models/echo/train/events")[-1][0] == "end"
        assert listed_versions(http)["1"]["training"]["state"] == "failed"
        assert http.post("/models/echo/train", json={"steps": 1}).status_code == 202


def test_a_live_pid_that_started_later_than_the_job_is_not_its_process(
    echo: ServerProcess, data_path: Path
) -> None:
    folder = data_path / "echo" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(["sleep", "30"]) as other:  # alive, but not the process that ran the job
        try:
            claim = {
                "model": "echo", "version": "1", "arguments": {}, "state": "running",
                "started_at": time.time(), "host": socket.gethostname(), "pid": other.pid,
                "written_at": time.time(), "process": "an-earlier-process", "process_started": 1,
            }  # fmt: skip
            (folder / "training.json").write_text(json.dumps(claim))
            with httpx.Client(base_url=echo.http_url, timeout=10) as http:
                assert http.get("/models/echo/train").json()["error_kind"] == "Interrupted"
        finally:
            other.kill()


# -- names, links and temporaries -----------------------------------------------------------------


def test_names_are_checked_before_any_filesystem_call(echo: ServerProcess) -> None:
    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        for method, path in (("POST", "initialize"), ("POST", "predict"), ("GET", "train"), ("GET", "log")):
            response = http.request(method, f"/models/echo/versions/a%00b/{path}", json={})
            assert response.status_code == 400, (path, response.text)
            assert "invalid version" in response.json()["error"]
        reserved = http.post("/models/echo/versions/2/initialize", json={"self": 1})
        assert reserved.status_code == 400, reserved.text
        assert "reserved" in reserved.json()["error"]
        deep = http.post("/models/echo/versions/2/initialize", content=deep_json(999))
        assert deep.status_code == 400, deep.text
        assert "deeper than" in deep.json()["error"]
        assert "2" not in listed_versions(http)  # nothing was written
    code, message = native_call(echo, "initialize", "a\x00b", native.pack({}))
    assert (code, "invalid version" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True)
    code, _ = native_call(echo, "initialize", "2", native.pack({"self": 1}))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_version_linked_out_of_the_data_path_is_refused_and_the_rest_listed(
    echo: ServerProcess, data_path: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model_info.json").write_text(json.dumps({"config": {}}))
    (data_path / "echo").mkdir(parents=True, exist_ok=True)
    (data_path / "echo" / "evil").symlink_to(outside, target_is_directory=True)
    with httpx.Client(base_url=echo.http_url, timeout=30) as http:
        http.post("/models/echo/versions/2/initialize", json={})
        versions = listed_versions(http)
        assert sorted(versions) == ["1", "2", "evil"]
        assert "link out" in versions["evil"]["error"]
        assert http.get("/models").status_code == 200
        assert http.post("/models/echo/versions/evil/predict", json={"text": "x"}).status_code == 400
        assert http.post("/models/echo/versions/2/predict", json={"text": "x"}).status_code == 200
    index = repository_index(echo)
    assert index["evil"][0] == "UNAVAILABLE"
    assert "link out" in index["evil"][1]
    assert index["2"] == ("READY", "")


def test_temporaries_left_by_a_killed_write_are_removed_at_start(
    start_server: StartServer, data_path: Path
) -> None:
    version = data_path / "echo" / "2"
    version.mkdir(parents=True)
    stale = [version / "model_info.tmp4242.139", version / ".model_info.json.0123abcd.partial"]
    fresh = version / ".training.json.4567cdef.partial"  # another process may be writing it now
    for path in [*stale, fresh]:
        path.write_text("")
    an_hour_ago = time.time() - 3600
    for path in stale:
        os.utime(path, (an_hour_ago, an_hour_ago))
    server = start_server(servable("Echo"), data_path=data_path)
    assert [path.exists() for path in stale] == [False, False]
    assert fresh.exists()
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert sorted(listed_versions(http)) == ["1"]
        assert http.post("/models/echo/versions/2/initialize", json={"v": 2}).status_code == 200
    assert sorted(os.listdir(version)) == [fresh.name, "model_info.json"]
