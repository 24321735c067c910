"""OpenTelemetry tracing (the `otel` extra, `--otel` / `MODELPOD_OTEL`): a server span per request,
continuing the caller's W3C `traceparent`, with child spans for its wait in the queue and for the
batch that computed it (one span per batch, linked to every request span it served).

Only `modelpod serve --otel` imports this module: with tracing off nothing of OpenTelemetry is
loaded and the edges skip it with one `None` check. The exporter is OTLP, configured by the standard
variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` = `grpc` or `http/protobuf`,
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...).

The request path records plain `SpanRecord`s (ids, times, attributes; the sampler asked once per
request, at its edge); the export thread (`span_export`) makes them the SDK's spans and hands them
to the batch processor and its exporter. What is exported is what the SDK's own spans would be.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from modelpod._version import __version__
from modelpod.observe import timing as timings
from modelpod.observe.events import BatchDone, Recorder, RequestDone, RouteChosen, request_trace
from modelpod.observe.otlp_exporters import otlp_exporter
from modelpod.observe.span_export import SpanExport, trace_state
from modelpod.observe.span_records import SERVER, SpanRecord, caller_of, new_trace_id

Caller = tuple[int, int, int, str]  # the caller's trace id, span id, flags and tracestate
_EMPTY = otel_context.Context()
_FLAGS = (TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.SAMPLED))


def configured(exporter: SpanExporter | None = None) -> Tracing:
    """Tracing exporting in batches, off the request path, to `exporter` (OTLP by default); its
    sampler comes from `OTEL_TRACES_SAMPLER` (parent-based, always on, by default)."""
    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "modelpod"
    made = TracerProvider(resource=Resource.create(attributes))
    # The spans of a model's own instrumentation, through the SDK's processor and an exporter of their own.
    made.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else otlp_exporter()))
    scope = InstrumentationScope("modelpod", __version__)
    return Tracing(
        made, SpanExport(exporter if exporter is not None else otlp_exporter(), made.resource, scope)
    )


def _fixed_decision() -> Callable[[Caller | None], bool] | None:
    """The decision of the samplers that need no call (the default among them): each request's
    span is sampled as its caller's was, or always, or never; None for any other sampler."""
    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    return {
        "parentbased_always_on": lambda caller: caller is None or bool(caller[2] & 1),
        "parentbased_always_off": lambda caller: caller is not None and bool(caller[2] & 1),
        "always_on": lambda caller: True,
        "always_off": lambda caller: False,
    }.get(name)


class _RequestSpan(NonRecordingSpan):
    """A request's span as OpenTelemetry's API sees it: its `SpanContext` made when something asks
    for it (a model's own call or span joining the trace), not for every request."""

    def __init__(self, record: SpanRecord) -> None:
        self.record = record
        self.made: SpanContext | None = None

    def get_span_context(self) -> SpanContext:
        if self.made is None:
            record = self.record
            state = trace_state(record.state)
            self.made = SpanContext(record.trace_id, record.span_id, False, _FLAGS[record.sampled], state)
        return self.made

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


class ServerSpan:
    """One request's span at an edge; the service's recorder adds the model's attributes to it.
    Finished, it gets an `encode` child: from the service's answer to the response made."""

    __slots__ = ("export", "record", "restore")

    def __init__(self, record: SpanRecord, export: SpanExport, restore: Token[object | None] | None = None):
        self.record = record
        self.export = export
        self.restore = restore  # a request inside a stream: the stream's span, current again after

    def finish(self, status: str, error_id: str = "") -> None:
        record = self.record
        if record.sampled:
            attributes = record.attributes
            attributes["modelpod.status"] = status
            if error_id:
                attributes["modelpod.error_id"] = error_id
                record.error = f"error id {error_id}"
            record.end = ended = time.time_ns()
            timing = timings.current.get()
            if (
                timing is not None
                and timing.answered is not None
                and "modelpod.stream_items" not in attributes
            ):
                began = ended - int((time.monotonic() - timing.answered) * 1e9)
                record.add_child("encode", began, ended)
            self.export.put(record)
        if self.restore is not None:
            request_trace.reset(self.restore)


class Tracing(Recorder):
    """Starts the edges' request spans and records the service's events as their child spans."""

    def __init__(self, tracer_provider: TracerProvider, export: SpanExport) -> None:
        self.provider = tracer_provider
        self.export = export
        self.sampler = tracer_provider.sampler
        self.decided = _fixed_decision()

    def start(self, carrier: Mapping[str, str], name: str, attributes: Mapping[str, str]) -> ServerSpan:
        """A server span continuing the caller's trace, current in this context (a request's task)."""
        caller = caller_of(carrier)
        trace_id = new_trace_id() if caller is None else caller[0]
        values = dict(attributes)
        sampled = self._sampled(caller, trace_id, name, values)
        if caller is None:
            record = SpanRecord(name, trace_id, 0, sampled, "", SERVER, None, values)
        else:
            record = SpanRecord(name, trace_id, caller[1], sampled, caller[3], SERVER, None, values, True)
        request_trace.set(record)  # its trace id in log lines too (`logs.trace_id_of`)
        # Current for OpenTelemetry too, so that calls a model makes (RemoteModel, Client) and its
        # own instrumentation join it. The request's task owns this context: nothing to detach.
        otel_context.attach(trace.set_span_in_context(_RequestSpan(record), _EMPTY))
        return ServerSpan(record, self.export)

    def _sampled(self, caller: Caller | None, trace_id: int, name: str, attributes: dict[str, Any]) -> bool:
        """The sampler's decision for a request (its child spans follow it)."""
        if self.decided is not None:
            return self.decided(caller)
        parent = _EMPTY
        if caller is not None:
            state = trace_state(caller[3])
            remote = SpanContext(caller[0], caller[1], True, TraceFlags(caller[2] & 1), state)
            parent = trace.set_span_in_context(NonRecordingSpan(remote), _EMPTY)
        result = self.sampler.should_sample(parent, trace_id, name, SpanKind.SERVER, attributes)
        attributes.update(result.attributes or {})
        return result.decision in (Decision.RECORD_AND_SAMPLE,)

    def child(self, name: str, attributes: Mapping[str, str]) -> ServerSpan:
        """A request's span inside the context's current one (a request on a stream)."""
        parent = request_trace.get()
        values = dict(attributes)
        if isinstance(parent, SpanRecord):
            record = SpanRecord(name, parent.trace_id, parent.span_id, parent.sampled, parent.state, SERVER,
                                None, values)  # fmt: skip
        else:
            trace_id = new_trace_id()
            record = SpanRecord(name, trace_id, 0, self._sampled(None, trace_id, name, values), "", SERVER,
                                None, values)  # fmt: skip
        return ServerSpan(record, self.export, request_trace.set(record))

    def on_request(self, event: RequestDone) -> None:
        record = event.trace
        if not isinstance(record, SpanRecord) or not record.sampled:
            return
        if event.protocol == "pipeline":  # a step of a served pipeline: a span of its own
            self._step_span(record, event)
            return
        attributes = record.attributes
        attributes["modelpod.model"] = event.model
        attributes["modelpod.version"] = event.version
        attributes["modelpod.protocol"] = event.protocol
        attributes["modelpod.outcome"] = event.outcome
        if event.items is not None:
            attributes["modelpod.stream_items"] = event.items

    def _step_span(self, request: SpanRecord, event: RequestDone) -> None:
        ended = time.time_ns()
        step = request.child(
            f"step {event.model}",
            ended - int(event.seconds * 1e9),
            ended,
            {
                "modelpod.model": event.model,
                "modelpod.version": event.version,
                "modelpod.outcome": event.outcome,
            },
        )
        if not event.served:
            step.error = event.message or event.outcome
        self.export.put(step)

    def on_route(self, event: RouteChosen) -> None:
        """A router's hop: its choosing, a child of the request's span."""
        record = event.trace
        if not isinstance(record, SpanRecord) or not record.sampled:
            return
        ended = time.time_ns()
        attributes = {
            "modelpod.router": event.router,
            "modelpod.version": event.version,
            "modelpod.route_target": event.target,
        }
        hop = record.child(f"route {event.router}", ended - int(event.seconds * 1e9), ended, attributes)
        self.export.put(hop)

    def on_batch(self, event: BatchDone) -> None:
        served = [
            (record, wait)
            for record, wait in zip(event.traces, event.waits, strict=False)
            if isinstance(record, SpanRecord) and record.sampled
        ]
        if not served:
            return
        ended = time.time_ns()  # the batcher tells its observer as soon as the batch is computed
        started = ended - int(event.compute * 1e9)
        put = self.export.put
        for record, wait in served:
            if record.end:  # answered already (its deadline passed while this batch ran): on its own
                put(record.child("queue", started - int(wait * 1e9), started))
            else:  # exported with the request's span
                record.add_child("queue", started - int(wait * 1e9), started)
        self._batch_span(event, [record for record, _ in served], started, ended)

    def _batch_span(self, event: BatchDone, requests: Sequence[SpanRecord], start: int, end: int) -> None:
        """One span per batch, a child of its first request's span and linked to all of them."""
        attributes = {
            "modelpod.model": event.model,
            "modelpod.version": event.version,
            "modelpod.batch_rows": event.rows,
            "modelpod.batch_requests": len(event.waits),
        }
        links = tuple((request.trace_id, request.span_id) for request in requests)
        first = requests[0]
        if len(requests) == 1 and event.worker is None and not first.end:
            # A run for one request alone (a model that does not batch): kept on its request's
            # span, exported with it, as its queue wait is.
            first.add_child("batch", start, end, attributes, links)
            return
        batch = first.child("batch", start, end, attributes)
        batch.links = links
        self.export.put(batch)
        if event.worker is not None:  # the worker process's own time, at the end of the batch's
            self.export.put(batch.child("worker", end - int(event.worker * 1e9), end))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter (at the server's stop)."""
        self.export.shutdown()
        self.provider.shutdown()
