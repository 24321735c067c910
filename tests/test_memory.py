"""How much memory the process holds: RSS (psutil, else /proc), plus CUDA where torch uses it."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest

from modelpod.runtime import memory

SIZE = 256 * 2**20
SLACK = 32 * 2**20  # what the interpreter may allocate or free on its own between two readings


def test_rss_grows_and_shrinks_with_a_large_array() -> None:
    before = memory.rss_bytes()
    assert before > 0
    block = np.ones(SIZE, dtype=np.uint8)  # ones, not zeros: the pages must really be touched
    held = memory.rss_bytes()
    assert held - before > SIZE - SLACK
    del block
    memory.release_freed_memory()
    assert held - memory.rss_bytes() > SIZE - SLACK


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_rss_without_psutil_reads_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    with_psutil = memory.rss_bytes()
    monkeypatch.setitem(sys.modules, "psutil", None)  # `import psutil` now raises ImportError
    from_proc = memory.rss_bytes()
    assert from_proc > 0
    assert abs(from_proc - with_psutil) < SLACK


def test_cuda_bytes_is_zero_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert memory.cuda_bytes() == 0
    assert abs(memory.used_bytes() - memory.rss_bytes()) < SLACK
    memory.release_freed_memory()  # nothing to hand back, and no torch to import


def test_cuda_bytes_with_torch() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert memory.cuda_bytes() == 0
        return
    before = memory.cuda_bytes()
    block = torch.ones(SIZE // 4, dtype=torch.float32, device="cuda")
    assert memory.cuda_bytes() - before >= SIZE
    del block
    memory.release_freed_memory()
    assert memory.cuda_bytes() == before


def test_release_freed_memory_collects_cycles() -> None:
    class Node:
        other: object

    a, b = Node(), Node()
    a.other, b.other = b, a
    count = sum(type(o) is Node for o in gc.get_objects())
    del a, b
    memory.release_freed_memory()
    assert sum(type(o) is Node for o in gc.get_objects()) == count - 2
