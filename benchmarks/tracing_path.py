"""What tracing costs one request, measured in one process, away from the noise of a loaded server:
the spans an edge and the service record for a request (its server span, `queue`, `batch`,
`encode`; less what the same request's events cost without tracing), then their export (written as
OTLP and sent over HTTP to a collector in this process).

    python benchmarks/tracing_path.py [--requests 20000] [--repeats 5]

Prints the CPU microseconds per request of each part (the median of the repeats, and their range),
to set beside a server's CPU per request without tracing (`tracing_cost.py`).
"""

from __future__ import annotations

import argparse
import contextvars
import gc
import os
import statistics
import time

from tracing_cost import Collector  # benchmarks/ is on the path

from modelpod.observe import timing as timings
from modelpod.observe import tracing
from modelpod.observe.events import BatchDone, RequestDone, request_trace

ATTRIBUTES = {
    "http.request.method": "POST",
    "http.route": "/v2/models/{name}/infer",
    "url.path": "/v2/models/mlp/infer",
}
CALLER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def one_request(traced: tracing.Tracing) -> None:
    timing = timings.begin()
    span = traced.start(CALLER, "POST /v2/models/{name}/infer", ATTRIBUTES)
    record = request_trace.get()
    traced.on_batch(BatchDone("mlp", "1", 1, 0.001, [0.0005], [record]))
    traced.on_request(RequestDone("mlp", "1", "http_v2", "ok", 0.002, trace=record))
    timing.answered = time.monotonic()
    span.finish("200")


def untraced_request(traced: tracing.Tracing) -> None:
    """The same request's events without tracing: what a request pays anyway, subtracted."""
    timing = timings.begin()
    record = request_trace.get()
    BatchDone("mlp", "1", 1, 0.001, [0.0005], [record])
    RequestDone("mlp", "1", "http_v2", "ok", 0.002, trace=record)
    timing.answered = time.monotonic()


def measure(traced: tracing.Tracing, requests: int) -> tuple[float, float]:
    """CPU µs per request: recording its spans, then exporting them."""
    started = time.process_time()
    for _ in range(requests):
        contextvars.copy_context().run(untraced_request, traced)  # a request's task has its own context
    bare = time.process_time()
    for _ in range(requests):
        contextvars.copy_context().run(one_request, traced)
    recorded = time.process_time()
    traced.export.flush()
    exported = time.process_time()
    return (recorded - bare - (bare - started)) / requests * 1e6, (exported - recorded) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    collector = Collector()
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_MAX_QUEUE_SIZE=str(options.requests * 4),
    )
    traced = tracing.configured()
    gc.collect()  # the server's garbage collection, as `modelpod serve` tunes it
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    export = traced.export  # its thread stopped: `flush` exports here, measured apart from recording
    export._stopping = True
    export._wake.set()
    export._thread.join()
    measure(traced, 1000)  # warm-up
    recording, exporting = zip(
        *(measure(traced, options.requests) for _ in range(options.repeats)), strict=True
    )
    for name, figures in (("recording", recording), ("exporting", exporting)):
        print(f"{name}: {statistics.median(figures):.1f} µs/request ({min(figures):.1f}-{max(figures):.1f})")
    total = [r + e for r, e in zip(recording, exporting, strict=True)]
    print(f"together: {statistics.median(total):.1f} µs/request; {collector.exports} OTLP exports, "
          f"{traced.export.dropped} spans dropped")  # fmt: skip
    traced.shutdown()


if __name__ == "__main__":
    main()
