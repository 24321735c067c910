"""select_device: explicit requests, validation, and the automatic choice.

No GPU is available to the tests: the CUDA and MPS branches are exercised by replacing torch's
availability queries (torch.cuda.is_available, device_count, mem_get_info), which is the input of
our selection logic, not the logic itself.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from modelpod.runtime import devices
from modelpod.runtime.devices import select_device, torch_available

torch = pytest.importorskip("torch")


@pytest.fixture
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch) -> dict[int, tuple[int, int]]:
    """Three fake CUDA devices; the test may change their free memory in the returned dict."""
    memory = {0: (2 << 30, 16 << 30), 1: (9 << 30, 16 << 30), 2: (4 << 30, 16 << 30)}

    def mem_get_info(index: int) -> tuple[int, int]:
        value = memory[index]
        if value[0] < 0:
            raise RuntimeError("CUDA error: device unavailable")
        return value

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    return memory


def test_torch_available_does_not_import_torch() -> None:
    code = (
        "import sys, modelpod.runtime.devices, modelpod.runtime.latency, modelpod.runtime.checks\n"
        "assert modelpod.runtime.devices.torch_available()\n"
        "print('torch' in sys.modules, 'psutil' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]


def test_torch_available_here() -> None:
    assert torch_available() is True


@pytest.mark.parametrize("requested", ["cpu", "CPU", " cpu "])
def test_cpu_is_always_accepted(requested: str) -> None:
    assert select_device(requested) == "cpu"


@pytest.mark.parametrize("requested", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", "tpu", "mps:0"])
def test_unknown_device_names_the_accepted_forms(requested: str) -> None:
    with pytest.raises(ValueError, match=r'unknown device.*"cpu", "cuda", "cuda:N".*"mps"'):
        select_device(requested)


@pytest.mark.usefixtures("no_accelerator")
def test_no_accelerator_means_cpu() -> None:
    assert select_device() == "cpu"
    assert select_device("") == "cpu"


@pytest.mark.usefixtures("no_accelerator")
@pytest.mark.parametrize("requested", ["cuda", "cuda:0", "mps"])
def test_unavailable_accelerator_is_refused(requested: str) -> None:
    with pytest.raises(ValueError, match="not available"):
        select_device(requested)


def test_without_torch_only_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "torch_available", lambda: False)
    assert select_device() == "cpu"
    assert select_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="not installed"):
        select_device("cuda:0")


def test_auto_picks_the_gpu_with_most_free_memory(three_gpus: dict[int, tuple[int, int]]) -> None:
    assert select_device() == "cuda:1"
    assert select_device("cuda") == "cuda:1"
    three_gpus[2] = (12 << 30, 16 << 30)
    assert select_device() == "cuda:2"


def test_tie_goes_to_the_lowest_index(three_gpus: dict[int, tuple[int, int]]) -> None:
    for index in three_gpus:
        three_gpus[index] = (1 << 30, 16 << 30)
    assert select_device() == "cuda:0"


def test_unreadable_gpu_ranks_last(three_gpus: dict[int, tuple[int, int]]) -> None:
    three_gpus[1] = (-1, 0)
    assert select_device() == "cuda:2"


@pytest.mark.usefixtures("three_gpus")
def test_explicit_gpu_index_is_checked() -> None:
    assert select_device("cuda:0") == "cuda:0"
    assert select_device("CUDA:2") == "cuda:2"
    with pytest.raises(ValueError, match=r"does not exist.*3 CUDA device"):
        select_device("cuda:3")


@pytest.mark.usefixtures("three_gpus")
def test_explicit_request_wins_over_the_best_device() -> None:
    assert select_device("cpu") == "cpu"
    assert select_device("mps") == "mps"


def test_mps_when_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device() == "mps"
    assert select_device("mps") == "mps"
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda")
