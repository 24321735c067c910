"""The export thread of tracing: finished `SpanRecord`s in, OTLP out, off the event loop.

The request path only appends a record to a bounded deque: a span, with the children kept on it (a
request's wait in the queue, its encoding, a model's run for it alone: `SpanRecord.add_child`),
made into spans of their own only here. When the deque holds `OTEL_BSP_MAX_QUEUE_SIZE` records, a
new one is dropped with its children and counted, as the SDK's batch processor drops spans. This
thread does what that processor would: it exports every `OTEL_BSP_SCHEDULE_DELAY` milliseconds, or
as soon as `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` records wait, in exports of at most that many spans.
An OTLP exporter of `otlp_exporters` is sent each export as bytes (`otlp_encoding`); any other
exporter gets the SDK's own spans (`ReadableSpan`)."""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from modelpod.observe.otlp_encoding import OtlpEncoder
from modelpod.observe.otlp_exporters import Encoded
from modelpod.observe.span_records import SERVER, SpanRecord

logger = logging.getLogger("modelpod.observe")

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NO_STATE = TraceState()


def trace_state(header: str) -> TraceState:
    """A caller's `tracestate` header as OpenTelemetry's `TraceState` (empty for none)."""
    return TraceState.from_header([header]) if header else _NO_STATE


def _setting(name: str, default: int) -> int:
    """One of the SDK's `OTEL_BSP_*` settings (a positive integer), or its default."""
    try:
        return max(int(os.environ.get(name, default)), 1)
    except ValueError:
        return default


class SpanExport:
    """Collects finished span records; a thread of its own exports them in batches."""

    def __init__(self, exporter: SpanExporter, resource: Resource, scope: InstrumentationScope) -> None:
        self.exporter = exporter
        self.resource = resource
        self.scope = scope
        self.max_queue = _setting("OTEL_BSP_MAX_QUEUE_SIZE", 2048)  # records
        # Spans per export. The SDK's default is 512; here it is 2048: an export costs this thread
        # about a millisecond whatever its size (measured), and a request's spans are small
        # (2048 of them make about 250 KB of OTLP).
        self.batch_size = _setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 2048)
        self.wake_at = max(min(self.batch_size, self.max_queue // 2), 1)  # records waiting
        self.delay = _setting("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.dropped = 0
        self._told = 0  # drops already logged
        self.encoder = OtlpEncoder(resource.attributes, scope.name, scope.version or "", resource.schema_url)
        self.encoder.trace_state = lambda header: TraceState.from_header([header]).to_header()
        self._pending: collections.deque[SpanRecord] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # one export at a time (the thread's, or a flush)
        self._thread = threading.Thread(target=self._run, name="modelpod-spans", daemon=True)
        self._thread.start()

    def put(self, record: SpanRecord) -> None:
        """(Any thread) queue a finished span; never waits. (deque's append is atomic.)"""
        pending = self._pending
        if len(pending) >= self.max_queue:
            self.dropped += record.span_count
            return
        pending.append(record)
        # An export's worth: no need to wait for the schedule. (>=, and the flag read: two threads
        # putting at once may both find the queue past the mark, and neither at it.)
        if len(pending) >= self.wake_at and not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            full = self._wake.wait(self.delay)
            self._wake.clear()
            # Woken by an export's worth: full exports only (what comes while one is sent waits
            # for more, not sent a few spans at a time); the schedule's time come: everything.
            self.flush(self.wake_at if full else 1)

    def flush(self, at_least: int = 1) -> None:
        """Export what waits now, an export at a time, while `at_least` records wait."""
        if self.dropped > self._told:  # said here, on this thread, not on the request path
            logger.warning(
                "%d spans dropped: more waited for export than OTEL_BSP_MAX_QUEUE_SIZE (%d)",
                self.dropped - self._told, self.max_queue,
            )  # fmt: skip
            self._told = self.dropped
        with self._lock:
            while len(self._pending) >= at_least:
                records, spans = self._take()
                try:
                    self._send(records, spans)
                except Exception:  # one bad export must not stop the others
                    logger.exception("could not export %d spans", spans)

    def _take(self) -> tuple[list[SpanRecord], int]:
        """The oldest records up to an export of `batch_size` spans (children counted; a record
        with more children than that goes alone), and their span count."""
        pending = self._pending
        records = [pending.popleft()]
        spans = records[0].span_count
        while pending and spans + pending[0].span_count <= self.batch_size:
            records.append(pending.popleft())
            spans += records[-1].span_count
        return records, spans

    def _send(self, records: Sequence[SpanRecord], spans: int) -> None:
        send = getattr(self.exporter, "export_encoded", None)
        if send is not None and send(Encoded(self.encoder.request(records), spans)) is not None:
            return
        self.exporter.export([self.readable(span) for record in records for span in record.spans()])

    def readable(self, record: SpanRecord) -> ReadableSpan:
        """The SDK's span of a record, as the SDK would have made it."""
        state = trace_state(record.state)
        context = SpanContext(record.trace_id, record.span_id, False, _SAMPLED, state)
        parent = None
        if record.parent_id:
            parent = SpanContext(record.trace_id, record.parent_id, record.remote_parent, _SAMPLED, state)
        links = tuple(Link(SpanContext(t, s, False, _SAMPLED, state)) for t, s in record.links)
        status = Status(StatusCode.UNSET) if record.error is None else Status(StatusCode.ERROR, record.error)
        return ReadableSpan(
            record.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=record.attributes,
            links=links,
            kind=SpanKind.SERVER if record.kind == SERVER else SpanKind.INTERNAL,
            status=status,
            start_time=record.start,
            end_time=record.end,
            instrumentation_scope=self.scope,
        )

    def shutdown(self, timeout: float = 30.0) -> None:
        """Export what is queued, stop the thread, then the exporter (at the server's stop)."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush()
        self.exporter.shutdown()
