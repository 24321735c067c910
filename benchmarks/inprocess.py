"""The in-process ceiling: the served models called directly, no server, no serialisation.

    python benchmarks/inprocess.py --workload mlp --batch 1 32 --seconds 3

Prints one JSON object per batch size: samples per second (rows per call x calls per second)
and the latency of one call. Runs in its own process, with no server running beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from measurement import Measurement
from mlp_numpy import sample_row

SENTENCE = "A short sentence about serving models."


def measure(call: Callable[[], Any], batch: int, seconds: float, warmup: float = 0.5) -> Measurement:
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until:
        call()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    while (began := time.perf_counter()) < stop_at:
        call()
        latencies.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - started
    p50, p99 = (np.percentile(latencies, [50, 99]) * 1000).tolist()
    return Measurement(
        batch * len(latencies) / elapsed, p50, p99, 0, unit="samples/s", requests=len(latencies)
    )


def calls(workload: str, data_path: str) -> Callable[[int], Callable[[], Any]]:
    """For a batch size, a function that runs the model once on that many samples."""
    import models

    if workload == "mlp":
        mlp = models.MLP(data_path=data_path)
        mlp.setup()
        row = np.asarray([sample_row()], dtype=np.float32)

        def mlp_batch(batch: int) -> Callable[[], Any]:
            x = np.repeat(row, batch, axis=0)
            return lambda: mlp.predict(x)

        return mlp_batch
    if workload == "minilm":
        minilm = models.MiniLM(data_path=data_path)
        minilm.setup()

        def for_batch(batch: int) -> Callable[[], Any]:
            if batch == 1:
                return lambda: minilm.predict(SENTENCE)
            items = [{"text": SENTENCE}] * batch
            return lambda: minilm.predict_batch(items)

        return for_batch
    raise ValueError(f"unknown workload {workload!r}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=["mlp", "minilm"], required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=3.0)
    options = parser.parse_args()
    with TemporaryDirectory(prefix="modelpod-inprocess-") as data_path:
        for_batch = calls(options.workload, data_path)
        for batch in options.batch:
            result = measure(for_batch(batch), batch, options.seconds)
            print(json.dumps({"batch": batch, **result.as_json()}), flush=True)


if __name__ == "__main__":
    main()
