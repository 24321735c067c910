"""The runner's CUDA paths on a real GPU: device selection, inputs on the device, batches, autocast,
CUDA memory in the pool's budget, and the leak and NaN checks.

Every test is skipped where torch sees no CUDA device (developer machines and CI); run them on a
GPU machine with `python -m pytest tests/test_cuda.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from modelpod import Model, ModelLoadError, Runner, TensorSpec
from modelpod.runtime.devices import select_device
from modelpod.runtime.memory import cuda_bytes, release_freed_memory
from modelpod.serving.pool import ModelPool

from conftest import load_example
from tensor_runs import run_tensors

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: torch.cuda.is_available() is False here"
)

IN_FEATURES = 16
OUT_FEATURES = 4
MIB = 1 << 20


def _rows(count: int, start: float = 0.0) -> np.ndarray[Any, Any]:
    """`count` distinct float32 input rows."""
    values = np.arange(count * IN_FEATURES, dtype=np.float32) / (count * IN_FEATURES) + start
    return values.reshape(count, IN_FEATURES) - 0.5


def _seeded_linear(in_features: int, out_features: int) -> Any:
    """A torch Linear with fixed weights, made without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Linear(in_features, out_features)


class Affine(Model):
    """A tensor model: one torch Linear on the runner's device. Tensors in give tensors out, numpy
    arrays in give CPU numpy arrays out. Records what each call saw, for the tests to inspect."""

    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [TensorSpec("x", "FP32", (-1, IN_FEATURES))]
    outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [
        TensorSpec("y", "FP32", (-1, OUT_FEATURES))
    ]
    linear: Any
    calls: list[dict[str, Any]]

    def setup(self) -> None:
        self.linear = _seeded_linear(IN_FEATURES, OUT_FEATURES).to(self.device)
        self.calls = []

    def predict(self, x: Any) -> Any:
        given_tensor = isinstance(x, torch.Tensor)
        y = self.linear(torch.as_tensor(x, device=self.device))
        self.calls.append(
            {
                "input": str(x.device) if given_tensor else type(x).__name__,
                "rows": len(x),
                "compute_dtype": y.dtype,
                "autocast": torch.is_autocast_enabled("cuda"),
                "inference_mode": torch.is_inference_mode_enabled(),
            }
        )
        return y if given_tensor else y.float().cpu().numpy()

    def expected(self, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """What the module computes for `x`, in float64 on the CPU."""
        weight: np.ndarray[Any, Any] = self.linear.weight.detach().double().cpu().numpy()
        bias: np.ndarray[Any, Any] = self.linear.bias.detach().double().cpu().numpy()
        result: np.ndarray[Any, Any] = np.asarray(x, dtype=np.float64) @ weight.T + bias
        return result


@pytest.fixture
def affine(tmp_path: Path) -> Iterator[Runner]:
    with Runner(Affine, data_path=tmp_path, device="cuda", convert="torch") as runner:
        yield runner


def _model(runner: Runner) -> Affine:
    assert isinstance(runner.model, Affine)
    return runner.model


# -- device selection ------------------------------------------------------------------------------


def test_select_device_picks_the_cuda_gpu_with_the_most_free_memory() -> None:
    count = torch.cuda.device_count()
    chosen = select_device()
    assert chosen.startswith("cuda:")
    index = int(chosen.removeprefix("cuda:"))
    assert 0 <= index < count
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    assert free[index] >= max(free) - 256 * MIB  # other processes may allocate meanwhile
    assert select_device("cuda").startswith("cuda:")
    assert select_device(" CUDA:0 ") == "cuda:0"
    with pytest.raises(ValueError, match=rf"'cuda:{count}' does not exist: {count} CUDA device"):
        select_device(f"cuda:{count}")


def test_the_runner_loads_on_the_gpu_when_no_device_is_named(tmp_path: Path) -> None:
    with Runner(Affine, data_path=tmp_path) as runner:
        model = _model(runner)
        assert model.device.startswith("cuda:")
        assert all(p.device.type == "cuda" for p in model.linear.parameters())


def test_a_gpu_that_does_not_exist_is_a_load_error(tmp_path: Path) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ModelLoadError, match="does not exist"):
        Runner(Affine, data_path=tmp_path, device=missing).load()


# -- inputs to the device, outputs back ----------------------------------------------------------------


def test_convert_torch_puts_numpy_and_cpu_tensor_inputs_on_the_gpu(affine: Runner) -> None:
    model = _model(affine)
    x = _rows(3)
    from_numpy = affine.predict(x=x)
    from_tensor = affine.predict(x=torch.from_numpy(x))
    assert [call["input"] for call in model.calls] == ["cuda:0", "cuda:0"]
    for y in (from_numpy, from_tensor):
        assert isinstance(y, torch.Tensor)
        assert y.device.type == "cuda"
        np.testing.assert_allclose(y.cpu().numpy(), model.expected(x), rtol=1e-3, atol=1e-3)


def test_convert_numpy_hands_the_model_cpu_arrays_for_gpu_tensors(tmp_path: Path) -> None:
    with Runner(Affine, data_path=tmp_path, device="cuda", convert="numpy") as runner:
        model = _model(runner)
        x = _rows(2)
        y = runner.predict(x=torch.from_numpy(x).to("cuda"))
        assert model.calls[-1]["input"] == "ndarray"
        assert isinstance(y, np.ndarray)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, model.expected(x), rtol=1e-3, atol=1e-3)


def test_tensor_requests_get_cpu_numpy_outputs_from_a_gpu_model(affine: Runner) -> None:
    """The server's path: the model answers with a CUDA tensor, the protocol gets numpy arrays."""
    x = _rows(5)
    outputs = run_tensors(affine, {"x": x})
    assert list(outputs) == ["y"]
    assert isinstance(outputs["y"], np.ndarray)
    assert outputs["y"].shape == (5, OUT_FEATURES)
    np.testing.assert_allclose(outputs["y"], _model(affine).expected(x), rtol=1e-3, atol=1e-3)


def test_the_torch_example_answers_in_kind_on_the_gpu(tmp_path: Path) -> None:
    """examples/torch_module.py: numpy in gives float32 numpy out, a tensor in its output tensor."""
    tiny = load_example("torch_module.py").TinyTorch
    x = np.linspace(-1.0, 1.0, 16, dtype=np.float32).reshape(2, 8)
    with Runner(tiny, data_path=tmp_path, device="cuda") as runner:
        as_numpy = runner.predict(x=x)
        as_tensor = runner.predict(x=torch.from_numpy(x))
        batch = runner.predict_batch([{"x": x}, {"x": torch.from_numpy(x[:1])}])
        assert runner.model.last_call["device"] == "cuda:0"  # type: ignore[attr-defined]
    with Runner(tiny, data_path=tmp_path, device="cpu") as cpu:
        expected = cpu.predict(x=x)
    assert isinstance(as_numpy, np.ndarray)
    assert as_numpy.dtype == np.float32
    np.testing.assert_allclose(as_numpy, expected, rtol=1e-3, atol=1e-3)
    assert as_tensor.device.type == "cuda"
    np.testing.assert_allclose(as_tensor.cpu().numpy(), expected, rtol=1e-3, atol=1e-3)
    assert isinstance(batch[0], np.ndarray)
    assert batch[1].device.type == "cuda"
    np.testing.assert_allclose(batch[1].cpu().numpy(), expected[:1], rtol=1e-3, atol=1e-3)


# -- batches -------------------------------------------------------------------------------------------


def test_a_batch_runs_as_one_forward_pass_on_the_gpu(affine: Runner) -> None:
    model = _model(affine)
    inputs = [_rows(count, start=float(count)) for count in (1, 3, 2)]
    results = affine.predict_batch([{"x": x} for x in inputs])
    assert [call["rows"] for call in model.calls] == [6]  # stacked on the device: one call
    assert [call["input"] for call in model.calls] == ["cuda:0"]
    for x, y in zip(inputs, results, strict=True):
        assert y.device.type == "cuda"
        np.testing.assert_allclose(y.cpu().numpy(), model.expected(x), rtol=1e-3, atol=1e-3)


def test_a_batch_is_chunked_by_max_batch_size_on_the_gpu(affine: Runner) -> None:
    model = _model(affine)
    inputs = [_rows(count, start=float(count)) for count in (1, 3, 2)]
    results = affine.predict_batch([{"x": x} for x in inputs], max_batch_size=2)
    assert [call["rows"] for call in model.calls] == [4, 2]
    for x, y in zip(inputs, results, strict=True):
        np.testing.assert_allclose(y.cpu().numpy(), model.expected(x), rtol=1e-3, atol=1e-3)


def test_submitted_requests_are_answered_from_the_gpu(tmp_path: Path) -> None:
    with Runner(Affine, data_path=tmp_path, device="cuda", convert="torch") as runner:
        inputs = [_rows(2, start=float(i)) for i in range(6)]
        futures = [runner.submit(x=x) for x in inputs]
        results = [future.result(timeout=30) for future in futures]
        model = _model(runner)
        assert sum(call["rows"] for call in model.calls) == 12
        for x, y in zip(inputs, results, strict=True):
            np.testing.assert_allclose(y.cpu().numpy(), model.expected(x), rtol=1e-3, atol=1e-3)


# -- mixed precision -------------------------------------------------------------------------------------


def test_mixed_precision_computes_in_float16_on_the_gpu(tmp_path: Path) -> None:
    x = _rows(4)
    with Runner(Affine, data_path=tmp_path, device="cuda", convert="torch") as full:
        y_full = full.predict(x=x)
        assert _model(full).calls[-1]["compute_dtype"] == torch.float32
        assert _model(full).calls[-1]["autocast"] is False
    with Runner(Affine, data_path=tmp_path, device="cuda", convert="torch", mixed_precision=True) as half:
        y_half = half.predict(x=x)
        call = _model(half).calls[-1]
        assert call["autocast"] is True
        assert call["inference_mode"] is True
        assert call["compute_dtype"] == torch.float16
    assert y_full.dtype == torch.float32
    assert y_half.dtype == torch.float16
    np.testing.assert_allclose(y_half.float().cpu().numpy(), y_full.cpu().numpy(), atol=1e-2)


def test_mixed_precision_leaves_the_weights_in_float32(tmp_path: Path) -> None:
    with Runner(Affine, data_path=tmp_path, device="cuda", mixed_precision=True) as runner:
        runner.predict(x=_rows(1))
        assert {p.dtype for p in _model(runner).linear.parameters()} == {torch.float32}


# -- CUDA memory and the pool --------------------------------------------------------------------------


def test_cuda_bytes_grow_by_an_allocation_and_the_cache_is_released() -> None:
    size = 32 * MIB
    before = cuda_bytes()
    block = torch.empty(size, dtype=torch.uint8, device="cuda")
    assert cuda_bytes() - before == size
    del block
    assert cuda_bytes() == before
    reserved = torch.cuda.memory_reserved()
    release_freed_memory()
    assert torch.cuda.memory_reserved() <= reserved - size


class Weights(Model):
    """A square Linear without bias, made directly on the device: `width`² float32 weights."""

    linear: Any

    def setup(self) -> None:
        width = int(self.config.get("width", 2048))
        self.linear = torch.nn.Linear(width, width, bias=False, device=self.device)

    def teardown(self) -> None:
        self.linear = None

    def predict(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.linear.parameters())


WIDTH = 4096
WEIGHT_BYTES = WIDTH * WIDTH * 4  # 64 MiB


def _weights_factory(tmp_path: Path, version: str) -> Any:
    return lambda: Runner(
        Weights, version=version, data_path=tmp_path, device="cuda", warmup=False, width=WIDTH
    )


def test_the_pool_measures_gpu_weights_and_frees_them_on_eviction(tmp_path: Path) -> None:
    pool = ModelPool()
    key = ("weights", "v1")
    before = cuda_bytes()
    try:
        with pool.use(key, _weights_factory(tmp_path, "v1")) as runner:
            assert runner.predict() == WEIGHT_BYTES
            assert cuda_bytes() - before == WEIGHT_BYTES
        assert pool.stats().costs[key] >= WEIGHT_BYTES
        assert pool.evict(key)
        assert cuda_bytes() == before
    finally:
        pool.close()


def test_the_memory_budget_evicts_by_gpu_memory(tmp_path: Path) -> None:
    pool = ModelPool(per_model=2, memory_budget=WEIGHT_BYTES * 3 // 2)  # room for one version
    before = cuda_bytes()
    try:
        for version in ("v1", "v2"):
            with pool.use(("weights", version), _weights_factory(tmp_path, version)):
                pass
        stats = pool.stats()
        assert stats.loaded == [("weights", "v2")]
        assert stats.evictions == 1
        assert cuda_bytes() - before == WEIGHT_BYTES  # v1's weights were freed
    finally:
        pool.close()
    assert cuda_bytes() == before


# -- check_memory_leak ---------------------------------------------------------------------------------------

LEAK_BYTES = MIB


class GpuScratch(Model):
    """Allocates LEAK_BYTES on the GPU per call; with `keep`, it holds on to every allocation."""

    kept: list[Any]

    def setup(self) -> None:
        self.kept = []

    def teardown(self) -> None:
        self.kept.clear()

    def predict(self, fill: int) -> int:
        scratch = torch.full((LEAK_BYTES,), fill, dtype=torch.uint8, device=self.device)
        if self.config.get("keep", False):
            self.kept.append(scratch)
        return int(scratch[0])


def test_gpu_tensors_kept_across_calls_are_a_cuda_leak(tmp_path: Path) -> None:
    with Runner(GpuScratch, data_path=tmp_path, device="cuda", keep=True) as runner:
        report = runner.check_memory_leak(iterations=20, fill=1)
    assert report.leaked, str(report)
    assert report.cuda_growth_bytes is not None
    assert report.cuda_growth_bytes >= 20 * LEAK_BYTES
    assert report.per_iteration_bytes >= LEAK_BYTES
    assert f"CUDA +{report.cuda_growth_bytes} B" in str(report)


def test_gpu_scratch_freed_each_call_is_no_leak(tmp_path: Path) -> None:
    with Runner(GpuScratch, data_path=tmp_path, device="cuda", keep=False) as runner:
        report = runner.check_memory_leak(iterations=50, fill=1)
    assert report.cuda_growth_bytes == 0, str(report)
    assert not report.leaked, str(report)


def test_a_gpu_model_forward_pass_is_no_leak(affine: Runner) -> None:
    report = affine.check_memory_leak(iterations=50, x=_rows(8))
    assert report.cuda_growth_bytes == 0, str(report)
    assert not report.leaked, str(report)


# -- check_nan -------------------------------------------------------------------------------------------

HIDDEN = 8


class GpuNet(Model):
    """Linear -> ReLU -> Linear on the device; `nan_layer` puts a NaN weight in that layer, and
    `scale` multiplies the first layer's weights (large ones overflow float16)."""

    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = [TensorSpec("x", "FP32", (-1, IN_FEATURES))]
    net: Any

    def setup(self) -> None:
        net = torch.nn.Sequential(
            _seeded_linear(IN_FEATURES, HIDDEN), torch.nn.ReLU(), _seeded_linear(HIDDEN, OUT_FEATURES)
        )
        with torch.no_grad():
            net[0].weight.fill_(float(self.config.get("scale", 1.0)) / IN_FEATURES)
            layer = self.config.get("nan_layer")
            if layer is not None:
                net[layer].weight[0, 0] = float("nan")
        self.net = net.to(self.device)

    def predict(self, x: Any) -> Any:
        return self.net(x)


@pytest.mark.parametrize("layer", [0, 2])
def test_check_nan_names_the_gpu_module_that_made_nan(tmp_path: Path, layer: int) -> None:
    with Runner(GpuNet, data_path=tmp_path, device="cuda", convert="torch", nan_layer=layer) as runner:
        report = runner.check_nan(x=np.ones((2, IN_FEATURES), dtype=np.float32))
    assert report.has_nan
    assert report.first_module == f"net.{layer}"
    assert report.outputs_with_nan == ["output"]
    assert report.modules_hooked == 4  # the Sequential and its three layers
    assert f"'net.{layer}'" in str(report)


def test_check_nan_finds_nothing_in_a_healthy_gpu_model(tmp_path: Path) -> None:
    with Runner(GpuNet, data_path=tmp_path, device="cuda", convert="torch") as runner:
        report = runner.check_nan(x=np.ones((2, IN_FEATURES), dtype=np.float32))
    assert report.ok, str(report)
    assert report.modules_hooked == 4


def test_check_nan_finds_the_layer_that_overflows_float16(tmp_path: Path) -> None:
    """Sums of 16 products of 100 x 1000 fit float32 but not float16 (max 65504)."""
    x = np.full((2, IN_FEATURES), 100.0, dtype=np.float32)
    options: dict[str, Any] = {"device": "cuda", "convert": "torch", "scale": 1000.0 * IN_FEATURES}
    with Runner(GpuNet, data_path=tmp_path, **options) as full:
        assert full.check_nan(x=x).ok
    with Runner(GpuNet, data_path=tmp_path, mixed_precision=True, **options) as half:
        report = half.check_nan(x=x)
    assert report.has_inf or report.has_nan
    assert report.first_module == "net.0"
