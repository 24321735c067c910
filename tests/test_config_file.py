"""`modelpod serve -c modelpod.yaml`: models (files with their runtime, options and batching, and
classes) and settings from one file, paths relative to it; flags win over the environment, which
wins over the file; each mistake is one line naming the file and the field.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import tritonclient.http as httpclient  # noqa: E402
from onnx_graphs import adder_bytes  # noqa: E402

from modelpod import Client, Runner  # noqa: E402
from modelpod.cli.config_file import MODEL_FIELDS, read, settings_below_flags, targets  # noqa: E402
from modelpod.server.settings import Settings  # noqa: E402

from conftest import ROOT, launch  # noqa: E402

DOUBLER = """
from modelpod import Model, Router, ServedPipeline


class Doubler(Model):
    def predict(self, x: float) -> float:
        return 2 * x


class Pick(Router):
    routes = {"double": "Doubler", "twice": "twice"}
    route_param = "to"
    default_route = "double"


class Quadruple(ServedPipeline):
    name = "quadruple"
    steps = ["Doubler", "Doubler"]
"""


def write(folder: Path, text: str) -> Path:
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "adder.onnx").write_bytes(adder_bytes(1.0))
    (folder / "doubler.py").write_text(DOUBLER)
    (folder / "modelpod.yaml").write_text(text)
    return folder / "modelpod.yaml"


CONFIG = """
settings:
  http_port: 1                # the flag given by the test wins: port 1 is never bound
  max_batch_delay_ms: 4
models:
  - path: models/adder.onnx   # relative to this file
    name: plus
    options: {intra_op_threads: 1}
    batching: {max_batch_size: 4}
  - class: doubler.py:Doubler
  - class: doubler.py:Pick        # a router, as any class
  - class: doubler.py:Quadruple   # a served pipeline's class
pipelines:
  - twice=Doubler,Doubler         # a pipeline declared as --pipeline takes it
"""


def test_the_files_models_and_settings_are_served(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    server = launch(("-c", str(path)), tmp_path / "appdata")
    try:
        client = httpclient.InferenceServerClient(server.http_url[7:])
        tensor = httpclient.InferInput("x", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
        assert client.infer("plus", [tensor]).as_numpy("y").tolist() == [[2.0, 3.0]]
        config = client.get_model_config("plus")
        assert config["max_batch_size"] == 4  # the model's batching
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 4000  # the file's setting
        with Client(server.grpc_address, model="Doubler") as native:
            assert native.predict(x=2.5) == 5.0
        twice = httpx.post(f"{server.http_url}/models/twice/predict", json={"x": 2.5}, timeout=30)
        assert twice.json() == 10.0, twice.text
        for route, expected in (("", 5.0), ("?to=double", 5.0), ("?to=twice", 10.0)):  # the router's choice
            routed = httpx.post(f"{server.http_url}/models/Pick/predict{route}", json={"x": 2.5}, timeout=30)
            assert routed.json() == expected, routed.text
        with Client(server.grpc_address, model="quadruple") as native:
            assert native.predict(x=2.5) == 10.0
    finally:
        server.stop(timeout=15)


def test_the_environment_wins_over_the_file_and_flags_over_both(tmp_path: Path) -> None:
    config = read(write(tmp_path, CONFIG))
    merged = settings_below_flags(config, {"grpc_port": 0}, {"MODELPOD_HTTP_PORT": "9000"})
    assert merged == {"max_batch_delay_ms": 4, "grpc_port": 0}  # http_port left to the environment
    merged = settings_below_flags(config, {"http_port": 0}, {})
    assert Settings(**merged).http_port == 0
    assert (config.models[0]["name"], config.models[0]["path"]) == (
        "plus",
        tmp_path / "models" / "adder.onnx",
    )
    assert config.models[1] == {"name": None, "class": f"{tmp_path / 'doubler.py'}:Doubler"}
    assert config.models[0]["options"] == {"intra_op_threads": 1, "max_batch_size": 4}


def test_a_model_files_processing_class_is_the_class_that_serves_it(tmp_path: Path) -> None:
    path = write(tmp_path, "models: [{path: models/adder.onnx, processing: scaled_adder.py:Scaled}]")
    (tmp_path / "scaled_adder.py").write_text(
        "from modelpod import OnnxModel\n\n\nclass Scaled(OnnxModel):\n"
        "    def postprocess(self, outputs):\n        return {'y': outputs['y'] * 10}\n"
    )
    (target,) = targets(read(path), allow_pickle=False)  # the operator's own file: no --allow-pickle
    assert target.processing == f"{tmp_path / 'scaled_adder.py'}:Scaled"
    model = target.instantiate(data_path=tmp_path / "appdata")
    assert type(model).__name__ == "Scaled"
    with Runner(model) as runner:
        assert runner.predict(x=np.array([[1.0, 2.0]], dtype=np.float32))["y"].tolist() == [[20.0, 30.0]]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("servers: {}", "the file: unknown field(s) ['servers']; known: settings, models, pipelines"),
        ("settings: {http_prot: 1}", "settings: unknown setting(s) ['http_prot']"),
        ("models: [{path: a.onnx, pth: b}]", "models[0]: unknown field(s) ['pth']"),
        ("models: [{path: a.onnx, class: b.py:B}]", "models[0]: give path (a model file or folder) or class"),
        ("models: [{path: models/adder.onnx, batching: {max_batch: 2}}]", "models[0].batching: unknown"),
        (
            "models: [{class: doubler.py:Doubler, workers: 2}]",
            "models[0]: options, batching, workers, runtime and processing are for model files",
        ),
        (
            "models: [{path: models/adder.onnx, processing: os:path}]",
            "models[0]: processing: 'os:path' is not a class",
        ),
        (
            "models: [{path: models/adder.onnx, processing: modelpod:SklearnModel}]",
            "models[0]: processing: 'modelpod:SklearnModel' (SklearnModel) is not a subclass of modelpod",
        ),
        (
            "models: [{path: models/adder.onnx, processing: Scaled}]",
            "models[0].processing: expected FILE.py:Class",
        ),
        ("models: [{path: models/missing.onnx}]", "models[0]: no such model file"),
        ("models: {plus: a.onnx}", "models: expected a list of models"),
        ("settings: [1, 2]", "settings: expected a mapping, not list"),
        ("models: [{path: a", "is not YAML"),
    ],
)
def test_a_mistake_names_the_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=re.escape(str(path))) as caught:
        targets(read(path), allow_pickle=False)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_modelpod_serve_says_it_in_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "models: [{path: models/adder.onnx, pth: b}]")
    result = subprocess.run([sys.executable, "-m", "modelpod", "serve", "-c", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr
        == f"modelpod: {path}: models[0]: unknown field(s) ['pth']; known: {', '.join(MODEL_FIELDS)}\n"
    )


def test_modelpod_config_prints_the_effective_settings(tmp_path: Path) -> None:
    import os

    import yaml

    path = write(tmp_path, "settings: {http_port: 1, grpc_port: 2, max_batch_delay_ms: 4, data_path: state, "
                           "api_keys: 'admin:secret'}\n")  # fmt: skip
    command = [sys.executable, "-m", "modelpod", "config", "--print", "-c", str(path), "--http-port", "9000"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, "MODELPOD_GRPC_PORT": "5555"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert (printed["http_port"], printed["grpc_port"], printed["max_batch_delay_ms"]) == (9000, 5555, 4.0)
    assert printed["data_path"] == str(tmp_path / "state")  # relative to the file
    assert printed["api_keys"] == "**********"
