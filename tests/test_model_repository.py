"""`modelpod serve --repository DIR`: a folder of model files in Triton's layout (NAME/VERSION/file),
a model folder or a plain file, served by name and version; with `--repository-poll`, versions and
models added, changed and removed while requests run, with no request failing.

The models are ONNX graphs built with `onnx.helper` (tests/onnx_graphs.py) (y = x + c, or x * c), so that each
version's answer says which file served it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx_graphs import graph_bytes  # noqa: E402

from modelpod import Client  # noqa: E402
from modelpod.serving.repository_watch import scan  # noqa: E402

from conftest import ROOT, ServerProcess, launch  # noqa: E402

X = np.array([[1.0, 2.0]], dtype=np.float32)


def put(root: Path, relative: str, operation: str, constant: float) -> None:
    """Write a model file as a poller should see it: whole, or not at all (a rename into place)."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.tmp"
    temporary.write_bytes(graph_bytes(operation, constant))
    os.replace(temporary, target)


def put_version(root: Path, name: str, version: str, operation: str, constant: float) -> None:
    """A new version folder appears whole: made hidden, then renamed."""
    hidden = root / name / f".{version}"
    put(root, f"{name}/.{version}/model.onnx", operation, constant)
    os.replace(hidden, root / name / version)


def build(root: Path) -> None:
    for version in ("1", "2"):
        put(root, f"adder/{version}/model.onnx", "Add", float(version))
        put(root, f"scaler/{version}/model.onnx", "Mul", float(version) * 10)
    put(root, "plain.onnx", "Add", 100.0)
    (root / "adder" / "2" / "notes.json").write_text("{}")  # a sidecar, not a model
    (root / "scaler" / "modelpod.yaml").write_text(
        "batching: {max_batch_size: 4}\noptions: {intra_op_threads: 1}\n"
    )


def test_the_layout_is_read_as_triton_reads_it(tmp_path: Path) -> None:
    build(tmp_path)
    (tmp_path / "adder" / "draft").mkdir()  # not a number: not a version
    (tmp_path / "empty" / "1").mkdir(parents=True)  # no model file in it: no model
    found = scan(tmp_path)
    assert sorted(found) == ["adder", "plain", "scaler"]
    assert found["adder"] == {"1": tmp_path / "adder/1/model.onnx", "2": tmp_path / "adder/2/model.onnx"}
    assert found["plain"] == {"1": tmp_path / "plain.onnx"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repository")
    build(root)
    started = launch((), tmp_path_factory.mktemp("appdata"), args=("--repository", str(root)))
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient_reaches_every_model_and_version(served: ServerProcess, kind: str) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(served.http_url[7:] if kind == "http" else served.grpc_address)

    def answer(name: str, version: str = "") -> list[float]:
        tensor = module.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(X)
        return client.infer(name, [tensor], model_version=version).as_numpy("y")[0].tolist()  # type: ignore[no-any-return]

    assert answer("adder") == [3.0, 4.0]  # the highest version is the default
    assert answer("adder", "1") == [2.0, 3.0]
    assert answer("scaler", "1") == [10.0, 20.0]
    assert answer("plain") == [101.0, 102.0]
    index = client.get_model_repository_index()
    if kind == "grpc":
        index = [{"name": m.name, "version": m.version} for m in index.models]
    assert sorted((m["name"], m["version"]) for m in index) == [
        ("adder", "1"), ("adder", "2"), ("plain", "1"), ("scaler", "1"), ("scaler", "2")
    ]  # fmt: skip
    metadata = client.get_model_metadata("adder")
    assert (metadata["platform"] if kind == "http" else metadata.platform) == "onnxruntime_onnx"
    config = client.get_model_config("scaler")  # its settings file's batching
    assert (config["max_batch_size"] if kind == "http" else config.config.max_batch_size) == 4


def test_the_native_client_names_a_version(served: ServerProcess) -> None:
    with Client(served.grpc_address, model="scaler") as native:
        assert native.predict(x=X)["y"].tolist() == [[20.0, 40.0]]
    with Client(served.http_url, model="scaler", version="1") as native:
        assert native.predict(x=X)["y"].tolist() == [[10.0, 20.0]]


def test_a_mistake_in_a_settings_file_stops_the_server_in_one_line(tmp_path: Path) -> None:
    build(tmp_path)
    (tmp_path / "adder" / "modelpod.yaml").write_text("batching: {max_batch: 4}\n")
    result = subprocess.run([sys.executable, "-m", "modelpod", "serve", "--repository", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    settings = tmp_path / "adder" / "modelpod.yaml"
    assert result.stderr == f"modelpod: {settings}.batching: unknown field(s) ['max_batch']; known: " \
                            "max_batch_size, max_batch_delay_ms, max_queue_size\n"  # fmt: skip


# -- polling -----------------------------------------------------------------------------------------


def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"not seen within {timeout} s: {what}")


def _y(url: str, name: str, version: str = "") -> tuple[int, list[float] | str]:
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}
    response = httpx.post(url + path, json=body, timeout=30)
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, response.json()["outputs"][0]["data"]


def test_polling_follows_the_folder_with_no_request_failing(tmp_path: Path) -> None:
    root = tmp_path / "repository"
    build(root)
    # A pool that keeps every version loaded: with one per model, a version evicted just before its
    # file is deleted cannot be loaded again in the moment before the poll sees the deletion.
    args = ("--repository", str(root), "--repository-poll", "0.1", "--model-pool-size", "3")
    server = launch((), tmp_path / "appdata", args=args)
    url, failures, answers, stop = server.http_url, [], set(), threading.Event()

    def load() -> None:  # the default of adder and a version that stays, while the folder changes
        while not stop.is_set():
            for name, version in (("adder", ""), ("scaler", "1")):
                status, data = _y(url, name, version)
                if status != 200:
                    failures.append((name, version, status, data))
                elif name == "adder":
                    answers.add(tuple(data))  # type: ignore[arg-type]

    workers = [threading.Thread(target=load) for _ in range(3)]
    try:
        for worker in workers:
            worker.start()
        put_version(root, "adder", "3", "Add", 3.0)  # a new, higher version becomes the default
        _until(lambda: _y(url, "adder") == (200, [4.0, 5.0]), "adder's version 3 as the default")
        shutil.rmtree(root / "adder" / "1")  # a version removed: no longer listed, nor served
        _until(lambda: _y(url, "adder", "1")[0] == 404, "adder's version 1 gone")
        put(root, "scaler/2/model.onnx", "Mul", 7.0)  # a changed file is reloaded
        _until(lambda: _y(url, "scaler") == (200, [7.0, 14.0]), "scaler's version 2 reloaded")
        put(root, "fresh/1/model.onnx", "Add", 50.0)  # a new model
        _until(lambda: _y(url, "fresh") == (200, [51.0, 52.0]), "the new model fresh")
        (root / "plain.onnx").unlink()  # a removed model is unloaded
        _until(lambda: _y(url, "plain")[0] == 503, "plain unloaded")
        put(root, "plain.onnx", "Add", 200.0)  # and loaded again when it comes back
        _until(lambda: _y(url, "plain") == (200, [201.0, 202.0]), "plain back, with its new file")
        shutil.rmtree(root / "adder" / "3")  # the default removed: the highest left takes over
        _until(lambda: _y(url, "adder") == (200, [3.0, 4.0]), "adder back on version 2")
        # the load's own requests see it too (on a busy machine its first ones may all have come
        # after version 3 arrived, and the switch back is the last thing before the load stops)
        _until(lambda: (3.0, 4.0) in answers, "the load answered by version 2")
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30)
        server.stop(timeout=15)
    assert failures == []
    assert {(3.0, 4.0), (4.0, 5.0)} <= answers  # versions 2 and 3 both answered the default


def test_a_repository_model_runs_in_worker_processes(tmp_path: Path) -> None:
    from modelpod.runtime.formats import VersionedFiles, from_reference, model_file
    from modelpod.workers.process_runner import ProcessRunner

    build(tmp_path / "repository")
    files = {v: model_file(tmp_path / f"repository/adder/{v}/model.onnx") for v in ("1", "2")}
    target = VersionedFiles(tmp_path / "repository/adder", "versions", {}, files)
    assert from_reference(target.reference()) == target
    runner = ProcessRunner(target.instantiate("1", data_path=tmp_path), target, workers=1, timeout=60)
    runner.load()
    try:
        assert runner.predict(x=X)["y"].tolist() == [[2.0, 3.0]]  # version 1's file, in the worker
    finally:
        runner.close()
