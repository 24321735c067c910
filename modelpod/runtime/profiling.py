"""Where a model's time goes: `profile(call, iterations)` gives a torch.profiler table for a model
that uses torch, a cProfile table otherwise. torch is never imported here unless the model already
did, or `profile(use_torch=True)` asks for it."""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TOP_N = 10


def _loaded_torch() -> Any | None:
    """The torch module when something in this process already imported it, else None."""
    return sys.modules.get("torch")


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
    from modelpod.runtime.devices import torch_available

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
