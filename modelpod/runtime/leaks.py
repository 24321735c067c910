"""Memory leak check: call a model many times and report memory that kept growing, with where
it was allocated.

    check_memory_leak(call, iterations) -> LeakReport     growth per call, where it was allocated

It measures the whole process (the Python heap with tracemalloc, the C heap with glibc's
mallinfo2, RSS, torch's CUDA memory): run it while the model serves no other requests.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelpod.runtime.memory import cuda_allocated, rss_bytes

DEFAULT_TOLERANCE_BYTES = 1024
"""Growth per iteration (bytes) that `check_memory_leak` accepts as noise by default."""
RSS_SLACK_BYTES = 1 << 20
"""RSS growth (bytes, in total) ignored as allocator noise: malloc grows its arenas in steps."""
TOP_N = 10


@dataclass(frozen=True)
class LeakReport:
    """What `check_memory_leak` measured over `iterations` calls after `warmup` calls.

    python_growth_bytes: growth of the Python heap (tracemalloc; numpy buffers included).
    native_growth_bytes: growth of the C heap in use (glibc `mallinfo2`: torch CPU tensors,
                         C extensions); None where the C library does not tell.
    rss_growth_bytes:    growth of the resident set size; None where it cannot be read. Memory
                         freed earlier is reused without growing RSS, so this one can miss leaks.
    cuda_growth_bytes:   growth of torch's CUDA allocated memory; None when CUDA is not in use.
    per_iteration_bytes: the largest of these per iteration, RSS less `RSS_SLACK_BYTES`.
    leaked:              per_iteration_bytes > tolerance_bytes.
    top_sites:           the allocation sites that grew most: "file:line: +N bytes in M blocks".
    """

    leaked: bool
    iterations: int
    warmup: int
    tolerance_bytes: int
    per_iteration_bytes: float
    python_growth_bytes: int
    native_growth_bytes: int | None
    rss_growth_bytes: int | None
    cuda_growth_bytes: int | None
    top_sites: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verdict = "memory leak" if self.leaked else "no leak"
        lines = [
            f"{verdict}: {self.per_iteration_bytes:.0f} bytes per call "
            f"over {self.iterations} calls (tolerance {self.tolerance_bytes}); "
            f"python heap {self.python_growth_bytes:+d} B, "
            f"C heap {_signed(self.native_growth_bytes)}, "
            f"RSS {_signed(self.rss_growth_bytes)}, CUDA {_signed(self.cuda_growth_bytes)}"
        ]
        lines.extend(f"  {site}" for site in self.top_sites)
        return "\n".join(lines)


def _signed(value: int | None) -> str:
    return "n/a" if value is None else f"{value:+d} B"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


def malloc_in_use() -> int | None:
    """Bytes the C heap has handed out and not got back (glibc >= 2.33); None elsewhere."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _python_snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot()


def _own_traces_left_out(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Leave out what tracemalloc, this module and imports allocate (filter after both snapshots:
    the first filtering compiles patterns, which would count as growth)."""
    return snapshot.filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"),
        ]
    )


def _growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> tuple[int, list[str]]:
    """Total growth of the Python heap, and the sites that grew most."""
    diffs = _own_traces_left_out(after).compare_to(_own_traces_left_out(before), "lineno")
    total = sum(diff.size_diff for diff in diffs)
    growing = sorted((d for d in diffs if d.size_diff > 0), key=lambda d: -d.size_diff)
    sites = [
        f"{d.traceback[0].filename}:{d.traceback[0].lineno}: +{d.size_diff} bytes in {d.count_diff:+d} blocks"
        for d in growing[:TOP_N]
    ]
    return total, sites


def check_memory_leak(
    call: Callable[[], Any],
    iterations: int = 100,
    warmup: int = 10,
    tolerance_bytes: int = DEFAULT_TOLERANCE_BYTES,
) -> LeakReport:
    """Call `call` `warmup` times, then `iterations` times, and report memory that kept growing.

    Caches that fill up during warm-up are not counted; anything still growing afterwards is.
    """
    if iterations < 1 or warmup < 0:
        raise ValueError(f"need iterations >= 1 and warmup >= 0, got {iterations} and {warmup}")
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    rss_bytes(), malloc_in_use()  # first calls import and load: not during the measurement
    try:
        for _ in range(warmup):
            call()
        before = _python_snapshot()
        native_before, rss_before, cuda_before = (
            malloc_in_use(),
            rss_bytes(),
            cuda_allocated(synchronize=True),
        )
        for _ in range(iterations):
            call()
        gc.collect()
        native_after, rss_after = malloc_in_use(), rss_bytes()
        cuda_after = cuda_allocated(synchronize=True)
        after = _python_snapshot()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    python_growth, sites = _growth(before, after)
    native_growth = _difference(native_before, native_after)
    rss_growth = _difference(rss_before, rss_after)
    cuda_growth = None if cuda_after is None else cuda_after - (cuda_before or 0)
    rss_counted = (rss_growth or 0) - RSS_SLACK_BYTES
    worst = max(python_growth, native_growth or 0, rss_counted, cuda_growth or 0, 0)
    per_iteration = worst / iterations
    return LeakReport(
        leaked=per_iteration > tolerance_bytes,
        iterations=iterations,
        warmup=warmup,
        tolerance_bytes=tolerance_bytes,
        per_iteration_bytes=per_iteration,
        python_growth_bytes=python_growth,
        native_growth_bytes=native_growth,
        rss_growth_bytes=rss_growth,
        cuda_growth_bytes=cuda_growth,
        top_sites=sites,
    )


def _difference(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else after - before
