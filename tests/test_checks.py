"""Health checks on real models: NaN/Inf tracing, leak detection, profiling."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelpod.runtime import devices, leaks, memory
from modelpod.runtime.adapters import FunctionModel
from modelpod.runtime.checks import check_nan
from modelpod.runtime.leaks import check_memory_leak
from modelpod.runtime.model import Model
from modelpod.runtime.profiling import profile

torch = pytest.importorskip("torch")

_LEAKED: list[Any] = []


class TinyNet(Model):
    """Linear -> ReLU -> Linear, optionally with NaN weights in one of the Linear layers."""

    def __init__(self, nan_layer: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        if nan_layer is not None:
            with torch.no_grad():
                self.net[nan_layer].weight[0, 0] = float("nan")

    def predict(self, x: Any) -> Any:
        return {"logits": self.net(x), "count": 1}


@pytest.fixture
def data_path(tmp_path: Path) -> dict[str, Any]:
    return {"data_path": tmp_path}


def _hook_count(module: Any) -> int:
    return sum(len(m._forward_hooks) for m in module.modules())


# -- check_nan ------------------------------------------------------------------------------


def test_nan_weights_in_second_linear_are_named(data_path: dict[str, Any]) -> None:
    model = TinyNet(nan_layer=2, **data_path)
    report = check_nan(model, lambda: model.predict(torch.ones(3, 4)))
    assert report.has_nan
    assert not report.has_inf
    assert report.first_module == "net.2"
    assert report.outputs_with_nan == ["output['logits']"]
    assert report.modules_hooked == 4
    assert "net.2" in str(report)
    assert _hook_count(model.net) == 0


def test_first_module_is_first_in_execution_order(data_path: dict[str, Any]) -> None:
    model = TinyNet(nan_layer=0, **data_path)
    report = check_nan(model, lambda: model.predict(torch.ones(3, 4)))
    assert report.first_module == "net.0"


def test_clean_torch_model(data_path: dict[str, Any]) -> None:
    model = TinyNet(**data_path)
    report = check_nan(model, lambda: model.predict(torch.ones(3, 4)))
    assert report.ok
    assert (report.has_nan, report.has_inf, report.first_module) == (False, False, None)
    assert report.outputs_with_nan == []
    assert "no NaN/Inf" in str(report)


def test_inf_from_a_module_and_nan_hidden_from_the_output(data_path: dict[str, Any]) -> None:
    class Overflow(Model):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.scale = torch.nn.Linear(1, 1, bias=False)
            with torch.no_grad():
                self.scale.weight.fill_(1e30)

        def predict(self, x: Any) -> Any:
            big = self.scale(x) * 1e30  # Inf in float32
            return torch.nan_to_num(big), big

    model = Overflow(**data_path)
    report = check_nan(model, lambda: model.predict(torch.ones(2, 1)))
    assert report.has_inf
    assert not report.has_nan
    assert report.outputs_with_nan == ["output[1]"]
    assert report.first_module is None  # the Linear's own output is finite


def test_module_one_attribute_down_is_found(data_path: dict[str, Any]) -> None:
    inner = TinyNet(nan_layer=2, **data_path)
    holder = SimpleNamespace(net=inner.net)

    class Wrapper(Model):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.predictor = holder

        def predict(self, x: Any) -> Any:
            return self.predictor.net(x)

    model = Wrapper(name="wrapper", **data_path)
    report = check_nan(model, lambda: model.predict(torch.ones(1, 4)))
    assert report.first_module == "predictor.net.2"
    assert report.outputs_with_nan == ["output"]


def test_hooks_removed_when_call_raises(data_path: dict[str, Any]) -> None:
    model = TinyNet(**data_path)

    def broken() -> Any:
        model.predict(torch.ones(1, 4))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        check_nan(model, broken)
    assert _hook_count(model.net) == 0


def test_numpy_function_outputs(data_path: dict[str, Any]) -> None:
    def compute() -> Any:
        return {
            "a": [np.array([1.0, np.nan]), 2.0, np.arange(3)],
            "b": (np.float32(np.inf), "nan"),
            "c": np.ones((2, 2)),
        }

    model = FunctionModel(compute, **data_path)
    report = check_nan(model, model.predict)
    assert report.has_nan
    assert report.has_inf
    assert report.outputs_with_nan == ["output['a'][0]", "output['b'][0]"]
    assert report.first_module is None
    assert report.modules_hooked == 0


@pytest.mark.parametrize(
    ("value", "paths"),
    [(float("nan"), ["output"]), (np.array([-np.inf, 1.0]), ["output"]), ([1, 2.5, "x"], [])],
)
def test_plain_outputs(data_path: dict[str, Any], value: Any, paths: list[str]) -> None:
    model = FunctionModel(lambda: value, name="plain", **data_path)
    report = check_nan(model, model.predict)
    assert report.outputs_with_nan == paths


# -- check_memory_leak ------------------------------------------------------------------------


def _leak_python_objects() -> None:
    _LEAKED.append([0.5] * 2000)


def test_growing_global_list_is_a_leak() -> None:
    _LEAKED.clear()
    try:
        report = check_memory_leak(_leak_python_objects, iterations=50, warmup=5)
    finally:
        _LEAKED.clear()
    assert report.leaked
    assert report.python_growth_bytes >= 50 * 2000 * 8
    assert report.per_iteration_bytes >= 2000 * 8
    assert report.top_sites
    assert report.top_sites[0].startswith(f"{__file__}:")
    assert "memory leak" in str(report)


def test_leaked_torch_tensors_show_in_the_c_heap() -> None:
    if leaks.malloc_in_use() is None:
        pytest.skip("the C library does not report its heap (not glibc)")
    _LEAKED.clear()
    try:
        report = check_memory_leak(lambda: _LEAKED.append(torch.zeros(10_000)), iterations=50)
    finally:
        _LEAKED.clear()
    assert report.leaked
    assert report.native_growth_bytes is not None
    assert report.native_growth_bytes >= 50 * 40_000
    assert report.python_growth_bytes < 50 * 40_000  # tracemalloc cannot see torch's buffers


def test_clean_function_does_not_leak(data_path: dict[str, Any]) -> None:
    model = TinyNet(**data_path)
    matrix = np.random.default_rng(0).random((64, 64))

    def clean() -> float:
        with torch.no_grad():
            model.predict(torch.ones(8, 4))
        return float((matrix @ matrix).sum())

    was_tracing = tracemalloc.is_tracing()
    report = check_memory_leak(clean, iterations=100)
    assert not report.leaked, str(report)
    assert report.per_iteration_bytes <= report.tolerance_bytes
    assert report.rss_growth_bytes is not None
    assert report.cuda_growth_bytes in (None, 0)  # 0 where CUDA was started earlier in the run
    assert tracemalloc.is_tracing() == was_tracing


def test_clean_function_in_a_fresh_process_does_not_leak() -> None:
    """The first measurement in a process (importing psutil, loading libc) is not counted."""
    code = (
        "import numpy as np\n"
        "from modelpod.runtime.leaks import check_memory_leak\n"
        "matrix = np.ones((50, 50))\n"
        "report = check_memory_leak(lambda: (matrix @ matrix).sum(), iterations=50)\n"
        "print(report.leaked, report.python_growth_bytes)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    leaked, growth = result.stdout.split()
    assert leaked == "False", result.stdout
    assert int(growth) < 4096


def test_leak_check_leaves_running_tracemalloc_running() -> None:
    tracemalloc.start()
    try:
        check_memory_leak(lambda: None, iterations=5, warmup=1)
        assert tracemalloc.is_tracing()
    finally:
        tracemalloc.stop()


def test_leak_check_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="iterations"):
        check_memory_leak(lambda: None, iterations=0)


def test_rss_is_readable() -> None:
    rss = memory.rss_bytes()
    assert rss is not None
    assert rss > 1 << 20


# -- profile -------------------------------------------------------------------------------


def _invert(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.inv(matrix)


def test_cprofile_of_a_numpy_call() -> None:
    calls = []
    matrix = np.eye(30) * 2.0

    def call() -> np.ndarray:
        calls.append(1)
        return _invert(matrix)

    report = profile(call, iterations=7, use_torch=False)
    assert report.backend == "cprofile"
    assert report.iterations == 7
    assert len(calls) == 7
    assert report.total_seconds > 0
    names = [name for name, _ in report.top]
    assert any(name.endswith("(_invert)") for name in names)
    assert any("(inv)" in name for name in names)
    seconds = [value for _, value in report.top]
    assert seconds == sorted(seconds, reverse=True)
    assert "tottime" in report.table
    assert "cprofile profile: 7 calls" in str(report)


def test_torch_profile_of_a_torch_model(data_path: dict[str, Any]) -> None:
    model = TinyNet(**data_path)
    x = torch.ones(16, 4)
    report = profile(lambda: model.predict(x), iterations=5, use_torch=True)
    assert report.backend == "torch"
    assert report.iterations == 5
    names = [name for name, _ in report.top]
    assert "aten::addmm" in names
    seconds = [value for _, value in report.top]
    assert seconds == sorted(seconds, reverse=True)
    assert all(value >= 0 for value in seconds)
    assert "aten::addmm" in report.table


def test_default_backend_follows_whether_torch_is_loaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert profile(lambda: None, iterations=1).backend == "torch"
    monkeypatch.delitem(sys.modules, "torch")
    assert profile(lambda: None, iterations=1).backend == "cprofile"


def test_torch_backend_without_torch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "torch_available", lambda: False)
    with pytest.raises(ValueError, match="not installed"):
        profile(lambda: None, use_torch=True)
