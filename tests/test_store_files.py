"""The Store takes model files: `store.apply("adder.onnx", identifier="adder")` records the file as
the version's artifact, with its checksum (the same file again is the same version, a changed one
a new version), and `modelpod serve --store URL --model adder` serves every version with its
runtime. The graphs (tests/onnx_graphs.py) are y = x + c, so an answer names its version. A
pickled estimator is recorded by a store that allows pickles and served only with --allow-pickle.
"""

from __future__ import annotations

import subprocess
import sys
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

from conftest import ROOT, launch  # noqa: E402


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


def test_a_stored_pickle_is_served_only_with_allow_pickle(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression

    features, labels = datasets.load_iris(return_X_y=True)
    estimator = LogisticRegression(max_iter=500).fit(features, labels)
    path = tmp_path / "files" / "iris.joblib"
    path.parent.mkdir()
    joblib.dump(estimator, path)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(PermissionError, match="--allow-pickle"):  # describing it unpickles it
        Store(url, data_path=tmp_path / "client").apply(str(path), identifier="iris")
    store = Store(url, data_path=tmp_path / "client", allow_pickle=True)
    try:
        record = store.apply(str(path), identifier="iris")
        assert record.class_ref.endswith(":SklearnModel")
        assert "pickle_trusted" not in record.config  # the trust is the server's, never the record's
    finally:
        store.close()
    refused = subprocess.run(
        [sys.executable, "-m", "modelpod", "serve", "--store", url, "--model", "iris", "--http-port", "0",
         "--grpc-port", "0", "--data-path", str(tmp_path / "refused")],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "runs code from it: pass --allow-pickle" in refused.stderr
    server = launch((), tmp_path / "appdata", args=("--store", url, "--model", "iris", "--allow-pickle"))
    try:
        rows = features[::10]
        tensor = httpclient.InferInput("input", list(rows.shape), "FP64")
        tensor.set_data_from_numpy(rows)
        result = httpclient.InferenceServerClient(server.http_url[7:]).infer("iris", [tensor])
        np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(rows))
        np.testing.assert_allclose(result.as_numpy("predict_proba"), estimator.predict_proba(rows), rtol=1e-9)
        with Client(server.grpc_address, model="iris") as native:
            np.testing.assert_array_equal(native.predict(input=rows)["predict"], estimator.predict(rows))
    finally:
        server.stop(timeout=15)


def test_a_record_cannot_carry_the_trust_in() -> None:
    from modelpod.registry.file_artifacts import laid_out_config

    forged = {"model_file": "iris.joblib", "pickle_trusted": True}
    assert laid_out_config(forged, allow_pickle=False) == {"model_file": "iris.joblib"}
    assert laid_out_config(forged, allow_pickle=True) == forged
    assert laid_out_config({"pickle_trusted": True}, allow_pickle=True) == {}  # not a model file
