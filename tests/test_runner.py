"""The Runner with real models: devices, processors, input preparation, warm-up, torch modes,
batches, statistics, checks, custom operators, and typed errors it recovers from."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpod import (
    InvalidInput,
    Model,
    ModelError,
    ModelLoadError,
    ModelpodError,
    ProcessorError,
    Runner,
    TensorSpec,
)
from modelpod.runtime.checks import NanReport
from modelpod.runtime.devices import select_device
from modelpod.runtime.leaks import LeakReport
from modelpod.runtime.profiling import ProfileReport

from conftest import load_example

X16 = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(1, 16)


@pytest.fixture
def mlp(tmp_path: Path) -> Iterator[Runner]:
    with Runner(load_example("mlp.py").MLP, data_path=tmp_path, device="cpu") as runner:
        yield runner


@pytest.fixture
def tiny_torch(tmp_path: Path) -> Iterator[Runner]:
    pytest.importorskip("torch")
    with Runner(load_example("torch_module.py").TinyTorch, data_path=tmp_path, device="cpu") as runner:
        yield runner


class Recorder(Model):
    """Doubles `x`; records every batch size it was given and every call."""

    example: ClassVar[Mapping[str, Any] | None] = {"x": 0}

    def setup(self) -> None:
        self.sizes: list[int] = []
        self.calls = 0
        self.setups = getattr(self, "setups", 0) + 1

    def predict(self, x: int) -> int:
        self.calls += 1
        if x == 13:
            raise RuntimeError("thirteen is unlucky")
        return x * 2

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        self.sizes.append(len(items))
        if any(item["x"] == 13 for item in items):
            raise RuntimeError("a batch with thirteen")
        return [item["x"] * 2 for item in items]


# -- devices --------------------------------------------------------------------------------------


def test_the_runner_sets_the_models_device(tmp_path: Path) -> None:
    runner = Runner(load_example("mlp.py").MLP, data_path=tmp_path)
    runner.load()
    assert runner.model.device == select_device(None)  # auto-selection: nothing requested
    with Runner(load_example("mlp.py").MLP, data_path=tmp_path, device="CPU ") as explicit:
        assert explicit.model.device == "cpu"


def test_the_model_sees_its_device_in_setup(tiny_torch: Runner) -> None:
    module = tiny_torch.model.module  # type: ignore[attr-defined]
    assert {str(p.device) for p in module.parameters()} == {"cpu"}


@pytest.mark.parametrize(("device", "says"), [("tpu", "unknown device 'tpu'"), ("cuda:99", "'cuda:99'")])
def test_a_bad_explicit_device_is_a_clear_load_error(tmp_path: Path, device: str, says: str) -> None:
    pytest.importorskip("torch")
    runner = Runner(load_example("functions.py").add, data_path=tmp_path, device=device)
    with pytest.raises(ModelLoadError, match=says) as caught:
        runner.predict(a=1.0, b=2.0)
    assert "add:1" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
    assert not runner.loaded


# -- processors -------------------------------------------------------------------------------------


def test_processors_run_by_priority_then_registration_order(tmp_path: Path) -> None:
    order: list[str] = []

    def pre(label: str) -> Any:
        def step(inputs: dict[str, Any]) -> dict[str, Any]:
            order.append(label)
            return {**inputs, "a": inputs["a"] * 10 + len(order)}

        return step

    def post(label: str) -> Any:
        def step(output: Any) -> Any:
            order.append(label)
            return f"{output}|{label}"

        return step

    runner = Runner(load_example("functions.py").add, data_path=tmp_path, warmup=False)
    runner.register_preprocessor(pre("p5"), priority=5)
    runner.register_preprocessor(pre("p0-first"))
    runner.register_preprocessor(pre("p-1"), priority=-1)
    runner.register_preprocessor(pre("p0-second"), priority=0)
    runner.register_postprocessor(post("q1"), priority=1)
    runner.register_postprocessor(post("q0"))
    result = runner.predict(a=0, b=0)
    assert order == ["p-1", "p0-first", "p0-second", "p5", "q0", "q1"]
    assert result == "1234|q0|q1"  # ((((0*10+1)*10+2)*10+3)*10+4)

    order.clear()
    results = runner.predict_batch([{"a": 0, "b": 1}, {"a": 0, "b": 2}])
    assert order == ["p-1", "p0-first", "p0-second", "p5"] * 2 + ["q0", "q1"] * 2  # per item
    assert results == ["1235|q0|q1", "5680|q0|q1"]  # the second item's a: 5678


def test_a_failing_processor_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def fussy(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["a"] < 0:
            raise ZeroDivisionError("cannot take a negative a")
        return inputs

    runner = Runner(load_example("functions.py").add, data_path=tmp_path)
    runner.register_preprocessor(fussy, name="fussy-pre")
    with pytest.raises(ProcessorError, match="preprocessor 'fussy-pre' raised ZeroDivisionError") as caught:
        runner.predict(a=-1.0, b=0.0)
    error = caught.value
    assert error.processor == "fussy-pre"
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert error.error_id in caplog.text
    assert "cannot take a negative a" in caplog.text
    assert "negative" not in error.message
    assert runner.predict(a=1.0, b=2.0) == 3.0


def test_a_failing_postprocessor_is_named_by_its_qualified_name(tmp_path: Path) -> None:
    def explode_on_big(output: float) -> float:
        if output > 100:
            raise OverflowError("too big")
        return output

    runner = Runner(load_example("functions.py").add, data_path=tmp_path)
    runner.register_postprocessor(explode_on_big)
    with pytest.raises(ProcessorError, match=r"postprocessor '.*explode_on_big' raised OverflowError"):
        runner.predict(a=100.0, b=1.0)
    assert runner.predict(a=1.0, b=1.0) == 2.0


def test_invalid_input_from_a_processor_stays_invalid_input(tmp_path: Path) -> None:
    def needs_positive(inputs: dict[str, Any]) -> dict[str, Any]:
        if inputs["a"] <= 0:
            raise InvalidInput("a must be positive")
        return inputs

    runner = Runner(load_example("functions.py").add, data_path=tmp_path)
    runner.register_preprocessor(needs_positive, name="positive-a")
    with pytest.raises(InvalidInput, match="preprocessor 'positive-a': a must be positive") as caught:
        runner.predict(a=0.0, b=1.0)
    assert not isinstance(caught.value, ModelError)
    assert runner.predict(a=2.0, b=1.0) == 3.0


def test_a_preprocessor_that_returns_nothing_is_named(tmp_path: Path) -> None:
    def forgot_to_return(inputs: dict[str, Any]) -> Any:
        if inputs["a"] == 0:
            return None
        return inputs

    runner = Runner(load_example("functions.py").add, data_path=tmp_path)
    runner.register_preprocessor(forgot_to_return, name="forgetful")
    with pytest.raises(ProcessorError, match="preprocessor 'forgetful' returned NoneType"):
        runner.predict(a=0.0, b=1.0)
    assert runner.predict(a=1.0, b=1.0) == 2.0


# -- input preparation --------------------------------------------------------------------------------


def test_none_is_rejected_with_a_clear_error(mlp: Runner) -> None:
    with pytest.raises(InvalidInput, match="input 'x' is None"):
        mlp.predict(None)
    assert mlp.predict(X16).shape == (1, 4)
    with pytest.raises(InvalidInput, match="input 'x' is None"):
        mlp.predict(x=None)
    assert mlp.predict(x=X16).shape == (1, 4)
    with pytest.raises(
        InvalidInput, match=r"item 1: expected a mapping of input names to values, got NoneType"
    ):
        mlp.predict_batch([{"x": X16}, None])  # type: ignore[list-item]
    assert len(mlp.predict_batch([{"x": X16}])) == 1
    with pytest.raises(InvalidInput, match="predict_batch needs a list of requests, got NoneType"):
        mlp.predict_batch(None)  # type: ignore[arg-type]
    stats = mlp.stats()  # the runner kept counting: each item of a batch is a request
    assert (stats.total, stats.ok, stats.failed) == (7, 3, 4)


def test_lists_and_tuples_are_accepted(tmp_path: Path) -> None:
    def kinds(values: Any, pair: Any) -> tuple[str, str]:
        return type(values).__name__, type(pair).__name__

    runner = Runner(kinds, data_path=tmp_path)
    assert runner.predict(values=[1, 2], pair=(3, 4)) == ("list", "list")
    numpy_runner = Runner(kinds, data_path=tmp_path, convert="numpy")
    assert numpy_runner.predict(values=[1, 2], pair=(3, 4)) == ("ndarray", "ndarray")


def test_convert_to_numpy(tmp_path: Path) -> None:
    def describe(x: Any) -> tuple[str, tuple[int, ...], str]:
        return type(x).__name__, x.shape, str(x.dtype)

    runner = Runner(describe, data_path=tmp_path, convert="numpy")
    assert runner.predict(x=[[1.0, 2.0], [3.0, 4.0]]) == ("ndarray", (2, 2), "float64")
    with pytest.raises(InvalidInput, match="input 'x' is not a regular array"):
        runner.predict(x=[[1.0, 2.0], [3.0]])
    assert runner.predict(x=(1, 2, 3)) == ("ndarray", (3,), "int64")


def test_convert_to_torch_on_the_device(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    def describe(x: Any, words: Any) -> tuple[str, str, str, Any]:
        return type(x).__name__, str(x.device), str(x.dtype), words

    runner = Runner(describe, data_path=tmp_path, convert="torch", device="cpu")
    assert runner.predict(x=[[1.0, 2.0]], words=["a", "b"]) == ("Tensor", "cpu", "torch.float64", ["a", "b"])
    assert runner.predict(x=np.ones(3, dtype=np.float32), words=["w"]) == (
        "Tensor",
        "cpu",
        "torch.float32",
        ["w"],
    )
    assert runner.predict(x=torch.zeros(2, dtype=torch.int32), words=["c"])[2] == "torch.int32"
    with pytest.raises(ValueError, match="convert must be one of"):
        Runner(describe, data_path=tmp_path, convert="jax")


def test_add_batch_dim_for_tensor_models(tmp_path: Path) -> None:
    mlp_class = load_example("mlp.py").MLP
    with Runner(mlp_class, data_path=tmp_path, add_batch_dim=True) as runner:
        row = X16[0]
        single = runner.predict(x=row)  # (16,) -> (1, 16) -> model -> (1, 4) -> (4,)
        assert single.shape == (4,)
        batched = runner.predict(x=np.stack([row, -row]))
        assert batched.shape == (2, 4)
        np.testing.assert_allclose(batched[0], single, rtol=1e-6)
        as_list = runner.predict(x=row.tolist())
        np.testing.assert_allclose(as_list, single, rtol=1e-6)
        results = runner.predict_batch([{"x": row}, {"x": np.stack([row, row])}])
        assert [r.shape for r in results] == [(4,), (2, 4)]
    with pytest.raises(ValueError, match="add_batch_dim needs a tensor model"):
        Runner(load_example("functions.py").add, data_path=tmp_path, add_batch_dim=True)


def test_shapes_are_checked_for_tensor_models(mlp: Runner) -> None:
    with pytest.raises(InvalidInput, match=r"input 'x' has shape \[1, 7\], expected \[-1, 16\]"):
        mlp.predict(x=np.zeros((1, 7), dtype=np.float32))
    with pytest.raises(InvalidInput, match=r"item 2: input 'x' has shape \[16\], expected \[-1, 16\]"):
        mlp.predict_batch([{"x": X16}, {"x": X16}, {"x": X16[0]}])
    with pytest.raises(InvalidInput, match="input 'x' is not a FP32 array"):
        mlp.predict(x=[["a"] * 16])
    assert mlp.predict(x=X16).shape == (1, 4)


# -- warm-up and loading ------------------------------------------------------------------------------


def test_warm_up_runs_the_example_before_the_first_request(tmp_path: Path) -> None:
    runner = Runner(Recorder, data_path=tmp_path)
    runner.load()
    model: Any = runner.model
    assert model.calls == 1  # the example, {"x": 0}
    assert runner.stats().total == 0  # the warm-up is not a request
    assert runner.predict(x=4) == 8
    assert model.calls == 2
    cold = Runner(Recorder, data_path=tmp_path, warmup=False)
    cold.load()
    assert cold.model.calls == 0  # type: ignore[attr-defined]


class BadExample(Model):
    example: ClassVar[Mapping[str, Any] | None] = {"x": "not a number"}
    torn_down = 0

    def predict(self, x: float) -> float:
        return x + 1.0

    def teardown(self) -> None:
        type(self).torn_down += 1


def test_a_failing_warm_up_is_a_load_error(tmp_path: Path) -> None:
    runner = Runner(BadExample, data_path=tmp_path)
    with pytest.raises(ModelLoadError, match="BadExample:1 failed its warm-up request") as caught:
        runner.load()
    assert isinstance(caught.value.__cause__, ModelError)
    assert not runner.loaded
    assert BadExample.torn_down == 1  # what setup took is freed
    assert Runner(BadExample, data_path=tmp_path, warmup=False).predict(x=1.0) == 2.0


def test_a_failing_setup_is_a_load_error(tmp_path: Path) -> None:
    runner = Runner(load_example("mlp.py").MLP, data_path=tmp_path, hidden=-3)
    with pytest.raises(ModelLoadError, match="mlp:1 failed to load: InvalidInput: hidden must be a positive"):
        runner.load()
    assert not runner.loaded


def test_initialize_through_the_runner_sets_the_model_up_again(tmp_path: Path) -> None:
    runner = Runner(load_example("mlp.py").MLP, data_path=tmp_path)
    runner.load()
    assert runner.model.w1.shape == (16, 64)  # type: ignore[attr-defined]
    runner.initialize(hidden=3)
    assert not runner.loaded
    runner.predict(x=X16)
    assert runner.model.w1.shape == (16, 3)  # type: ignore[attr-defined]


# -- torch: inference mode and mixed precision ---------------------------------------------------------


def test_torch_models_run_in_inference_mode_by_default(tiny_torch: Runner) -> None:
    tiny_torch.predict(x=X16[:, :8])
    last = tiny_torch.model.last_call  # type: ignore[attr-defined]
    assert last["inference_mode"] is True
    assert last["grad_enabled"] is False
    assert last["autocast"] is False
    assert last["dtype"] == "float32"


def test_inference_mode_can_be_turned_off(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    with Runner(
        load_example("torch_module.py").TinyTorch, data_path=tmp_path, inference_mode=False
    ) as runner:
        runner.predict(x=np.ones((1, 8), dtype=np.float32))
        last = runner.model.last_call  # type: ignore[attr-defined]
        assert last["inference_mode"] is False
        assert last["grad_enabled"] is True


def test_mixed_precision_uses_bfloat16_autocast_on_cpu(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    tiny = load_example("torch_module.py").TinyTorch
    with Runner(tiny, data_path=tmp_path, device="cpu", mixed_precision=True) as runner:
        x = np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8)
        as_tensor = runner.predict(x=torch.from_numpy(x))
        last = runner.model.last_call  # type: ignore[attr-defined]
        assert last["autocast"] is True
        assert last["dtype"] == "bfloat16"
        assert as_tensor.dtype == torch.bfloat16
        assert runner.predict(x=x).dtype == np.float32  # numpy answers stay float32
    with Runner(tiny, data_path=tmp_path, device="cpu") as full:
        np.testing.assert_allclose(as_tensor.float().numpy(), full.predict(x=x), atol=0.05)


# -- predict_batch --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(min_value=0, max_value=40), max_batch_size=st.none() | st.integers(1, 12))
def test_batches_are_split_into_chunks_in_order(
    tmp_path_factory: pytest.TempPathFactory, n: int, max_batch_size: int | None
) -> None:
    runner = Runner(Recorder, data_path=tmp_path_factory.getbasetemp() / "chunks", warmup=False)
    runner.load()
    model: Any = runner.model
    values = [100 + i for i in range(n)]  # never 13, which Recorder refuses
    results = runner.predict_batch([{"x": v} for v in values], max_batch_size=max_batch_size)
    assert results == [2 * v for v in values]
    assert sum(model.sizes) == n
    limit = max_batch_size or max(n, 1)
    assert all(1 <= size <= limit for size in model.sizes)
    assert all(size == limit for size in model.sizes[:-1])  # only the last chunk may be short
    assert model.calls == 0  # predict_batch was used, never predict
    assert runner.stats().total == n


def test_max_batch_size_must_be_positive(tmp_path: Path) -> None:
    runner = Runner(Recorder, data_path=tmp_path)
    with pytest.raises(InvalidInput, match="max_batch_size must be at least 1, not 0"):
        runner.predict_batch([{"x": 1}], max_batch_size=0)
    assert runner.predict_batch([{"x": 1}], max_batch_size=1) == [2]


def test_models_without_predict_batch_are_looped(tmp_path: Path) -> None:
    calls: list[float] = []

    def square(v: float) -> float:
        calls.append(v)
        return v * v

    runner = Runner(square, data_path=tmp_path)
    assert runner.predict_batch([{"v": float(i)} for i in range(5)], max_batch_size=2) == [0, 1, 4, 9, 16]
    assert calls == [0, 1, 2, 3, 4]


def test_the_mlp_batch_equals_single_requests(mlp: Runner) -> None:
    rng = np.random.default_rng(3)
    requests = [rng.standard_normal((k, 16)).astype(np.float32) for k in (1, 3, 2, 1, 4)]
    batch = mlp.predict_batch([{"x": x} for x in requests], max_batch_size=2)
    assert [y.shape for y in batch] == [(k, 4) for k in (1, 3, 2, 1, 4)]
    for x, y in zip(requests, batch, strict=True):
        np.testing.assert_allclose(y, mlp.predict(x=x), rtol=1e-5, atol=1e-7)


def test_skip_errors_fails_only_the_failing_item(tmp_path: Path) -> None:
    runner = Runner(Recorder, data_path=tmp_path)
    items = [{"x": 1}, {"x": 13}, {"y": 2}, {"x": 3}]
    results = runner.predict_batch(items, max_batch_size=3, skip_errors=True)
    assert results[0] == 2
    assert isinstance(results[1], ModelError)  # the model raised on it
    assert "RuntimeError" in results[1].message
    assert isinstance(results[2], InvalidInput)  # no field x
    assert "item 2" in results[2].message
    assert results[3] == 6
    with pytest.raises(ModelError, match="raised RuntimeError"):
        runner.predict_batch(items[:2])
    with pytest.raises(InvalidInput, match=r"item 2: .*missing a required argument: 'x'"):
        runner.predict_batch(items)
    assert runner.predict_batch([{"x": 5}]) == [10]


def test_skip_errors_with_a_wrong_shape_in_a_tensor_batch(mlp: Runner) -> None:
    items = [{"x": X16}, {"x": np.zeros((1, 5), dtype=np.float32)}, {"x": X16}]
    with pytest.raises(InvalidInput, match=r"item 1: input 'x' has shape \[1, 5\]"):
        mlp.predict_batch(items)
    results = mlp.predict_batch(items, skip_errors=True)
    assert isinstance(results[1], InvalidInput)
    np.testing.assert_array_equal(results[0], results[2])
    assert results[0].shape == (1, 4)
    assert mlp.predict(x=X16).shape == (1, 4)


class Miscounting(Model):
    def predict(self, x: int) -> int:
        return x

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[int]:
        return [item["x"] for item in items][:-1]


def test_a_wrong_number_of_batch_results_is_a_model_error(tmp_path: Path) -> None:
    runner = Runner(Miscounting, data_path=tmp_path)
    for skip in (False, True):
        with pytest.raises(ModelError, match="predict_batch returned 2 results for 3 requests"):
            runner.predict_batch([{"x": 1}, {"x": 2}, {"x": 3}], skip_errors=skip)
    assert runner.predict(x=4) == 4


class PerItemErrors(Model):
    def predict(self, x: int) -> int:
        return x

    def predict_batch(self, items: Sequence[Mapping[str, Any]]) -> list[Any]:
        return [ValueError("negative!") if item["x"] < 0 else item["x"] for item in items]


def test_an_exception_in_an_items_place_fails_that_item(tmp_path: Path) -> None:
    runner = Runner(PerItemErrors, data_path=tmp_path)
    results = runner.predict_batch([{"x": 1}, {"x": -1}], skip_errors=True)
    assert results[0] == 1
    assert isinstance(results[1], ModelError)
    assert "ValueError" in results[1].message
    assert "negative!" not in results[1].message
    with pytest.raises(ModelError, match="failed this item with ValueError"):
        runner.predict_batch([{"x": 1}, {"x": -1}])
    assert runner.predict_batch([{"x": 2}]) == [2]


# -- statistics ---------------------------------------------------------------------------------------------


def test_statistics_count_requests_and_latencies(tmp_path: Path) -> None:
    runner = Runner(Recorder, data_path=tmp_path)
    for x in (1, 2, 3):
        runner.predict(x=x)
    with pytest.raises(ModelError):
        runner.predict(x=13)
    with pytest.raises(InvalidInput):
        runner.predict(y=1)
    runner.predict_batch([{"x": 1}, {"x": 13}, {"x": 2}], skip_errors=True)
    with pytest.raises(ModelError):
        runner.predict_batch([{"x": 13}, {"x": 1}])
    stats = runner.stats()
    assert (stats.total, stats.ok, stats.failed) == (10, 5, 5)
    assert sum(stats.histogram.values()) == 10
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    assert stats.as_dict()["total"] == 10


class Sleepy(Model):
    def predict(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_slow_requests_are_logged_as_warnings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(Sleepy, data_path=tmp_path, slow_ms=20)
    with caplog.at_level(logging.WARNING, logger="modelpod.runtime.runner"):
        runner.predict(seconds=0.0)
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        runner.predict(seconds=0.03)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "slow predict" in warnings[0].getMessage()
    assert "threshold 20 ms" in warnings[0].getMessage()
    assert runner.stats().histogram["le_50"] + runner.stats().histogram["le_100"] >= 1


# -- checks -----------------------------------------------------------------------------------------------


def test_check_nan_names_the_module_where_nan_first_appears(tiny_torch: Runner) -> None:
    torch = pytest.importorskip("torch")
    x = np.ones((1, 8), dtype=np.float32)
    clean = tiny_torch.check_nan(x=x)
    assert isinstance(clean, NanReport)
    assert clean.ok
    assert clean.modules_hooked == 4  # Sequential, Linear, ReLU, Linear

    from_input = tiny_torch.check_nan(x=np.full((1, 8), np.nan, dtype=np.float32))
    assert from_input.first_module == "module.0"

    module = tiny_torch.model.module  # type: ignore[attr-defined]
    with torch.no_grad():
        module[2].weight[1, 0] = float("nan")
    report = tiny_torch.check_nan(x=x)
    assert report.has_nan
    assert report.first_module == "module.2"  # the second Linear; the first one was fine
    assert report.outputs_with_nan == ["output"]


class Hoarder(Model):
    """Keeps 64 KiB of every request forever: a leak."""

    def setup(self) -> None:
        self.kept: list[np.ndarray] = []

    def predict(self, n: int) -> int:
        self.kept.append(np.ones(8192))
        return n


def test_check_memory_leak(tmp_path: Path, mlp: Runner) -> None:
    leaking = Runner(Hoarder, data_path=tmp_path)
    report = leaking.check_memory_leak(iterations=20, n=1)
    assert isinstance(report, LeakReport)
    assert report.leaked
    assert report.iterations == 20
    assert report.per_iteration_bytes >= 60_000

    fine = mlp.check_memory_leak(iterations=30, x=X16)
    assert not fine.leaked, str(fine)


def test_profile(tiny_torch: Runner, tmp_path: Path) -> None:
    report = tiny_torch.profile(iterations=3, x=np.ones((2, 8), dtype=np.float32))
    assert isinstance(report, ProfileReport)
    assert report.backend == "torch"
    assert report.iterations == 3
    assert report.total_seconds > 0
    assert any("linear" in name or "addmm" in name for name, _ in report.top)

    python = Runner(load_example("functions.py").add, data_path=tmp_path).profile(iterations=2, a=1.0, b=2.0)
    assert python.iterations == 2


# -- custom operators ----------------------------------------------------------------------------------------


def test_a_missing_custom_op_library_is_a_load_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    missing = tmp_path / "nowhere" / "ops.so"
    runner = Runner(load_example("functions.py").add, data_path=tmp_path, custom_ops=[str(missing)])
    with pytest.raises(ModelLoadError, match=r"cannot load custom operator library '.*nowhere/ops\.so'"):
        runner.load()
    assert not runner.loaded


def test_a_file_that_is_not_a_library_is_a_load_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    fake = tmp_path / "fake.so"
    fake.write_text("this is not a shared library\n")
    runner = Runner(load_example("functions.py").add, data_path=tmp_path, custom_ops=[str(fake)])
    with pytest.raises(ModelLoadError, match=r"fake\.so"):
        runner.predict(a=1.0, b=1.0)
    assert not runner.loaded


OP_SOURCE = """
#include <torch/library.h>
#include <ATen/ATen.h>
at::Tensor modelpod_twice(const at::Tensor& x) { return x * 2; }
TORCH_LIBRARY(modelpod_test_ops, m) { m.def("twice(Tensor x) -> Tensor", &modelpod_twice); }
"""


class UsesCustomOp(Model):
    def predict(self, x: list[float]) -> list[float]:
        import torch

        result: list[float] = torch.ops.modelpod_test_ops.twice(torch.tensor(x)).tolist()
        return result


@pytest.mark.slow
def test_a_real_custom_op_library_is_loaded_before_setup(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from torch.utils import cpp_extension

    source = tmp_path / "ops.cpp"
    source.write_text(OP_SOURCE)
    library = tmp_path / "libmodelpod_test_ops.so"
    command = [
        "g++",
        "-shared",
        "-fPIC",
        "-O0",
        "-w",
        "-std=c++17",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        str(source),
        "-o",
        str(library),
        *(f"-L{path}" for path in cpp_extension.library_paths()),
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
    ]
    try:
        built = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        pytest.skip("g++ is not installed")
    assert built.returncode == 0, built.stderr[-3000:]
    with Runner(UsesCustomOp, data_path=tmp_path, custom_ops=[str(library)]) as runner:
        assert runner.predict(x=[1.0, 2.5]) == [2.0, 5.0]


# -- typed errors, and the runner keeps working --------------------------------------------------


def test_every_bad_call_is_typed_and_the_runner_keeps_working(mlp: Runner) -> None:
    bad_calls: list[tuple[Any, type[ModelpodError]]] = [
        (lambda: mlp.predict(None), InvalidInput),
        (lambda: mlp.predict(X16, X16), InvalidInput),
        (lambda: mlp.predict(X16, x=X16), InvalidInput),
        (lambda: mlp.predict(z=X16), InvalidInput),
        (lambda: mlp.predict_batch([{"x": X16}, {"x": np.zeros((2, 3))}]), InvalidInput),
        (lambda: mlp.predict_batch([{"x": X16}, "x"]), InvalidInput),  # type: ignore[list-item]
        (lambda: mlp.predict_batch("xx"), InvalidInput),  # type: ignore[arg-type]
    ]
    good = mlp.predict(x=X16)
    for call, kind in bad_calls:
        with pytest.raises(kind):
            call()
        np.testing.assert_array_equal(mlp.predict(x=X16), good)


def test_a_model_error_names_the_model_and_the_type_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Model):
        def predict(self, x: int) -> int:
            if x < 0:
                return [1, 2][x * 10]
            return x

    runner = Runner(Broken, data_path=tmp_path, version="7")
    with pytest.raises(ModelError) as caught:
        runner.predict(x=-1)
    error = caught.value
    assert error.message == "model Broken:7 raised IndexError"
    assert isinstance(error.__cause__, IndexError)
    assert "list index out of range" in str(error.__cause__)
    assert "list index out of range" not in str(error)
    logged = [r for r in caplog.records if error.error_id in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "list index out of range" in caplog.text
    assert runner.predict(x=3) == 3


def test_tensor_spec_dtypes_reach_the_model(tmp_path: Path) -> None:
    class Typed(Model):
        inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [TensorSpec("ids", "INT32", (-1,))]

        def predict(self, ids: Any) -> str:
            return str(ids.dtype)

    assert Runner(Typed, data_path=tmp_path).predict(ids=[1, 2]) == "int32"
