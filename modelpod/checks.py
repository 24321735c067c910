"""Model health checks: NaN/Inf outputs, memory leaks, and where the time goes.

Each check runs a zero-argument `call` (typically `lambda: model.predict(**example)`) and returns
a frozen report whose `str()` reads as a sentence or a table:

    check_nan(model, call)              -> NanReport      which output, which torch module first
    check_memory_leak(call, iterations) -> LeakReport     growth per call, where it was allocated
    profile(call, iterations)           -> ProfileReport  a torch.profiler or cProfile table

The checks hook into the model and measure the whole process: run them while the model is not
serving other requests, or other requests' work will be counted too. torch is never imported here
unless the model already did (or `profile(use_torch=True)` asks for it); psutil is used for RSS
when installed, /proc/self/statm or `resource` otherwise.
"""

from __future__ import annotations

import cProfile
import ctypes
import functools
import gc
import io
import os
import pstats
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelpod.model import Model

_MAX_DEPTH = 32
DEFAULT_TOLERANCE_BYTES = 1024
"""Growth per iteration (bytes) that `check_memory_leak` accepts as noise by default."""
RSS_SLACK_BYTES = 1 << 20
"""RSS growth (bytes, in total) ignored as allocator noise: malloc grows its arenas in steps."""
TOP_N = 10


def _loaded_torch() -> Any | None:
    """The torch module when something in this process already imported it, else None."""
    return sys.modules.get("torch")


# -- NaN / Inf -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NanReport:
    """What `check_nan` found.

    has_nan / has_inf:  whether any output holds NaN / ±Inf.
    first_module:       the qualified name (`net.2`) of the first torch module, in execution
                        order, whose output held NaN or Inf; None when none did or none was found.
    outputs_with_nan:   paths of the outputs holding NaN or Inf: "output", "output[0]",
                        "output['logits']".
    modules_hooked:     how many torch modules were watched (0 for a model without torch).
    """

    has_nan: bool
    has_inf: bool
    first_module: str | None
    outputs_with_nan: list[str] = field(default_factory=list)
    modules_hooked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.has_nan or self.has_inf or self.first_module)

    def __str__(self) -> str:
        kinds = " and ".join(k for k, found in (("NaN", self.has_nan), ("Inf", self.has_inf)) if found)
        text = f"{kinds} in {', '.join(self.outputs_with_nan)}" if kinds else "no NaN/Inf in the output"
        if self.first_module is not None and kinds:
            text += f"; first produced by torch module {self.first_module!r}"
        elif self.first_module is not None:
            text += f"; but torch module {self.first_module!r} produced NaN/Inf on the way"
        elif self.modules_hooked:
            text += f"; none of {self.modules_hooked} torch modules produced NaN/Inf"
        return text


def _nonfinite_flags(value: Any) -> tuple[bool, bool] | None:
    """(has NaN, has Inf) for a tensor, array or number; None for anything else (a container)."""
    torch = _loaded_torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return False, False
        data = value.detach()
        return bool(torch.isnan(data).any()), bool(torch.isinf(data).any())
    if isinstance(value, np.ndarray | np.generic | float | complex):
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            return False, False
        return bool(np.isnan(array).any()), bool(np.isinf(array).any())
    return None


def _walk_nonfinite(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, bool, bool]]:
    """(path, has NaN, has Inf) for each tensor, array or number below `value` not all finite."""
    flags = _nonfinite_flags(value)
    if flags is not None:
        if flags[0] or flags[1]:
            yield path, flags[0], flags[1]
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_nonfinite(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk_nonfinite(item, f"{path}[{index}]", depth + 1)


def _has_nonfinite(value: Any) -> bool:
    return next(_walk_nonfinite(value, ""), None) is not None


def _torch_modules(model: object) -> list[tuple[str, Any]]:
    """The torch modules a model holds, each with its attribute name, outermost first.

    Looked for in the model's own attributes, directly or inside a list, tuple or dict, and one
    attribute further down (`self.predictor.net` for a wrapped predictor class). Submodules are
    reached from these with `named_modules()`, so the depth of the network itself is unlimited.
    """
    torch = _loaded_torch()
    if torch is None:
        return []
    module_type = torch.nn.Module
    if isinstance(model, module_type):
        return [("", model)]
    roots: list[tuple[str, Any]] = []
    for name, value in _attributes(model):
        if isinstance(value, module_type):
            roots.append((name, value))
        elif isinstance(value, list | tuple | dict):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            roots.extend((f"{name}.{k}", v) for k, v in items if isinstance(v, module_type))
        elif not isinstance(value, type):
            roots.extend(
                (f"{name}.{inner}", v) for inner, v in _attributes(value) if isinstance(v, module_type)
            )
    return roots


def _attributes(obj: object) -> list[tuple[str, Any]]:
    try:
        return list(vars(obj).items())
    except TypeError:
        return []


def check_nan(model: Model, call: Callable[[], Any]) -> NanReport:
    """Run `call()` once and report NaN/Inf in its output, and the torch module that made it first.

    Forward hooks are put on every torch module the model holds (see `_torch_modules`) and are
    removed afterwards, also when `call` raises (the exception then propagates). Modules run
    through TorchScript or `torch.compile` may not call hooks.
    """
    first: list[str] = []
    handles: list[Any] = []
    seen: set[int] = set()

    def hook_for(name: str) -> Callable[[Any, Any, Any], None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            if not first and _has_nonfinite(output):
                first.append(name)

        return hook

    try:
        for root_name, root in _torch_modules(model):
            for sub_name, module in root.named_modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    qualified = ".".join(part for part in (root_name, sub_name) if part)
                    handles.append(module.register_forward_hook(hook_for(qualified or "model")))
        output = call()
    finally:
        for handle in handles:
            handle.remove()
    found = list(_walk_nonfinite(output, "output"))
    return NanReport(
        has_nan=any(nan for _, nan, _ in found),
        has_inf=any(inf for _, _, inf in found),
        first_module=first[0] if first else None,
        outputs_with_nan=[path for path, _, _ in found],
        modules_hooked=len(handles),
    )


# -- memory leaks ----------------------------------------------------------------------------


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


def rss_bytes() -> int | None:
    """The resident set size of this process: psutil, else /proc/self/statm, else peak RSS."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.Process().memory_info().rss)
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


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


def _cuda_allocated() -> int | None:
    """Bytes torch holds allocated on all CUDA devices; None when torch has not started CUDA."""
    torch = _loaded_torch()
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    torch.cuda.synchronize()
    return sum(int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count()))


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
        native_before, rss_before, cuda_before = malloc_in_use(), rss_bytes(), _cuda_allocated()
        for _ in range(iterations):
            call()
        gc.collect()
        native_after, rss_after, cuda_after = malloc_in_use(), rss_bytes(), _cuda_allocated()
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


# -- profiling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileReport:
    """Where `iterations` calls spent their time.

    backend:        "torch" (torch.profiler) or "cprofile".
    total_seconds:  wall time of all iterations, profiler overhead included.
    table:          the profiler's own table, top entries sorted by total self time: the time
                    in the entry itself, summed over all calls (torch "Self CPU" or "Self CUDA",
                    pstats "tottime").
    top:            (name, seconds) for the same entries, largest first.
    """

    backend: str
    total_seconds: float
    iterations: int
    table: str
    top: list[tuple[str, float]] = field(default_factory=list)

    def __str__(self) -> str:
        per_call = self.total_seconds / self.iterations * 1000
        return (
            f"{self.backend} profile: {self.iterations} calls in {self.total_seconds:.4f} s "
            f"({per_call:.3f} ms per call)\n{self.table}"
        )


def profile(call: Callable[[], Any], iterations: int = 10, use_torch: bool | None = None) -> ProfileReport:
    """Profile `iterations` calls of `call`.

    use_torch: True -> torch.profiler (ValueError when torch is not installed); False -> cProfile;
    None -> torch.profiler when the process has already imported torch (the model uses it),
    cProfile otherwise: torch.profiler sees only torch operations, so it would show nothing of a
    model that does not use torch.
    """
    if iterations < 1:
        raise ValueError(f"need iterations >= 1, got {iterations}")
    if use_torch is None:
        use_torch = _loaded_torch() is not None
    if not use_torch:
        return _profile_cprofile(call, iterations)
    from modelpod.devices import torch_available

    if not torch_available():
        raise ValueError("profile(use_torch=True) needs torch, which is not installed")
    return _profile_torch(call, iterations)


def _profile_cprofile(call: Callable[[], Any], iterations: int) -> ProfileReport:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        for _ in range(iterations):
            call()
    finally:
        profiler.disable()
    total = time.perf_counter() - start
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(TOP_N * 2)
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(entries.items(), key=lambda item: -float(item[1][2]))
    top = [(_function_name(*key), float(value[2])) for key, value in ranked[: TOP_N * 2]]
    return ProfileReport("cprofile", total, iterations, stream.getvalue().strip(), top)


def _function_name(filename: str, line: int, name: str) -> str:
    """pstats' spelling: `file:line(function)`, or `{built-in ...}` for C functions."""
    return name if filename == "~" and line == 0 else f"{filename}:{line}({name})"


def _profile_torch(call: Callable[[], Any], iterations: int) -> ProfileReport:
    import torch
    from torch.profiler import ProfilerActivity

    cuda = bool(torch.cuda.is_available())
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(iterations):
            call()
        if cuda:
            torch.cuda.synchronize()
    total = time.perf_counter() - start
    averages = profiler.key_averages()
    on_device = any(float(event.self_device_time_total) > 0 for event in averages)
    sort_key = "self_device_time_total" if on_device else "self_cpu_time_total"
    ranked = sorted(averages, key=lambda event: -float(getattr(event, sort_key)))
    top = [(str(event.key), float(getattr(event, sort_key)) / 1e6) for event in ranked[: TOP_N * 2]]
    table = averages.table(sort_by=sort_key, row_limit=TOP_N * 2) if len(averages) else ""
    if not table:
        table = "(no torch operations recorded; profile(use_torch=False) shows Python functions)"
    return ProfileReport("torch", total, iterations, table, top)
