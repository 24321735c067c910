"""Tracing's request path records plain spans, and its export thread writes OTLP itself: the bytes
it writes are the message the SDK's own encoder makes of the same spans; the sampler's decision is
made once per request, at its edge, and its child spans follow it."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from modelpod.observe import timing as timings
from modelpod.observe import tracing
from modelpod.observe.events import BatchDone, RequestDone, request_trace
from modelpod.observe.span_records import SERVER, SpanRecord, caller_of

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def exported() -> Iterator[tuple[tracing.Tracing, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    traced = tracing.configured(memory)
    yield traced, memory
    traced.shutdown()


def one_request(traced: tracing.Tracing, carrier: dict[str, str]) -> None:
    """A request's life as the edge and the service tell it, in a context of its own."""

    def run() -> None:
        timing = timings.begin()
        span = traced.start(
            carrier, "POST /v2/models/{name}/infer", {"http.route": "/v2/models/{name}/infer"}
        )
        record = request_trace.get()
        traced.on_batch(BatchDone("mlp", "1", 2, 0.001, [0.002], [record]))
        traced.on_request(RequestDone("mlp", "1", "http_v2", "ok", 0.004, trace=record))
        timing.answered = time.monotonic()  # the rest is encoding the answer
        span.finish("200")

    contextvars.copy_context().run(run)


def test_the_otlp_written_is_what_the_sdk_encodes(
    exported: tuple[tracing.Tracing, InMemorySpanExporter],
) -> None:
    traced, _ = exported
    request = SpanRecord("POST /x", 0xABC, 0x123, True, "vendor=a, other=b", SERVER, 1_000,
                         {"s": "text", "n": 3, "f": 0.5, "b": True, "list": ["a", "b"]}, True)  # fmt: skip
    request.end, request.error = 9_000, "error id 42"
    batch = request.child("batch", 2_000, 3_000, {"modelpod.batch_rows": -4})
    batch.links = ((0xABC, request.span_id), (0xDEF, 77))
    fresh = SpanRecord("GET /y", 0x1234, 0, True, kind=SERVER, start=5)  # a trace's first span
    fresh.end = 6
    records = [request, batch, fresh]
    written = ExportTraceServiceRequest.FromString(traced.export.encoder.request(records))
    assert written == encode_spans([traced.export.readable(r) for r in records])
    assert written.resource_spans[0].scope_spans[0].spans[1].links[1].span_id == (77).to_bytes(8, "big")


def test_children_kept_on_a_span_are_written_as_their_records_would_be(
    exported: tuple[tracing.Tracing, InMemorySpanExporter],
) -> None:
    traced, _ = exported
    request = SpanRecord("POST /x", 0xABC, 0x123, True, "vendor=a", SERVER, 1_000, {"s": "t"}, True)
    request.end = 9_000
    request.add_child("queue", 1_100, 1_500)
    request.add_child("batch", 1_500, 7_000, {"modelpod.batch_rows": 3}, ((0xABC, request.span_id),))
    request.add_child("encode", 8_000, 9_000)
    written = ExportTraceServiceRequest.FromString(traced.export.encoder.request([request]))
    spans = written.resource_spans[0].scope_spans[0].spans
    expected = encode_spans([traced.export.readable(r) for r in request.spans()])
    for ours, theirs in zip(spans, expected.resource_spans[0].scope_spans[0].spans, strict=True):
        theirs.span_id = ours.span_id  # a child's id is drawn when it is written
    assert written == expected
    assert [s.name for s in spans] == ["POST /x", "queue", "batch", "encode"]
    assert len({s.span_id for s in spans}) == 4
    assert spans[2].links[0].span_id == request.span_id.to_bytes(8, "big")
    assert {s.parent_span_id for s in spans[1:]} == {request.span_id.to_bytes(8, "big")}


def test_exports_hold_at_most_the_batch_size_in_spans_children_counted(
    exported: tuple[tracing.Tracing, InMemorySpanExporter],
) -> None:
    traced, memory = exported
    sizes: list[int] = []
    export = memory.export

    def counted(spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sizes.append(len(spans))
        return export(spans)

    memory.export = counted  # type: ignore[method-assign]
    traced.export.batch_size = 9
    for _ in range(5):  # four spans each, in one record: the request's, with queue, batch, encode
        one_request(traced, {})
    traced.export.flush()
    assert sizes == [8, 8, 4]  # two requests' spans fit, a third's would not: never split
    assert len(memory.get_finished_spans()) == 20


def test_spans_continue_the_caller_and_children_follow_the_request(
    exported: tuple[tracing.Tracing, InMemorySpanExporter],
) -> None:
    traced, memory = exported
    one_request(traced, {"traceparent": CALLER, "tracestate": "vendor=a"})
    traced.export.flush()
    spans = {span.name: span for span in memory.get_finished_spans()}
    assert sorted(spans) == ["POST /v2/models/{name}/infer", "batch", "encode", "queue"]
    request = spans["POST /v2/models/{name}/infer"]
    assert request.kind is SpanKind.SERVER
    assert request.parent is not None
    assert request.parent.is_remote
    assert (request.context.trace_id, request.parent.span_id) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
    )
    assert request.context.trace_state.to_header() == "vendor=a"
    assert request.status.status_code is StatusCode.UNSET
    assert request.attributes["modelpod.model"] == "mlp"
    for child in ("batch", "queue", "encode"):
        parent = spans[child].parent
        assert parent is not None
        assert parent.span_id == request.context.span_id
    assert [link.context.span_id for link in spans["batch"].links] == [request.context.span_id]


@pytest.mark.parametrize(
    ("sampler", "argument", "carrier", "kept"),
    [
        (
            "parentbased_always_on",
            "",
            {"traceparent": CALLER[:-2] + "00"},
            False,
        ),  # the caller did not sample
        ("parentbased_always_on", "", {}, True),
        ("always_off", "", {"traceparent": CALLER}, False),
        ("traceidratio", "1.0", {}, True),  # a sampler of the SDK, asked once per request
        ("traceidratio", "0.0", {}, False),
    ],
)
def test_the_sampler_decides_once_for_the_request_and_its_children(
    monkeypatch: pytest.MonkeyPatch, sampler: str, argument: str, carrier: dict[str, str], kept: bool
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    memory = InMemorySpanExporter()
    traced = tracing.configured(memory)
    one_request(traced, carrier)
    traced.shutdown()
    assert len(memory.get_finished_spans()) == (4 if kept else 0)


def test_a_traceparent_is_read_as_the_w3c_says() -> None:
    assert caller_of({"traceparent": CALLER}) == (
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        1,
        "",
    )
    for wrong in (
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # no trace
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # no parent
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case
        CALLER + "-more",  # version 00 has four fields
        "00-not-a-trace-01",
    ):
        assert caller_of({"traceparent": wrong}) is None, wrong
    assert caller_of({"traceparent": "01-" + CALLER[3:] + "-later"}) is not None  # a later version may add


def test_a_full_queue_drops_spans_and_says_so(
    exported: tuple[tracing.Tracing, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    traced, memory = exported
    # A request alone in its batch makes one record of four spans: its own, with its queue wait,
    # its batch and its encoding kept on it. Room for one record: the second request's are dropped.
    traced.export.max_queue = 1
    for _ in range(2):
        one_request(traced, {})
    traced.export.flush()
    assert (len(memory.get_finished_spans()), traced.export.dropped) == (4, 4)
    assert "4 spans dropped" in caplog.text
