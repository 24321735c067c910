"""A repository model's settings file (NAME/modelpod.yaml) names a processing class, a subclass of
its runtime's class (`processing: scaling.py:Scaled`), which then serves its files: in the server's
threads and in worker processes, through both protocols. Importing it runs code, so it needs
--allow-pickle; each wrong value (no such module, not a class, the wrong base) is one line naming
the file and the field. The server's --runtime and --runtime-option reach every repository model;
a settings file's own runtime and options win over them.

The models are ONNX graphs y = x + c (tests/onnx_graphs.py); the processing class multiplies the
answer by 10, so an answer says whether it went through it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx_graphs import adder_bytes  # noqa: E402

from modelpod.serving.repository import Repository  # noqa: E402
from modelpod.serving.repository_watch import RepositoryWatch  # noqa: E402

from conftest import ROOT, ServerProcess, launch  # noqa: E402

X = np.array([[1.0, 2.0]], dtype=np.float32)

SCALING = """
from modelpod import OnnxModel, SklearnModel


class Scaled(OnnxModel):
    def postprocess(self, outputs):
        return {"y": outputs["y"] * 10}


class Wrong(SklearnModel):
    pass


def helper():
    return 1
"""


def build(root: Path, settings: dict[str, str]) -> None:
    """One model per entry of `settings` (its name -> its modelpod.yaml), y = x + 1, and `plain`
    with no settings file."""
    for name, text in {**settings, "plain": ""}.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(adder_bytes(1.0))
        if text:
            (root / name / "modelpod.yaml").write_text(text)
    (root / "scaled" / f"scaling_{root.name}.py").write_text(SCALING)


def module_of(root: Path) -> str:
    return f"scaling_{root.name}.py"  # a module name of its own: each test's file is imported once


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("repository")
    module = module_of(root)
    build(root, {"scaled": f"processing: {module}:Scaled\n",
                 "scaled-workers": f"processing: ../scaled/{module}:Scaled\nworkers: 1\n"})  # fmt: skip
    started = launch(
        (), tmp_path_factory.mktemp("appdata"), args=("--repository", str(root), "--allow-pickle")
    )
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_a_processing_class_serves_the_models_files(served: ServerProcess, kind: str) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(served.http_url[7:] if kind == "http" else served.grpc_address)

    def answer(name: str) -> list[float]:
        tensor = module.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(X)
        return client.infer(name, [tensor]).as_numpy("y")[0].tolist()  # type: ignore[no-any-return]

    assert answer("scaled") == [20.0, 30.0]  # (x + 1) * 10: through Scaled.postprocess
    assert answer("scaled-workers") == [20.0, 30.0]  # a worker process imports it too
    assert answer("plain") == [2.0, 3.0]  # no settings file: the runtime's class


def _serve(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modelpod", "serve", "--repository", str(root), "--http-port", "0",
         "--grpc-port", "0", "--data-path", str(root / ".appdata"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_without_allow_pickle_a_processing_class_stops_the_server(tmp_path: Path) -> None:
    build(tmp_path, {"scaled": f"processing: {module_of(tmp_path)}:Scaled\n"})
    result = _serve(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{tmp_path / 'scaled' / 'modelpod.yaml'}.processing: importing" in lines[0]
    assert "--allow-pickle" in lines[0]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nowhere.py:Scaled", "processing: cannot load"),  # no such file
        ("no_such_package.module:Scaled", "cannot import 'no_such_package.module'"),
        ("{module}:Missing", "has no 'Missing'"),
        ("{module}:helper", "is not a class but function; expected a subclass of OnnxModel"),
        ("{module}:Wrong", "(Wrong) is not a subclass of modelpod.OnnxModel, the class of the onnx runtime"),
        ("Scaled", "processing: expected FILE.py:Class or package.module:Class"),
        ("[1, 2]", "processing: expected FILE.py:Class"),
        (
            "scaling.py:Scaled\noptions: {{processing: x.py:Y}}",
            "options.processing: name the class in the field",
        ),
    ],
)
def test_a_wrong_processing_class_names_the_file_and_field(tmp_path: Path, value: str, message: str) -> None:
    build(tmp_path, {"scaled": f"processing: {value.format(module=module_of(tmp_path))}\n"})
    watch = RepositoryWatch(tmp_path, Repository(tmp_path / ".appdata"), allow_pickle=True, options={})
    with pytest.raises(ValueError, match="processing") as raised:
        watch.add_all()
    text = str(raised.value)
    assert text.startswith(f"{tmp_path / 'scaled' / 'modelpod.yaml'}."), text
    assert message in text
    assert "\n" not in text


def test_the_runtime_flag_reaches_repository_models_and_a_settings_file_wins(tmp_path: Path) -> None:
    build(tmp_path, {"own": "runtime: onnx\nbatching: {max_batch_size: 8}\n", "scaled": ""})
    # --runtime torchscript --runtime-option max_batch_size=4: every model, unless its file says otherwise
    watch = RepositoryWatch(tmp_path, Repository(tmp_path / ".appdata"), allow_pickle=False,
                            options={"max_batch_size": 4}, runtime="torchscript")  # fmt: skip
    assert watch.settings("plain") == ("torchscript", {"max_batch_size": 4})
    assert watch.settings("own") == ("onnx", {"max_batch_size": 8})
    watch.add_all()
    # plain's ONNX file cannot be read as TorchScript: left out (logged); own's runtime serves it
    assert "own" in watch.repository.names()
    assert "plain" not in watch.repository.names()
    assert watch.repository.get("own").runner_options["batching"].max_batch_size == 8


def test_the_runtime_options_flag_reaches_a_served_repository(tmp_path: Path) -> None:
    build(tmp_path, {"own": "batching: {max_batch_size: 8}\n", "scaled": ""})
    server = launch((), tmp_path / ".appdata", args=("--repository", str(tmp_path), "--runtime", "onnx",
                                                     "--runtime-option", "max_batch_size=4"))  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(server.http_url[7:])
        assert client.get_model_config("plain")["max_batch_size"] == 4  # the flag
        assert client.get_model_config("own")["max_batch_size"] == 8  # its settings file wins
        assert client.get_model_metadata("plain")["platform"] == "onnxruntime_onnx"
    finally:
        server.stop(timeout=15)
