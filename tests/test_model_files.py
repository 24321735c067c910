"""Model files served without a class: an iris classifier saved with joblib, a scikit-learn pipeline
converted to ONNX with skl2onnx, and a torch MLP exported to ONNX, all built here offline.

In process (`Runner(PATH)`) and through one real `modelpod serve` process (tritonclient over HTTP
and gRPC, and the native routes), their answers equal the originals'; the metadata is exact; the
ONNX MLP batches concurrent requests; a pickle is refused without --allow-pickle, and a file of no
known format gets one line and exit 2.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
skl2onnx = pytest.importorskip("skl2onnx")
joblib = pytest.importorskip("joblib")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from modelpod import Client, ModelLoadError, Runner  # noqa: E402
from modelpod.extras import MissingExtra  # noqa: E402
from modelpod.runtime.formats import detect, model_file  # noqa: E402
from modelpod.runtime.loader import parse_reference  # noqa: E402
from modelpod.runtime.objects import load_object  # noqa: E402
from modelpod.runtime.sklearn_runtime import SklearnModel  # noqa: E402
from modelpod.types import TensorSpec  # noqa: E402
from modelpod.workers.process_runner import ProcessRunner  # noqa: E402

from conftest import ROOT, ServerProcess, launch  # noqa: E402

FEATURES, LABELS = load_iris(return_X_y=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three model files, and the originals they were made from."""
    folder = tmp_path_factory.mktemp("files")
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(FEATURES, LABELS)
    joblib.dump(pipeline, folder / "iris.joblib")
    graph = skl2onnx.to_onnx(pipeline, FEATURES[:1].astype(np.float32), options={"zipmap": False})
    (folder / "pipeline.onnx").write_bytes(graph.SerializeToString())
    mlp = _export_mlp(folder / "mlp.onnx")
    return {"folder": folder, "pipeline": pipeline, "mlp": mlp}


def _export_mlp(path: Path) -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; the new one needs onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(mlp, (torch.zeros(2, 8),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)  # fmt: skip
    return mlp


def _mlp_answer(files: dict[str, Any], x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return files["mlp"](torch.from_numpy(x)).numpy()  # type: ignore[no-any-return]


# -- in process ------------------------------------------------------------------------------------


def test_sklearn_file_answers_as_the_estimator_with_exact_metadata(files: dict[str, Any]) -> None:
    runner = Runner(files["folder"] / "iris.joblib", allow_pickle=True)
    model = runner.model
    assert model.model_name == "iris"
    assert model.input_specs() == (TensorSpec("input", "FP64", (-1, 4)),)
    assert model.output_specs() == (
        TensorSpec("predict", "INT64", (-1,)),
        TensorSpec("predict_proba", "FP64", (-1, 3)),
    )
    answer = runner.predict(input=FEATURES[:10])
    np.testing.assert_array_equal(answer["predict"], files["pipeline"].predict(FEATURES[:10]))
    np.testing.assert_allclose(answer["predict_proba"], files["pipeline"].predict_proba(FEATURES[:10]))
    assert runner.batching.max_batch_size > 1


@pytest.mark.parametrize("targets", [1, 2])
def test_a_pickled_regressor_answers_its_targets(targets: int, tmp_path: Path) -> None:
    from sklearn.linear_model import LinearRegression

    y = FEATURES[:, :targets] @ np.arange(1, targets + 1) if targets == 1 else FEATURES[:, :targets] * 2
    regressor = LinearRegression().fit(FEATURES, y)
    (tmp_path / "regressor.pkl").write_bytes(pickle.dumps(regressor))
    runner = Runner(tmp_path / "regressor.pkl", allow_pickle=True)
    shape = (-1,) if targets == 1 else (-1, targets)
    assert runner.model.output_specs() == (TensorSpec("predict", "FP64", shape),)
    np.testing.assert_allclose(runner.predict(input=FEATURES[:4])["predict"], regressor.predict(FEATURES[:4]))


def test_onnx_pipeline_answers_as_the_original(files: dict[str, Any]) -> None:
    runner = Runner(files["folder"] / "pipeline.onnx")
    assert runner.model.input_specs() == (TensorSpec("X", "FP32", (-1, 4)),)
    assert runner.model.output_specs() == (TensorSpec("label", "INT64", (-1,)),
                                           TensorSpec("probabilities", "FP32", (-1, 3)))  # fmt: skip
    answer = runner.predict(X=FEATURES.astype(np.float32))
    np.testing.assert_array_equal(answer["label"], files["pipeline"].predict(FEATURES))
    np.testing.assert_allclose(answer["probabilities"], files["pipeline"].predict_proba(FEATURES), atol=1e-5)
    assert runner.model.providers() == ["CPUExecutionProvider"]  # type: ignore[attr-defined]


def test_onnx_mlp_answers_as_torch_and_takes_thread_settings(files: dict[str, Any]) -> None:
    runner = Runner(files["folder"] / "mlp.onnx", intra_op_threads=1, inter_op_threads=1)
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_allclose(runner.predict(x=x)["y"], _mlp_answer(files, x), atol=1e-5)
    assert runner.model.output_specs() == (TensorSpec("y", "FP32", (-1, 3)),)
    assert runner.batching.max_batch_size == 32


def test_a_subclass_adds_postprocessing(files: dict[str, Any]) -> None:
    class Named(SklearnModel):
        model_file = str(files["folder"] / "iris.joblib")
        names = np.array(["setosa", "versicolor", "virginica"], dtype=object)

        def postprocess(self, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"predict": self.names[outputs["predict"]]}

        def output_specs(self) -> tuple[TensorSpec, ...]:
            return (TensorSpec("predict", "BYTES", (-1,)),)

    runner = Runner(Named, allow_pickle=True)
    assert list(runner.predict(input=FEATURES[[0, 149]])["predict"]) == ["setosa", "virginica"]


def test_formats_are_recognised_from_the_bytes(files: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "graph.bin").write_bytes((files["folder"] / "mlp.onnx").read_bytes())
    (tmp_path / "estimator.bin").write_bytes((files["folder"] / "iris.joblib").read_bytes())
    assert detect(tmp_path / "graph.bin").name == "onnx"
    assert detect(tmp_path / "estimator.bin").name == "sklearn"
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match=r"known formats: onnx.*extra onnx.*sklearn.*extra sklearn"):
        detect(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="unknown runtime 'tensorflow'"):
        model_file(tmp_path / "graph.bin", runtime="tensorflow")
    with pytest.raises(PermissionError, match="--allow-pickle"):
        model_file(tmp_path / "estimator.bin")
    forced = model_file(tmp_path / "notes.txt", runtime="onnx")
    assert forced.runtime == "onnx"
    with pytest.raises(ModelLoadError, match="not an ONNX graph onnxruntime can load"):
        Runner(forced)


def test_a_missing_extra_is_named(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "copy.onnx").write_bytes((files["folder"] / "mlp.onnx").read_bytes())  # not described yet
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(
        MissingExtra, match=r"serving copy.onnx needs the onnx extra: pip install \"modelpod\[onnx\]\""
    ):
        Runner(tmp_path / "copy.onnx")


def test_formats_not_served_yet_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from modelpod.runtime.formats import FORMATS

    # every format known is served now; one recognised before its runtime lands gets this answer
    monkeypatch.setitem(FORMATS, "mlflow", dataclasses.replace(FORMATS["mlflow"], runtime=None))
    (tmp_path / "mlflow").mkdir()
    (tmp_path / "mlflow" / "MLmodel").write_text("flavors: {}")
    with pytest.raises(ValueError, match=r"is an MLflow model folder .*cannot serve yet") as caught:
        detect(tmp_path / "mlflow")
    assert "extra onnx" in str(caught.value)


def test_references_name_a_file_and_force_its_runtime(files: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes((files["folder"] / "mlp.onnx").read_bytes())
    name, target = parse_reference(f"tiny={tmp_path / 'weights.bin'}", runtime="onnx", intra_op_threads=1)
    assert name == "tiny"
    assert (target.runtime, dict(target.options)) == ("onnx", {"intra_op_threads": 1})
    assert Runner(target).model.model_name == "weights"


def test_a_model_file_runs_in_worker_processes(files: dict[str, Any], tmp_path: Path) -> None:
    target = model_file(files["folder"] / "iris.joblib", allow_pickle=True)
    runner = ProcessRunner(target.instantiate(data_path=tmp_path), target, workers=1, timeout=60)
    runner.load()
    try:
        answer = runner.predict(input=FEATURES[:5])
    finally:
        runner.close()
    np.testing.assert_array_equal(answer["predict"], files["pipeline"].predict(FEATURES[:5]))
    with pytest.raises(ValueError, match="no such file"):  # a store's record cannot carry allow_pickle in
        load_object(target.reference())


# -- the command line ----------------------------------------------------------------------------


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpod", "serve", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip


def test_a_pickle_is_refused_without_allow_pickle(files: dict[str, Any]) -> None:
    result = _serve_fails(str(files["folder"] / "iris.joblib"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "runs code from the file: pass --allow-pickle" in result.stderr


def test_an_unknown_file_gets_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "weights.dat").write_bytes(b"\x00\x01 nothing known")
    result = _serve_fails(str(tmp_path / "weights.dat"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "not a model file modelpod recognises" in result.stderr
    assert "extra onnx" in result.stderr
    assert "--runtime NAME" in result.stderr


# -- through a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(files: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = files["folder"]
    references = (str(folder / "iris.joblib"), f"pipe={folder / 'pipeline.onnx'}", str(folder / "mlp.onnx"))
    started = launch(references, tmp_path_factory.mktemp("appdata"), args=("--allow-pickle",))
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient_gets_the_originals_answers(
    server: ServerProcess, files: dict[str, Any], kind: str
) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url[7:] if kind == "http" else server.grpc_address)
    x = FEATURES[:20].astype(np.float32)
    tensor = module.InferInput("X", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    answer = client.infer("pipe", [tensor])
    np.testing.assert_array_equal(answer.as_numpy("label"), files["pipeline"].predict(FEATURES[:20]))
    expected = files["pipeline"].predict_proba(FEATURES[:20])
    np.testing.assert_allclose(answer.as_numpy("probabilities"), expected, atol=1e-5)

    features = module.InferInput("input", [3, 4], "FP64")
    features.set_data_from_numpy(FEATURES[:3])
    labels = client.infer("iris", [features]).as_numpy("predict")
    np.testing.assert_array_equal(labels, files["pipeline"].predict(FEATURES[:3]))

    metadata = client.get_model_metadata("mlp")
    if kind == "grpc":
        metadata = {
            "inputs": [_spec(t) for t in metadata.inputs],
            "outputs": [_spec(t) for t in metadata.outputs],
        }
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}]
    assert metadata["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]


def _spec(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def test_native_routes_and_v2_metadata(server: ServerProcess, files: dict[str, Any]) -> None:
    response = httpx.post(f"{server.http_url}/models/iris/predict", json={"input": FEATURES[:2].tolist()})
    assert response.status_code == 200, response.text
    assert response.json()["predict"] == files["pipeline"].predict(FEATURES[:2]).tolist()
    metadata = httpx.get(f"{server.http_url}/v2/models/iris").json()
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert metadata["outputs"] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    with Client(server.grpc_address, model="iris") as native_grpc:  # modelpod.native.ModelService/Call
        answer = native_grpc.predict(input=FEATURES[:2])
    np.testing.assert_array_equal(answer["predict"], files["pipeline"].predict(FEATURES[:2]))
    np.testing.assert_allclose(answer["predict_proba"], files["pipeline"].predict_proba(FEATURES[:2]))
    wrong = httpx.post(f"{server.http_url}/models/iris/predict", json={"input": [[1.0, 2.0]]})
    assert wrong.status_code == 400
    assert "expected [-1, 4]" in wrong.json()["error"]


def test_the_onnx_mlp_batches_concurrent_requests(server: ServerProcess, files: dict[str, Any]) -> None:
    rows = np.random.default_rng(2).standard_normal((64, 8)).astype(np.float32)

    def one(row: np.ndarray) -> list[list[float]]:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": row.tolist()}]}
        response = httpx.post(f"{server.http_url}/v2/models/mlp/infer", json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]["data"]  # type: ignore[no-any-return]

    with ThreadPoolExecutor(16) as pool:
        answers = np.array(list(pool.map(one, rows)), dtype=np.float32)
    np.testing.assert_allclose(answers, _mlp_answer(files, rows), atol=1e-5)
    listing = httpx.get(f"{server.http_url}/models/mlp").json()
    sizes = {int(size) for size in listing["versions"][0]["batch_sizes"]}
    assert max(sizes) > 1, listing["versions"][0]["batch_sizes"]
    assert listing["batching"]["max_batch_size"] == 32


def test_a_pickle_is_read_once_for_its_metadata_and_its_load(
    files: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelpod.runtime import sklearn_runtime

    (tmp_path / "copy.joblib").write_bytes(
        (files["folder"] / "iris.joblib").read_bytes()
    )  # not described yet
    reads: list[Path] = []
    real = sklearn_runtime.load_estimator
    monkeypatch.setattr(sklearn_runtime, "load_estimator", lambda path: reads.append(path) or real(path))
    runner = Runner(tmp_path / "copy.joblib", allow_pickle=True)
    np.testing.assert_array_equal(
        runner.predict(input=FEATURES[:3])["predict"], files["pipeline"].predict(FEATURES[:3])
    )
    assert len(reads) == 1
