"""The payload capture's counts as Prometheus metrics, read at scrape time: records written,
dropped (the queue was full), failed (redaction or encoding raised), and values truncated."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class CaptureMetrics(Collector):
    """`modelpod_capture_records_total{model, outcome}` and `modelpod_capture_truncated_values_total`."""

    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        records = CounterMetricFamily(
            "modelpod_capture_records",
            "Requests sampled for capture: written, dropped (queue full) or failed",
            labels=["model", "outcome"],
        )
        truncated = CounterMetricFamily(
            "modelpod_capture_truncated_values",
            "Captured values over the size limit, stored without their data",
            labels=["model"],
        )
        for (model, what), count in sorted(self.counts().items()):
            if what == "truncated":
                truncated.add_metric([model], count)
            else:
                records.add_metric([model, what], count)
        yield records
        yield truncated
