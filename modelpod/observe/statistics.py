"""Per-version counts and times in the shape of the Open Inference Protocol's statistics extension
(as Triton reports them): successes and failures with their total time, time queued, time computing,
and the same per batch size."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpod.observe.events import BatchDone, Recorder, RequestDone


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _VersionStats:
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute: _Duration = field(default_factory=_Duration)
    inference_count: int = 0  # rows computed
    execution_count: int = 0  # model calls (batches)
    last_inference_ms: int = 0
    by_batch_size: dict[int, _Duration] = field(default_factory=lambda: defaultdict(_Duration))


class Statistics(Recorder):
    """Thread-safe recorder of the service's events; read as the statistics extension's documents."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _VersionStats] = defaultdict(_VersionStats)

    def on_request(self, event: RequestDone) -> None:
        self.request(event.model, event.version, event.served, event.seconds)

    def on_batch(self, event: BatchDone) -> None:
        self.batch(event.model, event.version, event.rows, event.compute, event.waits)

    def request(self, model: str, version: str, ok: bool, seconds: float) -> None:
        with self._lock:
            stats = self._versions[(model, version)]
            (stats.success if ok else stats.fail).add(seconds)

    def batch(
        self, model: str, version: str, rows: int, compute_seconds: float, waits: Sequence[float]
    ) -> None:
        with self._lock:
            stats = self._versions[(model, version)]
            stats.compute.add(compute_seconds)
            stats.queue.add(sum(waits), count=len(waits))
            stats.inference_count += rows
            stats.execution_count += 1
            stats.last_inference_ms = int(time.time() * 1000)
            stats.by_batch_size[rows].add(compute_seconds)

    def document(self, model: str, versions: list[str]) -> dict[str, Any]:
        """`{"model_stats": [...]}` for the named versions, zeros for those not used yet."""
        with self._lock:
            return {"model_stats": [self._one(model, version) for version in versions]}

    def _one(self, model: str, version: str) -> dict[str, Any]:
        stats = self._versions.get((model, version), _VersionStats())
        zero = _Duration().as_dict()
        return {
            "name": model,
            "version": version,
            "last_inference": stats.last_inference_ms,
            "inference_count": stats.inference_count,
            "execution_count": stats.execution_count,
            "inference_stats": {
                "success": stats.success.as_dict(),
                "fail": stats.fail.as_dict(),
                "queue": stats.queue.as_dict(),
                "compute_input": zero,
                "compute_infer": stats.compute.as_dict(),
                "compute_output": zero,
                "cache_hit": zero,
                "cache_miss": zero,
            },
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": zero,
                    "compute_infer": d.as_dict(),
                    "compute_output": zero,
                }
                for size, d in sorted(stats.by_batch_size.items())
            ],
        }
