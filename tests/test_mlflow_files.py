"""MLflow model folders served without a class: an iris classifier saved with
`mlflow.sklearn.save_model`, once with a column signature (a DataFrame) and once with a tensor
signature, built here offline. In process and through one real `modelpod serve` (tritonclient over
HTTP and gRPC, the native Client), the answers equal the estimator's and the metadata is the
signature. MLflow's import is slow (seconds), hence `slow`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

mlflow_sklearn = pytest.importorskip("mlflow.sklearn")
pytest.importorskip("pandas")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from modelpod import Client, ModelLoadError, Runner  # noqa: E402
from modelpod.runtime.formats import detect, model_file  # noqa: E402
from modelpod.types import TensorSpec  # noqa: E402

from conftest import ServerProcess, launch  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:X does not have valid feature names")]
FRAME, LABELS = load_iris(return_X_y=True, as_frame=True)
COLUMNS = [str(c) for c in FRAME.columns]
FEATURES = FRAME.to_numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("mlflow")
    estimator = LogisticRegression(max_iter=500).fit(FRAME, LABELS)
    for name, example in (("columns", FRAME), ("tensor", FEATURES.astype(np.float32))):
        signature = infer_signature(example, estimator.predict(FRAME))
        mlflow_sklearn.save_model(estimator, str(folder / name), signature=signature,
                                  serialization_format="cloudpickle")  # fmt: skip
    mlflow_sklearn.save_model(estimator, str(folder / "unsigned"), serialization_format="cloudpickle")
    return {"folder": folder, "estimator": estimator}


def test_the_signature_is_the_metadata(saved: dict[str, Any]) -> None:
    folder = saved["folder"]
    assert detect(folder / "columns").name == "mlflow"
    by_columns = Runner(folder / "columns", allow_pickle=True)
    assert by_columns.model.input_specs() == tuple(TensorSpec(c, "FP64", (-1,)) for c in COLUMNS)
    assert by_columns.model.output_specs() == (TensorSpec("output", "INT64", (-1,)),)
    inputs = {c: FEATURES[:5, i] for i, c in enumerate(COLUMNS)}
    np.testing.assert_array_equal(
        by_columns.predict(**inputs)["output"], saved["estimator"].predict(FRAME[:5])
    )
    by_tensor = Runner(folder / "tensor", allow_pickle=True)
    assert by_tensor.model.input_specs() == (TensorSpec("input", "FP32", (-1, 4)),)
    assert by_tensor.batching.max_batch_size > 1
    answer = by_tensor.predict(input=FEATURES[:5].astype(np.float32))["output"]
    np.testing.assert_array_equal(answer, saved["estimator"].predict(FRAME[:5]))


def test_unsigned_or_unallowed_models_say_what_to_do(saved: dict[str, Any]) -> None:
    folder = saved["folder"]
    with pytest.raises(PermissionError, match="--allow-pickle"):
        model_file(folder / "tensor")
    with pytest.raises(ModelLoadError, match=r"without a signature.*infer_signature.*unsigned\.json"):
        Runner(folder / "unsigned", allow_pickle=True)
    declared = Runner(
        folder / "unsigned", allow_pickle=True, inputs="input:FP64[-1,4]", outputs="label:INT64[-1]"
    )
    np.testing.assert_array_equal(
        declared.predict(input=FEATURES[:3])["label"], saved["estimator"].predict(FRAME[:3])
    )


@pytest.fixture(scope="module")
def server(saved: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    references = (f"iris={saved['folder'] / 'tensor'}", f"frame={saved['folder'] / 'columns'}")
    started = launch(references, tmp_path_factory.mktemp("appdata"), args=("--allow-pickle",))
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient_gets_the_estimators_answers(
    server: ServerProcess, saved: dict[str, Any], kind: str
) -> None:
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(server.http_url[7:] if kind == "http" else server.grpc_address)
    tensor = module.InferInput("input", [6, 4], "FP32")
    tensor.set_data_from_numpy(FEATURES[:6].astype(np.float32))
    labels = client.infer("iris", [tensor]).as_numpy("output")
    np.testing.assert_array_equal(labels, saved["estimator"].predict(FRAME[:6]))
    columns = []
    for i, name in enumerate(COLUMNS):
        column = module.InferInput(name, [6], "FP64")
        column.set_data_from_numpy(FEATURES[:6, i].copy())
        columns.append(column)
    np.testing.assert_array_equal(client.infer("frame", columns).as_numpy("output"), labels)
    metadata = client.get_model_metadata("iris")
    platform = metadata["platform"] if kind == "http" else metadata.platform
    assert platform == "mlflow"


def test_the_native_client(server: ServerProcess, saved: dict[str, Any]) -> None:
    with Client(server.grpc_address, model="iris") as native:
        answer = native.predict(input=FEATURES[:4].astype(np.float32))
    np.testing.assert_array_equal(answer["output"], saved["estimator"].predict(FRAME[:4]))
