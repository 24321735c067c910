"""Running models on Open Inference Protocol tensors, with a real Runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from modelpod import InvalidInput, Model, ModelError, TensorSpec
from modelpod.runtime.runner import Runner

from tensor_runs import run_tensors


def strings(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=np.object_)
    array[:] = items
    return array


class Scale(Model):
    """A tensor model: gets the batch whole, answers two outputs as a tuple."""

    name = "scale"
    inputs = (TensorSpec("x", "FP32", (-1, 2)), TensorSpec("factor", "FP32", (-1,)))
    outputs = (TensorSpec("y", "FP32", (-1, 2)), TensorSpec("total", "FP64", (-1,)))
    calls: ClassVar[list[dict[str, Any]]] = []

    def predict(self, x: np.ndarray, factor: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        Scale.calls.append({"x": x, "factor": factor})
        y = x * (factor[:, None] if factor is not None else 1)
        return y, y.sum(axis=1, dtype=np.float64)


class Words(Model):
    """A keyword model: one call per row, typed by its hints."""

    name = "words"
    calls: ClassVar[list[dict[str, Any]]] = []

    def predict(self, text: str, raw: bytes, count: int, scores: list[float]) -> dict[str, Any]:
        Words.calls.append({"text": text, "raw": raw, "count": count, "scores": scores})
        return {"length": len(text) * count, "upper": text.upper(), "best": max(scores)}


class Shapes(Model):
    """A tensor model whose answer takes the form `mode` asks for."""

    name = "shapes"
    inputs = (TensorSpec("mode", "BYTES", (-1,)),)
    outputs = (TensorSpec("first", "INT64", (-1,)), TensorSpec("second", "INT64", (-1,)))

    def predict(self, mode: np.ndarray) -> Any:
        answers = {
            b"array": np.array([1, 2]),
            b"text": "plain",
            b"mapping": {"a": [1], 7: np.array([2.5])},
            b"tuple": (np.array([1]),),
            b"too many": (1, 2, 3),
        }
        return answers[mode[0]]


class Mixed(Model):
    """Rows whose results cannot stack into one numeric tensor."""

    name = "mixed"

    def predict(self, n: int) -> Any:
        return [{"n": n}, b"raw\xff", (n, "t")] if n else "only text"


class Ragged(Model):
    name = "ragged"

    def predict(self, n: int) -> list[int]:
        return list(range(n))


class Untyped(Model):
    name = "untyped"

    def predict(self, value: Any, row: np.ndarray) -> Any:
        return {"value": value, "kind": type(value).__name__, "row_kind": type(row).__name__}


@pytest.fixture
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    Scale.calls.clear()
    Words.calls.clear()
    with Runner(request.param, data_path=tmp_path, device="cpu", warmup=False) as loaded:
        yield loaded


@pytest.mark.parametrize("runner", [Scale], indirect=True)
def test_tensor_model_gets_the_batch_whole(runner: Runner) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    outputs = run_tensors(runner, {"x": x, "factor": np.array([1, 2, 3], dtype=np.float32)})
    assert len(Scale.calls) == 1
    np.testing.assert_array_equal(Scale.calls[0]["x"], x)
    assert list(outputs) == ["y", "total"]
    np.testing.assert_array_equal(outputs["y"], [[0, 1], [4, 6], [12, 15]])
    assert outputs["total"].dtype == np.float64
    np.testing.assert_array_equal(outputs["total"], [1, 10, 27])


@pytest.mark.parametrize("runner", [Scale], indirect=True)
def test_tensor_model_refuses_undeclared_inputs(runner: Runner) -> None:
    with pytest.raises(InvalidInput, match=r"unknown input 'z'; the model takes \['factor', 'x'\]"):
        run_tensors(runner, {"x": np.zeros((1, 2), np.float32), "z": np.zeros(1, np.float32)})
    assert Scale.calls == []


@pytest.mark.parametrize("runner", [Scale], indirect=True)
def test_tensor_model_refuses_other_datatypes(runner: Runner) -> None:
    with pytest.raises(InvalidInput, match="input 'x' is FP64, but the model declares FP32"):
        run_tensors(runner, {"x": np.zeros((1, 2))})
    with pytest.raises(InvalidInput, match="input 'factor' is BYTES, but the model declares FP32"):
        run_tensors(runner, {"x": np.zeros((1, 2), np.float32), "factor": strings(b"2")})
    assert Scale.calls == []


@pytest.mark.parametrize("runner", [Words], indirect=True)
def test_keyword_model_gets_one_call_per_row(runner: Runner) -> None:
    outputs = run_tensors(
        runner,
        {
            "text": strings(b"ab", "\u00e9t\u00e9".encode()),
            "raw": strings(b"\xff\x00", b"plain"),
            "count": np.array([2, 3], dtype=np.int64),
            "scores": np.array([[0.5, 1.5], [2.0, -1.0]]),
        },
    )
    assert Words.calls == [
        {"text": "ab", "raw": b"\xff\x00", "count": 2, "scores": [0.5, 1.5]},
        {"text": "\u00e9t\u00e9", "raw": b"plain", "count": 3, "scores": [2.0, -1.0]},
    ]
    first = Words.calls[0]
    assert (type(first["text"]), type(first["raw"]), type(first["count"])) == (str, bytes, int)
    assert type(first["scores"][0]) is float
    # a dict per row: one output per key, rows stacked
    assert list(outputs) == ["length", "upper", "best"]
    np.testing.assert_array_equal(outputs["length"], [4, 9])
    assert outputs["upper"].dtype == np.object_
    assert outputs["upper"].tolist() == [b"AB", "\u00c9T\u00c9".encode()]
    np.testing.assert_array_equal(outputs["best"], [1.5, 2.0])


@pytest.mark.parametrize("runner", [Untyped], indirect=True)
def test_rows_without_hints(runner: Runner) -> None:
    outputs = run_tensors(
        runner, {"value": strings(b"text", b"\xff"), "row": np.array([[1, 2], [3, 4]], dtype=np.int32)}
    )
    # BYTES become str where they are UTF-8 and no hint asks for bytes; an ndarray hint keeps the row
    assert outputs["value"].tolist() == [b"text", b"\xff"]
    assert outputs["kind"].tolist() == [b"str", b"bytes"]
    assert outputs["row_kind"].tolist() == [b"ndarray", b"ndarray"]


@pytest.mark.parametrize("runner", [Ragged], indirect=True)
def test_ragged_results_become_json_documents(runner: Runner) -> None:
    outputs = run_tensors(runner, {"n": np.array([0, 2, 3])})
    assert list(outputs) == ["output"]
    assert outputs["output"].dtype == np.object_
    assert [json.loads(row) for row in outputs["output"]] == [[], [0, 1], [0, 1, 2]]


@pytest.mark.parametrize("runner", [Ragged], indirect=True)
def test_even_results_stack_into_one_tensor(runner: Runner) -> None:
    outputs = run_tensors(runner, {"n": np.array([2, 2])})
    assert outputs["output"].dtype.kind == "i"
    np.testing.assert_array_equal(outputs["output"], [[0, 1], [0, 1]])


@pytest.mark.parametrize("runner", [Words], indirect=True)
def test_keyword_model_refuses_a_0d_input(runner: Runner) -> None:
    with pytest.raises(InvalidInput, match=r"input 'count' has shape \[\]: give it a batch dimension"):
        run_tensors(runner, {"text": strings(b"a"), "count": np.array(3)})
    assert Words.calls == []


@pytest.mark.parametrize("runner", [Words], indirect=True)
def test_keyword_model_refuses_mismatched_rows(runner: Runner) -> None:
    with pytest.raises(InvalidInput, match=r"same first dimension .*\{'text': 2, 'count': 3\}"):
        run_tensors(runner, {"text": strings(b"a", b"b"), "count": np.array([1, 2, 3])})
    with pytest.raises(InvalidInput, match="the request has no inputs"):
        run_tensors(runner, {})
    assert Words.calls == []


@pytest.mark.parametrize("runner", [Shapes], indirect=True)
def test_tensor_model_answers_in_any_form(runner: Runner) -> None:
    def run(mode: bytes) -> dict[str, Any]:
        return {k: v.tolist() for k, v in run_tensors(runner, {"mode": strings(mode)}).items()}

    assert run(b"array") == {"first": [1, 2]}  # a single answer is the first declared output
    assert run(b"text") == {"first": [b"plain"]}
    assert run(b"mapping") == {"a": [1], "7": [2.5]}  # a mapping names its own outputs
    assert run(b"tuple") == {"first": [1]}
    with pytest.raises(ModelError, match="the model returned 3 outputs but declares 2"):
        run(b"too many")


@pytest.mark.parametrize("runner", [Mixed], indirect=True)
def test_mixed_results_become_json_documents(runner: Runner) -> None:
    outputs = run_tensors(runner, {"n": np.array([3, 0])})
    assert [json.loads(row) for row in outputs["output"]] == [[{"n": 3}, "raw\ufffd", [3, "t"]], "only text"]


class HalfPrecision(Model):
    """A torch model computing under CPU mixed precision, which answers bfloat16 tensors."""

    name = "half"
    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def predict(self, x: Any) -> Any:
        torch = pytest.importorskip("torch")
        return torch.as_tensor(x).to(torch.bfloat16) * 2


def test_bfloat16_answers_become_float32_tensors(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    with Runner(HalfPrecision, data_path=tmp_path, device="cpu", warmup=False, convert="torch") as runner:
        outputs = run_tensors(runner, {"x": np.array([[1.0, 2.5]], dtype=np.float32)})
    assert outputs["y"].dtype == np.float32
    assert outputs["y"].tolist() == [[2.0, 5.0]]
