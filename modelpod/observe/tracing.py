"""OpenTelemetry tracing (the `otel` extra, `--otel` / `MODELPOD_OTEL`): a server span per request,
continuing the caller's W3C `traceparent`, with child spans for its wait in the queue and for the
batch that computed it (one span per batch, linked to every request span it served).

Only `modelpod serve --otel` imports this module: with tracing off nothing of OpenTelemetry is
loaded and the edges skip it with one `None` check. The exporter is OTLP, configured by the standard
variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL` = `grpc` or `http/protobuf`,
`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, ...).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextvars import Token

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from modelpod._version import __version__
from modelpod.observe import logs
from modelpod.observe import timing as timings
from modelpod.observe.events import BatchDone, Recorder, RequestDone, RouteChosen, request_trace

_PROPAGATOR = TraceContextTextMapPropagator()  # W3C traceparent and tracestate


def otlp_exporter() -> SpanExporter:
    """The OTLP exporter the standard variables ask for: gRPC, or HTTP with protobuf (the default)."""
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def provider(exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider exporting in batches, off the request path; its sampler comes from
    `OTEL_TRACES_SAMPLER` (parent-based, always on, by default)."""
    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "modelpod"
    made = TracerProvider(resource=Resource.create(attributes))
    made.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else otlp_exporter()))
    return made


class ServerSpan:
    """One request's span at an edge; the service's recorder adds the model's attributes to it.
    Finished, it gets an `encode` child: from the service's answer to the response made."""

    __slots__ = ("restore", "span", "tracer")

    def __init__(self, span: Span, tracer: Tracer, restore: Token[object | None] | None = None) -> None:
        self.span = span
        self.tracer = tracer
        self.restore = restore  # a request inside a stream: the stream's span, current again after

    def finish(self, status: str, error_id: str = "") -> None:
        self.span.set_attribute("modelpod.status", status)
        if error_id:
            self.span.set_attribute("modelpod.error_id", error_id)
            self.span.set_status(Status(StatusCode.ERROR, f"error id {error_id}"))
        timing = timings.current.get()
        if timing is not None and timing.answered is not None and not _streamed(self.span):
            ended = time.time_ns()
            began = ended - int((time.monotonic() - timing.answered) * 1e9)
            self.tracer.start_span(
                "encode", context=trace.set_span_in_context(self.span), start_time=began
            ).end(end_time=ended)
        self.span.end()
        if self.restore is not None:
            request_trace.reset(self.restore)


def _streamed(span: Span) -> bool:
    """A stream's answer is sent as it comes: no encoding after it to show."""
    attributes = getattr(span, "attributes", None) or {}
    return "modelpod.stream_items" in attributes


class Tracing(Recorder):
    """Starts the edges' request spans and records the service's events as their child spans."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self.provider = tracer_provider
        self.tracer = tracer_provider.get_tracer("modelpod", __version__)

    def start(self, carrier: Mapping[str, str], name: str, attributes: Mapping[str, str]) -> ServerSpan:
        """A server span continuing the caller's trace, current in this context (a request's task)."""
        parent = _PROPAGATOR.extract(carrier)
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        request_trace.set(span)
        logs.trace_id.set(trace_id_of(span))
        # Current for OpenTelemetry too, so that calls a model makes (RemoteModel, Client) join it.
        # The request's task owns this context and ends with it: nothing to detach.
        otel_context.attach(trace.set_span_in_context(span, parent))
        return ServerSpan(span, self.tracer)

    def child(self, name: str, attributes: Mapping[str, str]) -> ServerSpan:
        """A request's span inside the context's current one (a request on a stream)."""
        parent = request_trace.get()
        context = trace.set_span_in_context(parent) if isinstance(parent, Span) else None
        span = self.tracer.start_span(name, context=context, kind=SpanKind.SERVER, attributes=attributes)
        return ServerSpan(span, self.tracer, request_trace.set(span))

    def on_request(self, event: RequestDone) -> None:
        span = event.trace
        if not isinstance(span, Span):
            return
        if event.protocol == "pipeline":  # a step of a served pipeline: a span of its own
            self._step_span(span, event)
            return
        span.set_attributes(
            {
                "modelpod.model": event.model,
                "modelpod.version": event.version,
                "modelpod.protocol": event.protocol,
                "modelpod.outcome": event.outcome,
            }
        )
        if event.items is not None:
            span.set_attribute("modelpod.stream_items", event.items)

    def _step_span(self, request: Span, event: RequestDone) -> None:
        ended = time.time_ns()
        step = self.tracer.start_span(
            f"step {event.model}",
            context=trace.set_span_in_context(request),
            start_time=ended - int(event.seconds * 1e9),
            attributes={
                "modelpod.model": event.model,
                "modelpod.version": event.version,
                "modelpod.outcome": event.outcome,
            },
        )
        if not event.served:
            step.set_status(Status(StatusCode.ERROR, event.message or event.outcome))
        step.end(end_time=ended)

    def on_route(self, event: RouteChosen) -> None:
        """A router's hop: its choosing, a child of the request's span."""
        if not isinstance(event.trace, Span):
            return
        ended = time.time_ns()
        hop = self.tracer.start_span(
            f"route {event.router}",
            context=trace.set_span_in_context(event.trace),
            start_time=ended - int(event.seconds * 1e9),
            attributes={
                "modelpod.router": event.router,
                "modelpod.version": event.version,
                "modelpod.route_target": event.target,
            },
        )
        hop.end(end_time=ended)

    def on_batch(self, event: BatchDone) -> None:
        served = [
            (span, wait)
            for span, wait in zip(event.traces, event.waits, strict=False)
            if isinstance(span, Span)
        ]
        if not served:
            return
        ended = time.time_ns()  # the batcher tells its observer as soon as the batch is computed
        started = ended - int(event.compute * 1e9)
        for span, wait in served:
            self._queue_span(span, started - int(wait * 1e9), started)
        self._batch_span(event, [span for span, _ in served], started, ended)

    def _queue_span(self, request: Span, start: int, end: int) -> None:
        parent = trace.set_span_in_context(request)
        self.tracer.start_span("queue", context=parent, start_time=start).end(end_time=end)

    def _batch_span(self, event: BatchDone, requests: Sequence[Span], start: int, end: int) -> None:
        """One span per batch, a child of its first request's span and linked to all of them."""
        batch = self.tracer.start_span(
            "batch",
            context=trace.set_span_in_context(requests[0]),
            links=[Link(span.get_span_context()) for span in requests],
            start_time=start,
            attributes={
                "modelpod.model": event.model,
                "modelpod.version": event.version,
                "modelpod.batch_rows": event.rows,
                "modelpod.batch_requests": len(event.waits),
            },
        )
        if event.worker is not None:  # the worker process's own time, at the end of the batch's
            worker = self.tracer.start_span(
                "worker", context=trace.set_span_in_context(batch), start_time=end - int(event.worker * 1e9)
            )
            worker.end(end_time=end)
        batch.end(end_time=end)

    def shutdown(self) -> None:
        """Export what is left and stop the exporter (at the server's stop)."""
        self.provider.shutdown()


def trace_id_of(span: object) -> str:
    """The trace id of a request's span as 32 hex digits; empty for no span."""
    if not isinstance(span, Span):
        return ""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
