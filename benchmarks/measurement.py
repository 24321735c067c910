"""What one load point measured, and the percentile arithmetic every load generator shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """Throughput (per second, in `unit`) and latency of one workload at one concurrency."""

    throughput: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    unit: str = "req/s"
    requests: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Measurement:
        return cls(**data)


def from_latencies(latencies_s: Sequence[float], seconds: float, errors: int) -> Measurement:
    """Requests per second and p50/p99 in ms from per-request latencies (seconds) over `seconds`."""
    if not latencies_s:
        return Measurement(0.0, None, None, errors)
    p50, p99 = np.percentile(np.asarray(latencies_s), [50, 99]) * 1000
    return Measurement(len(latencies_s) / seconds, float(p50), float(p99), errors, requests=len(latencies_s))
