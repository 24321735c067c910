"""The Store takes model files: `store.apply("adder.onnx", identifier="adder")` records the file as
the version's artifact, with its checksum (the same file again is the same version, a changed one
a new version), and `modelpod serve --store URL --model adder` serves every version with its
runtime. The graphs (tests/onnx_graphs.py) are y = x + c, so an answer names its version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sqlalchemy")

import tritonclient.http as httpclient  # noqa: E402
from onnx_graphs import adder_bytes  # noqa: E402

from modelpod import Client  # noqa: E402
from modelpod.registry.store import Store  # noqa: E402

from conftest import launch  # noqa: E402


def test_a_stored_model_file_is_served_by_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    graph = tmp_path / "files" / "adder.onnx"
    graph.parent.mkdir()
    graph.write_bytes(adder_bytes(1.0))
    store = Store(url, data_path=tmp_path / "client")
    try:
        first = store.apply(str(graph), identifier="adder")
        assert store.apply(str(graph), identifier="adder").version == first.version  # unchanged: the same
        graph.write_bytes(adder_bytes(2.0))
        second = store.apply(str(graph), identifier="adder")
        assert (first.version, second.version) == ("1", "2")
        assert first.checksum != second.checksum
        assert first.class_ref.endswith(":OnnxModel")  # the runtime that serves it
    finally:
        store.close()
    graph.unlink()  # the server reads the store's copies, not the file applied
    server = launch((), tmp_path / "appdata", args=("--store", url, "--model", "adder"))
    try:
        client = httpclient.InferenceServerClient(server.http_url[7:])
        x = np.array([[1.0, 2.0]], dtype=np.float32)
        for version, expected in (("", [[3.0, 4.0]]), ("1", [[2.0, 3.0]])):
            tensor = httpclient.InferInput("x", [1, 2], "FP32")
            tensor.set_data_from_numpy(x)
            assert client.infer("adder", [tensor], model_version=version).as_numpy("y").tolist() == expected
        assert client.get_model_metadata("adder")["platform"] == "onnxruntime_onnx"
        with Client(server.grpc_address, model="adder", version="1") as native:
            assert native.predict(x=x)["y"].tolist() == [[2.0, 3.0]]
    finally:
        server.stop(timeout=15)
