"""Iris flowers in three served steps: scale the measurements, classify them, name the class.

    modelpod serve examples/pipeline.py:Scale examples/pipeline.py:Linear examples/pipeline.py:Tree \\
        examples/pipeline.py:Label examples/pipeline.py:IrisPipeline

Each step is a tensor model of its own, batched on its own, fitted at start-up on scikit-learn's
bundled iris data (well under a second). `IrisPipeline` serves them as one model, "iris-pipeline":
its middle step branches between a logistic regression ("linear", the default) and a decision tree
(`?branch=tree`). `python examples/pipeline.py` chains the same steps in-process with a `Pipeline`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from modelpod.runtime.model import Model
from modelpod.serving.served_pipeline import ServedPipeline, Step
from modelpod.types import TensorSpec

Array = npt.NDArray[Any]
Specs = Sequence[TensorSpec | Mapping[str, Any]]
MEASUREMENTS = TensorSpec("x", "FP32", (-1, 4))  # sepal length and width, petal length and width (cm)
PROBABILITIES = TensorSpec("probabilities", "FP32", (-1, 3))


def iris() -> tuple[Array, Array, tuple[str, ...]]:
    """Measurements, class indices and class names of the 150 bundled samples."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target, tuple(str(name) for name in data.target_names)


def scaler() -> Any:
    from sklearn.preprocessing import StandardScaler

    return StandardScaler().fit(iris()[0])


class Batched(Model):
    """Every step batches its concurrent requests, up to 32 rows."""

    max_batch_size = 32
    max_batch_delay_ms = 2.0


class Scale(Batched):
    """Measurements to zero mean and unit variance."""

    name = "iris-scale"
    inputs: ClassVar[Specs] = [MEASUREMENTS]
    outputs: ClassVar[Specs] = [MEASUREMENTS]

    def setup(self) -> None:
        self.scaler = scaler()

    def predict(self, x: Array) -> Array:
        return self.scaler.transform(x).astype(np.float32)  # type: ignore[no-any-return]


class Classifier(Batched):
    """Scaled measurements to the probability of each class."""

    inputs: ClassVar[Specs] = [MEASUREMENTS]
    outputs: ClassVar[Specs] = [PROBABILITIES]

    def estimator(self) -> Any:
        raise NotImplementedError

    def setup(self) -> None:
        x, y, _ = iris()
        self.fitted = self.estimator().fit(scaler().transform(x), y)

    def predict(self, x: Array) -> Array:
        return self.fitted.predict_proba(x).astype(np.float32)  # type: ignore[no-any-return]


class Linear(Classifier):
    name = "iris-linear"

    def estimator(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=500)


class Tree(Classifier):
    name = "iris-tree"

    def estimator(self) -> Any:
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_depth=3, random_state=0)


class Label(Batched):
    """Class probabilities to the most likely class's name and its probability."""

    name = "iris-label"
    inputs: ClassVar[Specs] = [PROBABILITIES]
    outputs: ClassVar[Specs] = [TensorSpec("label", "BYTES", (-1,)), TensorSpec("confidence", "FP32", (-1,))]

    def setup(self) -> None:
        self.names = np.array(iris()[2], dtype=np.object_)

    def predict(self, probabilities: Array) -> dict[str, Array]:
        best = probabilities.argmax(axis=1)
        return {"label": self.names[best], "confidence": probabilities.max(axis=1)}


class IrisPipeline(ServedPipeline):
    """The three steps as one served model; `?branch=tree` picks the tree for the middle one."""

    name = "iris-pipeline"
    steps: ClassVar[Sequence[Step]] = [
        "iris-scale",
        {"linear": "iris-linear", "tree": "iris-tree"},
        "iris-label",
    ]


if __name__ == "__main__":
    from modelpod import Pipeline, Runner

    with Runner(Pipeline([Scale, Linear, Label])) as runner:
        print(runner.predict(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)))
