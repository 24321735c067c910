"""A pipeline of served models, without a server: its steps, branches and what flows between them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelpod import InvalidInput, Model, ModelError, Pipeline, Router, Runner, ServedPipeline, TensorSpec
from modelpod.serving.served_pipeline import name_step, parse_pipeline, pipeline_outputs, step_input

from conftest import load_example


class Words(Model):
    def predict(self, text: str) -> list[str]:
        return text.split()


class Pair(Model):
    def predict(self, left: str, right: str, query_params: Mapping[str, str] | None = None) -> str:
        return left + right


class Scores(Model):
    inputs = [TensorSpec("x", "FP32", (-1, 2))]
    outputs = [TensorSpec("score", "FP32", (-1,)), TensorSpec("rank", "INT64", (-1,))]

    def predict(self, x: np.ndarray) -> Any:
        return x.sum(axis=1), x.argmax(axis=1)


class Routes(Router):
    routes = {"a": "words"}


class Review(ServedPipeline):
    name = "review"
    steps = ["words", {"short": "pair", "long": "scores"}, "scores"]


def served(tmp_path: Path) -> dict[str, Model]:
    return {
        "words": Words(data_path=tmp_path),
        "pair": Pair(data_path=tmp_path),
        "scores": Scores(data_path=tmp_path),
        "routes": Routes(data_path=tmp_path),
        "review": Review(data_path=tmp_path),
    }


def test_bind_takes_the_tensors_of_the_first_and_last_steps(tmp_path: Path) -> None:
    review = Review(data_path=tmp_path)
    assert review.input_specs() == review.output_specs() == ()
    review.bind(served(tmp_path))
    assert review.input_specs() == Words(data_path=tmp_path).input_specs()
    assert [spec.name for spec in review.output_specs()] == ["score", "rank"]
    assert review.first_models() == ["words"]
    assert review.branches(1) == {"short": "pair", "long": "scores"}
    assert review.branches(0) is None


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "pipeline 'p' has no steps"),
        (["words", "nope"], r"step 1 names model 'nope', which is not served here \(models: words, pair, "),
        (["words", {"x": "gone"}], "step 1 names model 'gone', which is not served here"),
        (["routes"], "pipeline 'p' step 0 names the router 'routes'; name the models it runs instead"),
        (["review"], "pipeline 'p' step 0 names the pipeline 'review'; name the models it runs instead"),
        (["words", {}], r"step 1 must be a served model's name, or a mapping of branch names to them"),
        ([3], "step 0 must be a served model's name"),
    ],
)
def test_bind_refuses_steps_that_are_not_models(tmp_path: Path, steps: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServedPipeline.of("p", steps)(data_path=tmp_path).bind(served(tmp_path))


def test_default_choose_reads_the_branch_parameter(tmp_path: Path) -> None:
    review = Review(data_path=tmp_path)
    assert review.branch(1, {}, {}) == "pair"  # the first branch without a parameter
    assert review.branch(1, {}, {"branch": "long"}) == "scores"
    with pytest.raises(InvalidInput, match="unknown branch 'huge'; choose one of short, long"):
        review.branch(1, {}, {"branch": "huge"})


def test_a_choose_that_raises_or_names_no_branch_is_a_model_error(tmp_path: Path) -> None:
    class Raises(Review):
        def choose(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
            return str(inputs["missing"])

    class Wrong(Review):
        def choose(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
            return "pair"  # a model's name, not a branch's

    with pytest.raises(ModelError, match=r"^Raises.choose raised KeyError"):
        Raises(data_path=tmp_path).branch(1, {}, {})
    with pytest.raises(ModelError, match="choose returned 'pair', not one of its branches short, long"):
        Wrong(data_path=tmp_path).branch(1, {}, {})


def test_a_pipeline_does_not_predict_on_its_own(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="review is a pipeline of served models"):
        Review(data_path=tmp_path).predict(text="x")


def test_step_input_a_mapping_is_the_keyword_arguments_anything_else_the_one_input(tmp_path: Path) -> None:
    pair, words, scores = Pair(data_path=tmp_path), Words(data_path=tmp_path), Scores(data_path=tmp_path)
    assert step_input({"left": "a", "right": "b"}, pair) == {"left": "a", "right": "b"}
    assert step_input("some text", words) == {"text": "some text"}
    array = np.ones((2, 2), dtype=np.float32)
    assert step_input(array, scores)["x"] is array  # the very object: nothing is copied or encoded
    with pytest.raises(ModelError, match=r"returned a str, but Pair takes left, right: return a mapping"):
        step_input("ab", pair)
    with pytest.raises(ModelError, match="keys are not all strings"):
        step_input({1: "a"}, pair)


def test_name_step_keeps_the_error_type_and_id() -> None:
    error = ModelError("model x raised ValueError", error_id="abc")
    named = name_step(error, "review", 2, "x")
    assert named is error
    assert type(named) is ModelError
    assert str(named) == "pipeline 'review' step 2 (x): model x raised ValueError (error id abc)"


def test_pipeline_outputs_for_tensor_and_keyword_last_steps(tmp_path: Path) -> None:
    scores = Scores(data_path=tmp_path)
    one = pipeline_outputs(scores, [(np.array([1.0]), np.array([0]))])
    assert {name: a.tolist() for name, a in one.items()} == {"score": [1.0], "rank": [0]}
    rows = pipeline_outputs(scores, [(np.array([1.0]), np.array([0])), (np.array([2.0]), np.array([1]))])
    assert {name: a.tolist() for name, a in rows.items()} == {"score": [1.0, 2.0], "rank": [0, 1]}
    keyword = pipeline_outputs(Words(data_path=tmp_path), ["ab", "cd"])
    assert keyword["output"].tolist() == [b"ab", b"cd"]


def test_parse_pipeline_declares_steps_and_branches(tmp_path: Path) -> None:
    name, pipeline = parse_pipeline("flow=words,pair|scores,scores")
    assert name == "flow"
    assert pipeline.steps == ("words", {"pair": "pair", "scores": "scores"}, "scores")
    instance = pipeline(data_path=tmp_path)
    assert instance.model_name == "flow"
    assert instance.branch(1, {}, {"branch": "scores"}) == "scores"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flow", "expected NAME=MODEL,MODEL,..."),
        ("=a,b", "expected NAME=MODEL,MODEL,..."),
        ("flow=", "expected NAME=MODEL,MODEL,..."),
        ("flow=a,,b", "invalid model name ''"),
        ("flow=a|../b", r"invalid model name '\.\./b'"),
        ("bad name=a", "invalid model name 'bad name'"),
    ],
)
def test_parse_pipeline_refuses_malformed_declarations(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pipeline(text)


def test_the_example_steps_also_chain_in_process(tmp_path: Path) -> None:
    example = load_example("pipeline.py")
    flowers = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    with Runner(Pipeline([example.Scale, example.Tree, example.Label], data_path=tmp_path)) as runner:
        assert runner.predict(flowers)["label"].tolist() == ["setosa", "virginica"]
