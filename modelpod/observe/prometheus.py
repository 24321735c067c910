"""Prometheus metrics of one server (`GET /metrics`), in a registry of its own.

Recorded as things happen: requests by protocol and outcome, request latency, model compute time,
time queued, batch sizes, training jobs, streamed items and streams cancelled. Read when scraped:
queue depth, requests in flight, and the pool's loads, evictions and load time. Token-level batching
adds sequences per step, tokens made, time to first token, sequences retired and, read when
scraped, the sequences running and those waiting to join.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from modelpod.observe.events import (
    BatchDone,
    QuotaRefused,
    Recorder,
    RequestDone,
    RolloutDecided,
    ShadowDone,
    StepDone,
    TrainingChanged,
)


class PoolCounts(Protocol):
    """What the model pool counts, read at scrape time."""

    @property
    def loads(self) -> int: ...
    @property
    def load_failures(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def load_seconds(self) -> float: ...
    @property
    def costs(self) -> Mapping[tuple[str, str], int]: ...


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MODEL = ["model", "version"]


PerVersion = Callable[[], Mapping[tuple[str, str], int]]  # a count per (model, version), read when scraped


class ServerMetrics(Recorder):
    """The metrics the service's events are recorded into, and their text exposition."""

    def __init__(
        self,
        pool_counts: Callable[[], PoolCounts],
        queue_depths: Callable[[], Mapping[tuple[str, str], int]],
        in_flight: Callable[[], int],
        running: PerVersion = dict,
        waiting: PerVersion = dict,
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelpod_requests", "Requests answered, by protocol and outcome",
            [*_MODEL, "protocol", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "modelpod_request_duration_seconds", "Time from a request's arrival in the service to its answer",
            [*_MODEL, "protocol"], buckets=_SECONDS, registry=self.registry,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "modelpod_compute_duration_seconds", "Time the model computed, per call or batch", _MODEL,
            buckets=_SECONDS, registry=self.registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "modelpod_queue_wait_seconds", "Time a request waited before its model call started", _MODEL,
            buckets=_SECONDS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "modelpod_batch_size_rows", "Rows per model call", _MODEL, buckets=_ROWS, registry=self.registry
        )
        self.training_running = Gauge(
            "modelpod_training_jobs_running", "Training jobs running", _MODEL, registry=self.registry
        )
        self.training_jobs = Counter(
            "modelpod_training_jobs", "Training jobs ended, by outcome (succeeded or failed)",
            [*_MODEL, "outcome"], registry=self.registry,
        )  # fmt: skip
        self.streams_cancelled = Counter(
            "modelpod_streams_cancelled", "Streams stopped early because their client went away",
            [*_MODEL, "protocol"], registry=self.registry,
        )  # fmt: skip
        self.stream_items = Counter(
            "modelpod_stream_items", "Items streamed to clients", _MODEL, registry=self.registry
        )
        self.shadow_requests = Counter(
            "modelpod_shadow_requests", "Requests also sent to a shadow version, by outcome (compared, "
            "error, shed)", [*_MODEL, "outcome"], registry=self.registry,
        )  # fmt: skip
        self.shadow_agreement = Counter(
            "modelpod_shadow_agreement", "Shadow answers compared with the served ones, per output, by "
            "whether they agreed", [*_MODEL, "output", "agreed"], registry=self.registry,
        )  # fmt: skip
        self.shadow_latency_difference = Summary(
            "modelpod_shadow_latency_difference_seconds", "The shadow's time minus the served answer's",
            _MODEL, registry=self.registry,
        )  # fmt: skip
        self.rollout_decisions = Counter(
            "modelpod_rollout_decisions", "Rollout decisions on a candidate version (step, promote, "
            "rollback)", [*_MODEL, "decision"], registry=self.registry,
        )  # fmt: skip
        self.quota_refusals = Counter(
            "modelpod_quota_refusals", "Requests refused because their caller was over a quota, by the "
            "caller's name and the limit (rate or concurrency)", ["caller", "model", "limit"],
            registry=self.registry,
        )  # fmt: skip
        self._add_step_metrics()
        self.registry.register(_LiveState(pool_counts, queue_depths, in_flight, (running, waiting)))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _add_step_metrics(self) -> None:
        self.step_sequences = Histogram(
            "modelpod_step_sequences", "Sequences advanced together by one step of a running batch", _MODEL,
            buckets=_ROWS, registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "modelpod_generated_tokens", "Tokens made by running batches", _MODEL, registry=self.registry
        )
        self.first_token_seconds = Histogram(
            "modelpod_time_to_first_token_seconds", "Time from a sequence's arrival to its first token",
            _MODEL, buckets=_SECONDS, registry=self.registry,
        )  # fmt: skip
        self.sequences_retired = Counter(
            "modelpod_sequences_retired", "Sequences that left a running batch, by why: ended (by the "
            "model), closed (their reader had enough, or their client left), failed",
            [*_MODEL, "reason"], registry=self.registry,
        )  # fmt: skip

    def on_step(self, event: StepDone) -> None:
        labels = (event.model, event.version)
        if event.sequences:
            self.step_sequences.labels(*labels).observe(event.sequences)
            self.compute_seconds.labels(*labels).observe(event.compute)
        self.tokens.labels(*labels).inc(event.tokens)
        for wait in event.first_token_waits:
            self.first_token_seconds.labels(*labels).observe(wait)
        for reason, count in event.retired.items():
            self.sequences_retired.labels(*labels, reason).inc(count)

    def on_request(self, event: RequestDone) -> None:
        if event.items is None:
            self.request(event.model, event.version, event.protocol, event.outcome, event.seconds)
        else:
            self.stream(event.model, event.version, event.protocol, event.outcome, event.seconds, event.items)

    def on_batch(self, event: BatchDone) -> None:
        self.batch(event.model, event.version, event.rows, event.compute, event.waits)

    def on_shadow(self, event: ShadowDone) -> None:
        self.shadow_requests.labels(event.model, event.version, event.outcome).inc()
        for output, agreed in event.agreement.items():
            self.shadow_agreement.labels(event.model, event.version, output, str(agreed).lower()).inc()
        if event.latency_difference is not None:
            self.shadow_latency_difference.labels(event.model, event.version).observe(
                event.latency_difference
            )

    def on_rollout(self, event: RolloutDecided) -> None:
        self.rollout_decisions.labels(event.model, event.version, event.decision).inc()

    def on_quota(self, event: QuotaRefused) -> None:
        self.quota_refusals.labels(event.caller, event.model, event.limit).inc()

    def on_training(self, event: TrainingChanged) -> None:
        if event.state == "running":
            self.training_started(event.model, event.version)
        else:
            self.training_ended(event.model, event.version, event.state)

    def request(self, model: str, version: str, protocol: str, outcome: str, seconds: float) -> None:
        self._labelled(self.requests, model, version, protocol, outcome).inc()
        self._labelled(self.request_seconds, model, version, protocol).observe(seconds)

    def batch(
        self, model: str, version: str, rows: int, compute_seconds: float, waits: Sequence[float]
    ) -> None:
        self._labelled(self.compute_seconds, model, version).observe(compute_seconds)
        self._labelled(self.batch_rows, model, version).observe(rows)
        queue = self._labelled(self.queue_seconds, model, version)
        for wait in waits:
            queue.observe(wait)

    def _labelled(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, kept: prometheus_client checks the labels and takes a lock on
        every call, and every request records into the same few children."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def training_started(self, model: str, version: str) -> None:
        self.training_running.labels(model, version).inc()

    def training_ended(self, model: str, version: str, outcome: str) -> None:
        self.training_running.labels(model, version).dec()
        self.training_jobs.labels(model, version, outcome).inc()

    def stream(
        self, model: str, version: str, protocol: str, outcome: str, seconds: float, items: int
    ) -> None:
        """A stream ended: a request (its latency the whole stream), its items, and whether its
        client left before the end (outcome "cancelled")."""
        self.request(model, version, protocol, outcome, seconds)
        self.stream_items.labels(model, version).inc(items)
        if outcome == "cancelled":
            self.streams_cancelled.labels(model, version, protocol).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveState(Collector):
    """What is read at scrape time rather than counted as it happens."""

    def __init__(
        self,
        pool_counts: Callable[[], PoolCounts],
        queue_depths: Callable[[], Mapping[tuple[str, str], int]],
        in_flight: Callable[[], int],
        sequences: tuple[PerVersion, PerVersion],
    ) -> None:
        self.pool_counts = pool_counts
        self.queue_depths = queue_depths
        self.in_flight = in_flight
        self.running, self.waiting = sequences  # token-level batching: in the batch, queued to join

    def collect(self) -> Iterator[Metric]:
        yield _per_version(
            "modelpod_queue_depth_rows", "Rows waiting to be batched, or requests for a model thread",
            self.queue_depths(),
        )  # fmt: skip
        yield _per_version(
            "modelpod_running_sequences",
            "Sequences in a running batch (token-level batching)",
            self.running(),
        )
        yield _per_version(
            "modelpod_waiting_sequences",
            "Sequences queued to join a running batch that is full (token-level batching)",
            self.waiting(),
        )
        yield GaugeMetricFamily(
            "modelpod_in_flight_requests", "Requests being answered", value=self.in_flight()
        )
        stats = self.pool_counts()
        yield CounterMetricFamily("modelpod_model_loads", "Model versions loaded", value=stats.loads)
        yield CounterMetricFamily(
            "modelpod_model_load_failures", "Model loads that failed", value=stats.load_failures
        )
        yield CounterMetricFamily("modelpod_model_evictions", "Model versions evicted", value=stats.evictions)
        yield CounterMetricFamily(
            "modelpod_model_load_seconds", "Time spent loading model versions", value=stats.load_seconds
        )
        loaded = GaugeMetricFamily("modelpod_model_memory_bytes", "Measured memory of each loaded version",
                                   labels=_MODEL)  # fmt: skip
        for (model, version), cost in stats.costs.items():
            loaded.add_metric([model, version], cost)
        yield loaded


def _per_version(name: str, help_text: str, values: Mapping[tuple[str, str], int]) -> GaugeMetricFamily:
    """A gauge with one sample per (model, version)."""
    gauge = GaugeMetricFamily(name, help_text, labels=_MODEL)
    for (model, version), value in values.items():
        gauge.add_metric([model, version], value)
    return gauge
