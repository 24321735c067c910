"""RemoteModel, the three scenarios it exists for, against a real server process:

1. a proxy predicts locally while no store knows it;
2. applied to a store and served from it, the same proxy predicts remotely;
3. a fresh process loads it from the store: remote while served, local once the server stops.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelpod import RemoteModel, Store

from conftest import ROOT, StartServer
from servable import Echo

ENV = {"PYTHONPATH": str(ROOT / "tests"), "MODELPOD_HEARTBEAT_SECONDS": "0.5"}


def serve_from(start_server: StartServer, store: Store, *models: str) -> object:
    args = ("--store", store.url, *(arg for model in models for arg in ("--model", model)))
    return start_server(args=args, env=ENV, data_path=store.data_path / "served")


def test_constructor_with_serve_gives_a_lazy_proxy_that_runs_locally(tmp_path: Path) -> None:
    proxy = Echo(data_path=tmp_path, colour="red", serve=True)
    assert isinstance(proxy, RemoteModel)
    assert (proxy.identifier, proxy.version, proxy.config) == ("echo", "1", {"colour": "red"})
    assert not (tmp_path / "events.log").exists()  # nothing loaded yet
    assert proxy.predict(text="hi") == {"text": "hi", "version": "1", "config": {"colour": "red"}}
    assert proxy.route == "local"
    assert (tmp_path / "events.log").read_text() == "setup echo:1\n"
    assert isinstance(proxy.original, Echo)


def test_applied_and_served_the_proxy_predicts_remotely(
    start_server: StartServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(data_path=tmp_path, heartbeat_timeout=1.5)
    proxy = Echo(data_path=tmp_path / "work", colour="red", serve=True)
    assert proxy.predict(text="here")["config"] == {"colour": "red"}
    record = store.apply(proxy)
    assert (proxy.store, proxy.record, proxy.version) == (store, record, "1")
    assert proxy.encode() == record.reference

    server = serve_from(start_server, store, "echo")
    caplog.set_level(logging.INFO, logger="modelpod.registry.remote")
    proxy.refresh_seconds = 0.0  # look for the new server now rather than within the refresh interval
    answer = proxy.predict(text="there")
    assert answer == {"text": "there", "version": "1", "config": {"colour": "red"}}
    assert proxy.route == f"remote 127.0.0.1:{server.grpc_port}"
    assert "echo:1 now runs remote" in caplog.text
    assert "setup echo:1" in (store.data_path / "served" / "events.log").read_text()


SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from modelpod import Store
store = Store({url!r}, data_path={data!r}, heartbeat_timeout=1.5)
proxy = store.load("echo")
before = (proxy.predict(text="a"), proxy.route)
print(json.dumps(before), flush=True)
sys.stdin.readline()  # the test stops the server meanwhile
time.sleep(1.6)
after = (proxy.predict(text="b"), proxy.route)
print(json.dumps(after), flush=True)
"""


def test_a_fresh_process_loads_from_the_store_remote_then_local(
    start_server: StartServer, tmp_path: Path
) -> None:
    store = Store(data_path=tmp_path)
    model = Echo(data_path=tmp_path / "work", colour="green")
    model.train(steps=2)
    store.apply(model)
    server = serve_from(start_server, store, "echo")

    script = SCRIPT.format(tests=str(ROOT / "tests"), url=store.url, data=str(tmp_path / "client"))
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **ENV})  # fmt: skip
    assert child.stdout is not None
    assert child.stdin is not None
    remote_answer, remote_route = json.loads(child.stdout.readline())
    assert remote_answer == {"text": "a", "version": "1", "config": {"colour": "green"}}
    assert remote_route == f"remote 127.0.0.1:{server.grpc_port}"

    assert server.stop() == 0
    assert store.endpoints("echo", "1") == []  # a server that stops forgets its endpoints at once
    child.stdin.write("go\n")
    child.stdin.flush()
    local_answer, local_route = json.loads(child.stdout.readline())
    assert child.wait(timeout=30) == 0, child.stderr.read() if child.stderr else ""
    assert local_answer == {"text": "b", "version": "1", "config": {"colour": "green"}}
    assert local_route == "local"
    assert (tmp_path / "client" / "echo" / "1" / "weights.txt").read_text() == "trained 2"


def test_a_crashed_server_is_forgotten_once_its_heartbeat_is_stale(
    start_server: StartServer, tmp_path: Path
) -> None:
    store = Store(data_path=tmp_path, heartbeat_timeout=1.5)
    store.apply(Echo(data_path=tmp_path / "work"))
    server = serve_from(start_server, store, "echo")
    assert [e.protocol for e in store.endpoints("echo", "1")] == ["grpc", "http"] or len(
        store.endpoints("echo", "1")
    ) == 2
    server.process.kill()
    server.process.wait()
    proxy = store.load("echo")
    assert proxy.predict(text="x")["text"] == "x"  # the dead server's address fails; runs here instead
    assert proxy.route == "local"


def test_a_server_serves_named_versions_from_the_store(start_server: StartServer, tmp_path: Path) -> None:
    store = Store(data_path=tmp_path)
    store.apply(Echo(data_path=tmp_path / "work", n=1))
    store.apply(Echo(data_path=tmp_path / "work", n=2))
    server = serve_from(start_server, store, "echo:1")
    from modelpod import Client

    with Client(server.http_url, model="echo") as client:
        assert client.predict(text="")["config"] == {"n": 1}  # the named version is the default
        assert client.version("2").predict(text="")["config"] == {"n": 2}
    assert {e.version for e in store.endpoints("echo", "2")} == {"2"}


def test_serving_an_unknown_store_model_is_a_clear_error(tmp_path: Path) -> None:
    store = Store(data_path=tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "modelpod", "serve", "--store", store.url, "--model", "nothing",
         "--http-port", "0", "--grpc-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "the store has no model 'nothing'" in result.stderr


def test_an_unapplied_proxy_encodes_the_original_and_decodes_to_a_working_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the decoded model uses the default data path, ./appdata
    proxy = Echo(data_path=tmp_path, colour="blue", serve=True)
    encoded = proxy.encode()
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == {"class": "servable:Echo", "name": "echo", "version": "1",
                                   "config": {"colour": "blue"}}  # fmt: skip
    decoded = RemoteModel.decode(encoded)
    assert decoded.predict(text="x")["config"] == {"colour": "blue"}
    assert decoded.route == "local"
