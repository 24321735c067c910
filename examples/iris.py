"""A scikit-learn classifier for the iris flowers: trained, saved, loaded and served.

    python examples/iris.py

Configuration (`initialize(...)` or keyword arguments of the instance):
  C:        inverse regularisation strength of the logistic regression (default 1.0)
  max_iter: solver iterations (default 500)
  folds:    cross-validation folds `train` reports on (default 5)
  seed:     shuffling seed of the folds (default 0)

`train()` cross-validates (one `report` per fold, with its accuracy), fits on all 150 samples
and saves the estimator to `model_dir / "estimator.pkl"`. `setup()` loads that file. An instance
that was never trained trains itself once in `setup()` with its config (well under a second), so
that serving the example works out of the box; later instances with the same name, version and
data path load the saved estimator instead.

The estimator is pickled into the instance's own folder, which only this model writes: never
point `data_path` at files you do not trust, since unpickling runs code.
"""

from __future__ import annotations

import math
import os
import pickle
import threading
from collections.abc import Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from modelpod.errors import InvalidInput
from modelpod.runtime.model import Model
from modelpod.types import TensorSpec

ESTIMATOR_FILE = "estimator.pkl"
N_FEATURES = 4
FEATURE_NAMES = ("sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)")
DEFAULTS: dict[str, Any] = {"C": 1.0, "max_iter": 500, "folds": 5, "seed": 0}


class IrisClassifier(Model):
    """Logistic regression on the four iris measurements; answers a label and its probabilities."""

    name = "iris"
    example: ClassVar[Mapping[str, Any] | None] = {"features": [5.1, 3.5, 1.4, 0.2]}
    # The Open Inference Protocol sees each key of predict's answer as an output tensor.
    outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = (
        TensorSpec("label", "BYTES", (-1,)),
        TensorSpec("probabilities", "BYTES", (-1,)),
    )

    estimator: Any = None
    labels: tuple[str, ...] = ()

    def setup(self) -> None:
        path = self.model_dir / ESTIMATOR_FILE
        if path.exists():
            with path.open("rb") as file:
                saved = pickle.load(file)  # the instance's own folder; see the module docstring
            self.estimator, self.labels = saved["estimator"], tuple(saved["labels"])
        else:
            self.train()

    def train(self, **options: Any) -> dict[str, Any]:
        """Cross-validate, fit on all the data, save; `options` override the config for this run."""
        from sklearn.datasets import load_iris
        from sklearn.model_selection import StratifiedKFold

        settings = {**DEFAULTS, **self.config, **options}
        folds = int(settings["folds"])
        if folds < 2:
            raise InvalidInput(f"folds must be at least 2, not {folds}")
        data = load_iris()
        x, y = data.data, data.target
        labels = tuple(str(name) for name in data.target_names)
        total = folds + 1

        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(settings["seed"]))
        scores = []
        for fold, (train_rows, test_rows) in enumerate(splitter.split(x, y), start=1):
            estimator = _estimator(settings).fit(x[train_rows], y[train_rows])
            accuracy = float(estimator.score(x[test_rows], y[test_rows]))
            scores.append(accuracy)
            self.report(step=fold, total=total, fold=fold, accuracy=accuracy)

        estimator = _estimator(settings).fit(x, y)
        summary = {
            "cv_accuracy": float(np.mean(scores)),
            "train_accuracy": float(estimator.score(x, y)),
            "samples": len(y),
        }
        _save(self.model_dir / ESTIMATOR_FILE, {"estimator": estimator, "labels": list(labels)})
        self.labels, self.estimator = labels, estimator  # requests in flight keep the old one
        self.report(step=total, total=total, message="fitted on all samples and saved", **summary)
        return summary

    def predict(self, features: list[float]) -> dict[str, Any]:
        """`features`: sepal length, sepal width, petal length, petal width, in centimetres."""
        return self._answer(self.estimator.predict_proba(_rows([features])))[0]

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Many requests, one `predict_proba` call."""
        rows = _rows([_field(item, index) for index, item in enumerate(items)])
        return self._answer(self.estimator.predict_proba(rows))

    def teardown(self) -> None:
        self.estimator, self.labels = None, ()

    def _answer(self, probabilities: npt.NDArray[np.float64]) -> list[dict[str, Any]]:
        return [
            {
                "label": self.labels[int(np.argmax(row))],
                "probabilities": {label: float(p) for label, p in zip(self.labels, row, strict=True)},
            }
            for row in probabilities
        ]


def _estimator(settings: Mapping[str, Any]) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = LogisticRegression(C=float(settings["C"]), max_iter=int(settings["max_iter"]))
    return make_pipeline(StandardScaler(), classifier)


def _field(item: Mapping[str, Any], index: int) -> Any:
    try:
        return item["features"]
    except (KeyError, TypeError):
        raise InvalidInput(f"item {index}: expected a request with a 'features' field") from None


def _rows(requests: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Check each request's features and stack them into an (n, 4) float array."""
    rows = np.empty((len(requests), N_FEATURES), dtype=np.float64)
    for index, features in enumerate(requests):
        where = f"item {index}: " if len(requests) > 1 else ""
        rows[index] = _features(features, where)
    return rows


def _features(features: Any, where: str) -> list[float]:
    if isinstance(features, np.ndarray):
        if features.dtype.kind not in "iuf":
            raise InvalidInput(f"{where}features must be numbers, got an array of {features.dtype}")
        features = features.reshape(-1).tolist()  # (4,) or (1, 4) from a tensor transport
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise InvalidInput(
            f"{where}features must be a list of {N_FEATURES} numbers "
            f"({', '.join(FEATURE_NAMES)}), got {type(features).__name__}"
        )
    if len(features) != N_FEATURES:
        raise InvalidInput(
            f"{where}features must have {N_FEATURES} numbers "
            f"({', '.join(FEATURE_NAMES)}), got {len(features)}"
        )
    values = []
    for position, value in enumerate(features):
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise InvalidInput(
                f"{where}features[{position}] ({FEATURE_NAMES[position]}) must be a finite number, "
                f"got {value!r}"
            )
        values.append(float(value))
    return values


def _save(path: Path, value: Any) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
    with tmp.open("wb") as file:
        pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)


if __name__ == "__main__":
    from modelpod.runtime.runner import Runner

    with Runner(IrisClassifier) as runner:
        print(runner.predict(features=[6.7, 3.0, 5.2, 2.3]))
        print(runner.log()[-1]["metrics"])
