"""Pipelines: chains of runners, models, predictor classes and functions; themselves models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpod import InvalidInput, ModelError, Pipeline, Runner, TensorSpec

from conftest import load_example

X16 = np.linspace(-1.0, 1.0, 32, dtype=np.float32).reshape(2, 16)


def best_class(probabilities: Any) -> list[int]:
    return [int(i) for i in np.argmax(probabilities, axis=1)]


def count_classes(classes: list[int]) -> dict[str, int]:
    return {"first": classes[0], "n": len(classes)}


def describe(first: int, n: int) -> str:
    return f"{n} rows, first is class {first}"


def test_a_pipeline_chains_a_runner_a_model_and_functions(tmp_path: Path) -> None:
    mlp = Runner(load_example("mlp.py").MLP, data_path=tmp_path)
    pipeline = Pipeline([mlp, best_class, count_classes, describe], data_path=tmp_path)
    with Runner(pipeline) as runner:
        expected = best_class(mlp.predict(x=X16))
        assert runner.predict(x=X16) == f"2 rows, first is class {expected[0]}"  # mapping -> kwargs
        assert runner.predict(X16) == runner.predict(x=X16)
        assert [step.model.model_name for step in pipeline.steps] == [
            "mlp",
            "best_class",
            "count_classes",
            "describe",
        ]
        assert runner.predict_batch([{"x": X16}, {"x": X16[:1]}])[1].startswith("1 rows")
    assert not mlp.loaded  # the pipeline's teardown closed its steps


def test_the_pipeline_has_the_first_steps_inputs_and_the_last_steps_outputs(tmp_path: Path) -> None:
    pipeline = Pipeline([load_example("mlp.py").MLP("1", data_path=tmp_path), best_class], data_path=tmp_path)
    assert pipeline.input_specs() == (TensorSpec("x", "FP32", (-1, 16)),)
    assert pipeline.output_specs() == (TensorSpec("output", "BYTES", (-1,)),)
    assert list(_parameters(pipeline)) == ["x"]
    with pytest.raises(ValueError, match="at least one step"):
        Pipeline([])


def _parameters(pipeline: Pipeline) -> Mapping[str, Any]:
    import inspect

    return inspect.signature(pipeline.signature_target()).parameters


def test_class_steps_keep_their_files_under_the_pipelines_data_path(tmp_path: Path) -> None:
    def label(label: str, probabilities: Mapping[str, float]) -> str:
        return f"{label} ({probabilities[label]:.2f})"

    pipeline = Pipeline([load_example("iris.py").IrisClassifier, label], data_path=tmp_path)
    with Runner(pipeline) as runner:
        assert runner.predict(features=[6.7, 3.0, 5.2, 2.3]).startswith("virginica (")
    assert (tmp_path / "iris" / "1" / "estimator.pkl").is_file()


def test_pipelines_nest_and_take_predictor_classes(tmp_path: Path) -> None:
    sentiment = load_example("cortex_style.py").SentimentPredictor

    def text_of(review: Mapping[str, str]) -> str:
        return f"{review['title']}. {review['body']}"

    def label_of(label: str, **rest: Any) -> str:  # the predictor's answer, a mapping, as keywords
        assert set(rest) == {"score", "matched"}
        return label

    inner = Pipeline([text_of, sentiment], data_path=tmp_path)
    outer = Pipeline([inner, label_of], data_path=tmp_path)
    with Runner(outer) as runner:
        assert runner.predict(review={"title": "Great", "body": "lovely and fast"}) == "positive"
        assert runner.predict(review={"title": "Awful", "body": "slow, broken"}) == "negative"


def test_an_error_in_a_step_names_the_step(tmp_path: Path) -> None:
    def checked(x: float) -> float:
        if x < 0:
            raise InvalidInput("x must not be negative")
        return x

    def invert(x: float) -> float:
        return 1 / x

    pipeline = Pipeline([checked, invert], data_path=tmp_path)
    runner = Runner(pipeline)
    with pytest.raises(
        ModelError, match=r"pipeline step 1 \(invert\): model invert:1 raised ZeroDivisionError"
    ):
        runner.predict(x=0.0)
    assert runner.predict(x=4.0) == 0.25
    with pytest.raises(InvalidInput, match=r"pipeline step 0 \(checked\): x must not be negative"):
        runner.predict(x=-1.0)
    assert runner.predict(x=2.0) == 0.5

    def double(x: float) -> float:
        return 2 * x

    outer = Runner(Pipeline([double, pipeline], data_path=tmp_path))
    with pytest.raises(ModelError) as caught:
        outer.predict(x=0.0)
    assert caught.value.message == (
        "pipeline step 1 (Pipeline): pipeline step 1 (invert): model invert:1 raised ZeroDivisionError"
    )
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert outer.predict(x=1.0) == 0.5


def test_a_step_given_a_wrong_value_names_it(tmp_path: Path) -> None:
    def nothing(x: float) -> None:
        return None

    runner = Runner(Pipeline([nothing, best_class], data_path=tmp_path))
    with pytest.raises(InvalidInput, match=r"pipeline step 1 \(best_class\): input 'probabilities' is None"):
        runner.predict(x=1.0)
