"""Serve a scikit-learn estimator saved with joblib or pickle (XGBoost's and LightGBM's scikit-learn
estimators too: anything with `predict`).

One input, `input` (FP64, `[-1, n_features_in_]`); the outputs `predict` and, when the estimator has
it, `predict_proba` (`[-1, n_classes]`). Loading a pickle runs code from the file, so it is refused
unless `allow_pickle` (`--allow-pickle`) says the file is trusted.
"""

from __future__ import annotations

import pickle
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.extras import needs_extra
from modelpod.runtime.file_model import HANDOFF, Arrays, Description, file_key
from modelpod.runtime.pickled_files import PickledFileModel
from modelpod.types import TensorSpec, datatype_of, numpy_dtype

INPUT = "input"


def load_estimator(path: Path) -> Any:
    """The estimator in a joblib file (compressed or not) or a plain pickle."""
    with needs_extra("sklearn", f"serving {path.name}"):
        import joblib

    try:
        return joblib.load(path)
    except (pickle.UnpicklingError, ValueError, KeyError, EOFError):
        with path.open("rb") as file:  # a pickle joblib could not read as its own
            return pickle.load(file)


@lru_cache(maxsize=64)
def _describe(path: str, stamp: tuple[int, int]) -> Description:
    """What the estimator at `path` takes and answers (cached per file state: a probe and each
    version describe the same file)."""
    estimator = load_estimator(Path(path))
    HANDOFF.put(("sklearn", path, stamp), estimator)  # the first setup takes it: read once
    return describe_estimator(estimator)


def describe_estimator(estimator: Any) -> Description:
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(
            f"{type(estimator).__name__} has no predict(): not an estimator modelpod can serve"
        )
    width = int(getattr(estimator, "n_features_in_", -1))
    targets = _targets(estimator)
    shape = (-1,) if targets == 1 else (-1, targets)
    outputs = [TensorSpec("predict", _predict_datatype(estimator), shape)]
    classes = getattr(estimator, "classes_", None)
    # a classifier of several targets answers a list of probability arrays, which no tensor holds
    if callable(getattr(estimator, "predict_proba", None)) and classes is not None and targets == 1:
        outputs.append(TensorSpec("predict_proba", "FP64", (-1, len(classes))))
    inputs = (TensorSpec(INPUT, "FP64", (-1, width)),)
    return Description(inputs, tuple(outputs), batchable=True)


def _targets(estimator: Any) -> int:
    """How many values `predict` answers per row: `n_outputs_`, or the coefficients' rows of a
    linear model fitted to several targets."""
    outputs = getattr(estimator, "n_outputs_", None)
    if outputs is None and getattr(estimator, "classes_", None) is None:
        coefficients = np.asarray(getattr(estimator, "coef_", np.zeros(0)))
        outputs = coefficients.shape[0] if coefficients.ndim == 2 else 1
    return int(outputs or 1)


def _predict_datatype(estimator: Any) -> str:
    classes = getattr(estimator, "classes_", None)
    if classes is None:
        return "FP64"  # a regressor
    if isinstance(classes, list):  # several targets: each its own classes
        classes = classes[0]
    array = np.asarray(classes)
    if array.dtype.kind in "OSU":
        return "BYTES"
    if array.dtype.kind in "iu":
        return "INT64"
    return datatype_of(array) if array.dtype.kind == "b" else "FP64"


class SklearnModel(PickledFileModel):
    """A scikit-learn estimator from a joblib or pickle file. Subclass it to add processing."""

    runtime_name: ClassVar[str] = "sklearn"
    platform: ClassVar[str] = "sklearn"

    estimator: Any = None

    def describe(self) -> Description:
        # describing it loads it: refused before anything is unpickled
        self.refuse_unless_trusted(f"{self.path} is a pickle, and loading it runs code from the file")
        return _describe(*file_key(self.path))

    def setup(self) -> None:
        handed = HANDOFF.take(("sklearn", *file_key(self.path)))
        self.estimator = handed if handed is not None else load_estimator(self.path)

    def teardown(self) -> None:
        self.estimator = None

    def run(self, inputs: Arrays) -> Arrays:
        features = inputs[INPUT]
        outputs: Arrays = {}
        for spec in self.description.outputs:
            answer = np.asarray(getattr(self.estimator, spec.name)(features))
            dtype = numpy_dtype(spec.datatype)
            outputs[spec.name] = answer.astype(dtype) if spec.datatype != "BYTES" else answer.astype(object)
        return outputs
