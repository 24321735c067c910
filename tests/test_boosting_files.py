"""XGBoost's and LightGBM's scikit-learn estimators served from joblib files by the scikit-learn
runtime (`modelpod serve model.joblib --allow-pickle`): trained here on iris, their `predict` and
`predict_proba` answered through tritonclient (HTTP and gRPC) equal the estimator's own, and the
metadata says what the estimator takes. Each library is skipped, with its reason, when it is not
installed (the `boosting` extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402

from conftest import ServerProcess, launch  # noqa: E402

FEATURES, LABELS = load_iris(return_X_y=True)
ROWS = FEATURES[::7]  # 22 rows of each class


def _xgboost(module: Any) -> Any:
    return module.XGBClassifier(n_estimators=8, max_depth=2, random_state=0, n_jobs=1)


def _lightgbm(module: Any) -> Any:
    return module.LGBMClassifier(n_estimators=8, num_leaves=4, random_state=0, n_jobs=1, verbose=-1)


ESTIMATORS = {"xgboost": _xgboost, "lightgbm": _lightgbm}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Library name -> its fitted classifier, saved as `<library>.joblib` in one folder; a library
    not installed is left out."""
    folder = tmp_path_factory.mktemp("boosting")
    found: dict[str, Any] = {"folder": folder}
    for library, make in ESTIMATORS.items():
        try:
            module = importlib.import_module(library)
        except ImportError:
            continue
        estimator = make(module).fit(FEATURES, LABELS)
        joblib.dump(estimator, folder / f"{library}.joblib")
        found[library] = estimator
    return found


@pytest.fixture(scope="module")
def served(trained: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    files = [str(trained["folder"] / f"{library}.joblib") for library in ESTIMATORS if library in trained]
    if not files:
        pytest.skip("neither xgboost nor lightgbm is installed (pip install '.[boosting]')")
    started = launch(tuple(files), tmp_path_factory.mktemp("appdata"), args=("--allow-pickle",))
    yield started
    started.stop(timeout=15)


@pytest.mark.parametrize("kind", ["http", "grpc"])
@pytest.mark.parametrize("library", list(ESTIMATORS))
def test_the_served_file_answers_as_the_estimator(
    trained: dict[str, Any], served: ServerProcess, library: str, kind: str
) -> None:
    if library not in trained:
        pytest.skip(f"{library} is not installed (pip install '.[boosting]')")
    estimator = trained[library]
    module: Any = httpclient if kind == "http" else grpcclient
    client = module.InferenceServerClient(served.http_url[7:] if kind == "http" else served.grpc_address)
    tensor = module.InferInput("input", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS)
    outputs = [module.InferRequestedOutput("predict"), module.InferRequestedOutput("predict_proba")]
    result = client.infer(library, [tensor], outputs=outputs)
    np.testing.assert_array_equal(result.as_numpy("predict"), estimator.predict(ROWS))
    np.testing.assert_allclose(result.as_numpy("predict_proba"), estimator.predict_proba(ROWS), rtol=1e-6)
    assert set(result.as_numpy("predict").tolist()) == {0, 1, 2}  # rows of every class, told apart


@pytest.mark.parametrize("library", list(ESTIMATORS))
def test_the_metadata_says_what_the_estimator_takes(trained: dict[str, Any], served: ServerProcess,
                                                    library: str) -> None:  # fmt: skip
    if library not in trained:
        pytest.skip(f"{library} is not installed (pip install '.[boosting]')")
    metadata = httpclient.InferenceServerClient(served.http_url[7:]).get_model_metadata(library)
    assert metadata["platform"] == "sklearn"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}]
    assert [(o["name"], o["shape"]) for o in metadata["outputs"]] == [
        ("predict", [-1]),
        ("predict_proba", [-1, 3]),
    ]


def test_a_boosting_file_is_refused_without_allow_pickle(trained: dict[str, Any], tmp_path: Path) -> None:
    from modelpod.runtime.formats import model_file

    library = next((name for name in ESTIMATORS if name in trained), None)
    if library is None:
        pytest.skip("neither xgboost nor lightgbm is installed (pip install '.[boosting]')")
    with pytest.raises(PermissionError, match="--allow-pickle"):
        model_file(trained["folder"] / f"{library}.joblib")
