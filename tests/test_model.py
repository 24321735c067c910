"""The Model contract and its adapters, with real models: iris (scikit-learn), an MLP (numpy),
a torch module, a Cortex-style predictor class and a plain function."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from modelpod import InvalidInput, Model, ModelError, Response, Runner, TensorSpec, as_model
from modelpod.runtime.adapters import FunctionModel, PredictorAdapter
from modelpod.runtime.model import check_name, derive_input_specs

from conftest import load_example

# -- initialize, model_dir, model_info, config ---------------------------------------------------


def test_initialize_creates_the_folder_and_persists_the_config(tmp_path: Path) -> None:
    mlp = load_example("mlp.py").MLP("3", data_path=tmp_path)
    assert mlp.model_info == {}
    assert not (tmp_path / "mlp").exists()  # nothing written before initialize

    info = mlp.initialize(hidden=8, seed=5)

    folder = tmp_path / "mlp" / "3"
    assert folder.is_dir()
    assert mlp.model_dir == folder
    stored = json.loads((folder / "model_info.json").read_text())
    assert stored == info
    assert stored["config"] == {"hidden": 8, "seed": 5}
    assert stored["name"] == "mlp"
    assert stored["version"] == "3"
    assert stored["class"] == f"{type(mlp).__module__}:MLP"
    assert mlp.config == {"hidden": 8, "seed": 5}
    mlp.setup()
    assert mlp.w1.shape == (16, 8)  # setup used the config


def test_a_recreated_instance_finds_its_info_and_folder_again(tmp_path: Path) -> None:
    mlp_class = load_example("mlp.py").MLP
    first = mlp_class("2", data_path=tmp_path)
    first.initialize(hidden=4)
    (first.model_dir / "weights.bin").write_bytes(b"\x01\x02")
    created = first.model_info["created_at"]

    again = mlp_class("2", data_path=tmp_path)
    assert again.config == {"hidden": 4}
    assert again.model_dir == first.model_dir
    assert (again.model_dir / "weights.bin").read_bytes() == b"\x01\x02"
    assert again.model_info == first.model_info

    time.sleep(0.01)
    again.initialize(hidden=6)
    assert again.model_info["created_at"] == created  # the instance is the same one, updated
    assert again.model_info["updated_at"] > created
    assert mlp_class("2", data_path=tmp_path).config == {"hidden": 6}

    other = mlp_class("9", data_path=tmp_path)  # another version is another instance
    assert other.model_info == {}
    assert other.config == {}


def test_keyword_config_overrides_what_was_stored(tmp_path: Path) -> None:
    mlp_class = load_example("mlp.py").MLP
    mlp_class("1", data_path=tmp_path).initialize(hidden=4, seed=1)
    assert mlp_class("1", data_path=tmp_path, seed=7).config == {"hidden": 4, "seed": 7}


def test_initialize_refuses_values_json_cannot_hold(tmp_path: Path) -> None:
    mlp = load_example("mlp.py").MLP("1", data_path=tmp_path)
    with pytest.raises(InvalidInput, match="JSON"):
        mlp.initialize(weights=np.zeros(3))
    assert mlp.model_info == {}
    assert mlp.config == {}


# -- train and log ------------------------------------------------------------------------------


def test_log_returns_what_train_reported_also_after_recreation(tmp_path: Path) -> None:
    iris_class = load_example("iris.py").IrisClassifier
    iris = iris_class("1", data_path=tmp_path)
    iris.initialize(folds=3, C=0.5)
    before = time.time()
    summary = iris.train()
    log = iris.log()

    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert {entry["total"] for entry in log} == {4}
    assert [entry["metrics"]["fold"] for entry in log[:3]] == [1, 2, 3]
    assert all(0.8 < entry["metrics"]["accuracy"] <= 1.0 for entry in log[:3])
    assert log[-1]["message"] == "fitted on all samples and saved"
    assert log[-1]["metrics"]["cv_accuracy"] == pytest.approx(summary["cv_accuracy"])
    assert "message" not in log[0]
    times = [entry["time"] for entry in log]
    assert times == sorted(times)
    assert before <= times[0] <= times[-1] <= time.time()

    again = iris_class("1", data_path=tmp_path)
    assert again.log() == log
    again.report(step=5, total=5, loss=np.float32(0.25), message="again")
    assert iris_class("1", data_path=tmp_path).log()[-1] == {
        **again.log()[-1],
        "step": 5,
        "metrics": {"loss": 0.25},  # a numpy scalar became a plain number
    }
    assert iris_class("2", data_path=tmp_path).log() == []  # per version


def test_runner_train_and_log_through_the_runner(tmp_path: Path) -> None:
    with Runner(load_example("iris.py").IrisClassifier, data_path=tmp_path) as runner:
        trained_in_setup = len(runner.log())  # an untrained iris trains once in setup
        assert trained_in_setup == 6
        runner.train(folds=2)
        assert [entry["step"] for entry in runner.log()[trained_in_setup:]] == [1, 2, 3]
        assert runner.predict(features=[6.7, 3.0, 5.2, 2.3])["label"] == "virginica"
    with pytest.raises(InvalidInput, match="no train"), Runner(load_example("functions.py").add) as runner:
        runner.train()


# -- teardown -----------------------------------------------------------------------------------


def test_close_tears_the_model_down_and_the_next_request_loads_it_again(tmp_path: Path) -> None:
    runner = Runner(load_example("mlp.py").MLP, data_path=tmp_path)
    x = np.ones((1, 16), dtype=np.float32)
    first = runner.predict(x=x)
    assert runner.loaded
    runner.close()
    assert not runner.loaded
    assert not hasattr(runner.model, "w1")  # MLP.teardown dropped its weights
    np.testing.assert_array_equal(runner.predict(x=x), first)
    runner.close()


def test_predictor_adapter_teardown_closes_the_predictor(tmp_path: Path) -> None:
    closed: list[str] = []

    class Closing:
        def __init__(self, config: Mapping[str, Any]) -> None:
            self.config = config

        def predict(self, payload: Any) -> Any:
            return payload

        def close(self) -> None:
            closed.append("closed")

    with Runner(Closing, data_path=tmp_path) as runner:
        assert runner.predict(payload=1) == 1
        assert closed == []
    assert closed == ["closed"]
    assert isinstance(runner.model, PredictorAdapter)
    assert runner.model.predictor is None


# -- binary_data --------------------------------------------------------------------------------


class Reverse(Model):
    def predict(self, binary_data: bytes) -> bytes:
        return binary_data[::-1]


def test_binary_data_is_raw_bytes(tmp_path: Path) -> None:
    with Runner(Reverse, data_path=tmp_path) as runner:
        assert runner.predict(binary_data=b"\x00abc\xff") == b"\xffcba\x00"
        assert runner.model.input_specs() == (TensorSpec("binary_data", "BYTES", (-1,)),)
        with pytest.raises(InvalidInput, match="'binary_data' is reserved for raw bytes, got str"):
            runner.predict(binary_data="abc")
        assert runner.predict(binary_data=bytearray(b"ab")) == bytearray(b"ba")


def test_binary_data_is_the_payload_of_a_predictor_class(tmp_path: Path) -> None:
    class Echo:
        def __init__(self, config: Mapping[str, Any]) -> None:
            pass

        def predict(self, payload: Any, query_params: Mapping[str, str] | None = None) -> Any:
            return {"type": type(payload).__name__, "query": dict(query_params or {})}

    with Runner(Echo, data_path=tmp_path) as runner:
        assert runner.predict(binary_data=b"\x01")["type"] == "bytes"
        assert runner.predict(payload={"a": 1}, query_params={"q": "1"}) == {
            "type": "dict",
            "query": {"q": "1"},
        }
        assert runner.predict(a=1)["type"] == "dict"  # fields without a payload are the payload


# -- adapters -----------------------------------------------------------------------------------


def test_cortex_predictor_through_the_adapter(tmp_path: Path) -> None:
    predictor_class = load_example("cortex_style.py").SentimentPredictor
    model = as_model(predictor_class, data_path=tmp_path)
    assert isinstance(model, PredictorAdapter)
    assert model.model_name == "SentimentPredictor"
    assert model.accepts_query_params()
    assert model.input_specs() == (TensorSpec("payload", "BYTES", (-1,)),)
    model.initialize(threshold=0.9, negative=["meh"])  # __init__(config) receives it

    with Runner(model) as runner:
        assert runner.model.predictor.threshold == 0.9  # type: ignore[attr-defined]
        assert runner.predict(payload={"text": "meh"})["label"] == "negative"
        mixed = {"text": "great but slow"}  # score 0: neutral at any threshold
        assert runner.predict(payload=mixed)["label"] == "neutral"
        assert runner.predict(payload={"text": "great"}, query_params={"threshold": "0.1"})["label"] == (
            "positive"
        )
        answer = runner.predict(payload={"text": 3})
        assert isinstance(answer, Response)
        assert answer.status == 400
        assert "text" in answer.body["error"]
        assert runner.predict(payload="lovely")["label"] == "positive"  # works right after


def test_plain_function_through_the_adapter(tmp_path: Path) -> None:
    add = load_example("functions.py").add
    model = as_model(add, "4", data_path=tmp_path)
    assert isinstance(model, FunctionModel)
    assert (model.model_name, model.version) == ("add", "4")
    assert model.input_specs() == (TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "FP64", (-1,)))
    assert not model.accepts_query_params()
    assert model.initialize(unit="cm")["class"] == f"{add.__module__}:add"
    with Runner(model) as runner:
        assert runner.predict(a=2.0, b=0.5) == 2.5
        with pytest.raises(InvalidInput, match="missing a required argument: 'b'"):
            runner.predict(a=1.0)
        with pytest.raises(InvalidInput, match="unexpected keyword argument 'c'"):
            runner.predict(a=1.0, b=2.0, c=3.0)
        assert runner.predict(1.0, b=2.0) == 3.0  # one positional argument is the first field
    assert as_model(lambda x: x, data_path=tmp_path).model_name == "lambda"


def test_as_model_returns_instances_as_they_are_and_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    mlp = load_example("mlp.py").MLP("1", data_path=tmp_path)
    assert as_model(mlp) is mlp
    created = as_model(load_example("mlp.py").MLP, "5", data_path=tmp_path)
    assert (type(created).__name__, created.version) == ("MLP", "5")

    class NotAModel:
        def run(self) -> None: ...

    with pytest.raises(TypeError, match="NotAModel is not a model"):
        as_model(NotAModel)
    with pytest.raises(TypeError, match="cannot serve 42"):
        as_model(42)


# -- tensor specs -------------------------------------------------------------------------------


def test_declared_tensor_specs(tmp_path: Path) -> None:
    mlp = load_example("mlp.py").MLP("1", data_path=tmp_path)
    assert mlp.is_tensor_model()
    assert mlp.input_specs() == (TensorSpec("x", "FP32", (-1, 16)),)
    assert mlp.output_specs() == (TensorSpec("y", "FP32", (-1, 4)),)

    class AsDicts(Model):
        inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [
            {"name": "ids", "datatype": "INT64", "shape": [-1, 3]}
        ]
        outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [{"name": "n", "datatype": "INT32"}]

        def predict(self, ids: Any) -> Any:
            return ids.sum(axis=1)

    model = AsDicts(data_path=tmp_path)
    assert model.input_specs() == (TensorSpec("ids", "INT64", (-1, 3)),)
    assert model.output_specs() == (TensorSpec("n", "INT32", (-1,)),)
    with Runner(model) as runner:
        result = runner.predict(ids=[[1, 2, 3]])  # the runner made it an INT64 array
        np.testing.assert_array_equal(result, [6])


def test_specs_derived_from_type_hints(tmp_path: Path) -> None:
    def scored(  # type: ignore[no-untyped-def]
        text: str, count: int, weight: float, flag: bool, values: list[float], raw: bytes, other
    ):
        return None

    assert derive_input_specs(scored) == (
        TensorSpec("text", "BYTES", (-1,)),
        TensorSpec("count", "INT64", (-1,)),
        TensorSpec("weight", "FP64", (-1,)),
        TensorSpec("flag", "BOOL", (-1,)),
        TensorSpec("values", "FP64", (-1, -1)),
        TensorSpec("raw", "BYTES", (-1,)),
        TensorSpec("other", "BYTES", (-1,)),
    )
    model = as_model(scored, data_path=tmp_path)
    assert not model.is_tensor_model()
    assert [spec.name for spec in model.input_specs()] == [
        "text",
        "count",
        "weight",
        "flag",
        "values",
        "raw",
        "other",
    ]
    assert model.output_specs() == (TensorSpec("output", "BYTES", (-1,)),)
    iris = load_example("iris.py").IrisClassifier("1", data_path=tmp_path)
    assert iris.input_specs() == (TensorSpec("features", "FP64", (-1, -1)),)


# -- what a model returns and raises --------------------------------------------------------------


class Picky(Model):
    """Answers its own status, refuses bad input itself, and crashes on request."""

    def predict(self, n: int) -> Any:
        if n < 0:
            raise InvalidInput(f"n must be >= 0, got {n}")
        if n == 0:
            return Response(body={"accepted": True}, status=202, headers={"x-picky": "yes"})
        if n == 13:
            raise KeyError("secret-detail-13")
        return n * 2


def test_a_model_may_answer_with_its_own_response(tmp_path: Path) -> None:
    with Runner(Picky, data_path=tmp_path) as runner:
        answer = runner.predict(n=0)
        assert answer == Response(body={"accepted": True}, status=202, headers={"x-picky": "yes"})
        assert runner.predict(n=2) == 4


def test_a_model_may_raise_invalid_input(tmp_path: Path) -> None:
    with Runner(Picky, data_path=tmp_path) as runner:
        with pytest.raises(InvalidInput, match=r"n must be >= 0, got -1") as caught:
            runner.predict(n=-1)
        assert not isinstance(caught.value, ModelError)
        assert runner.predict(n=3) == 6
        assert runner.stats().failed == 1


def test_a_models_own_exception_becomes_a_model_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Runner(Picky, data_path=tmp_path) as runner:
        with pytest.raises(ModelError) as caught:
            runner.predict(n=13)
        error = caught.value
        assert error.message == "model Picky:1 raised KeyError"
        assert "secret-detail-13" not in str(error)
        assert error.error_id in str(error)
        assert isinstance(error.__cause__, KeyError)
        assert error.__cause__.args == ("secret-detail-13",)
        assert error.error_id in caplog.text
        assert "secret-detail-13" in caplog.text  # the details are in the log, with the id
        assert runner.predict(n=1) == 2


# -- names and versions ---------------------------------------------------------------------------


BAD_NAMES = ["../x", "..", "a/../b", "a/b", "a\\b", "", ".hidden", "-x", "a..b", "x\n", "a b", "é", "a" * 129]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_invalid_names_and_versions_are_refused(tmp_path: Path, bad: str) -> None:
    data = tmp_path / "data"
    mlp_class = load_example("mlp.py").MLP
    if bad:  # an empty name means the default name
        with pytest.raises(InvalidInput, match="invalid model name"):
            mlp_class("1", name=bad, data_path=data)
    with pytest.raises(InvalidInput, match="invalid version"):
        mlp_class(bad, data_path=data)
    with pytest.raises(InvalidInput, match="invalid version"):
        Runner(load_example("functions.py").add, version=bad, data_path=data)
    assert not data.exists()  # nothing was created, inside the data path or beside it
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("good", ["1", "v2.0", "my_model-3", "A" * 128, "2024.01.31"])
def test_valid_names_are_accepted(tmp_path: Path, good: str) -> None:
    assert check_name("version", good) == good
    model = load_example("mlp.py").MLP(good, name=good, data_path=tmp_path)
    assert model.model_dir == tmp_path / good / good
