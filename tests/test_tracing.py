"""OpenTelemetry tracing: `modelpod serve --otel` exports each request's span over OTLP to a small
collector the test starts (an HTTP server decoding OTLP protobuf), continuing the caller's trace;
without `--otel` nothing of OpenTelemetry is even imported."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from otlp_collector import Collector, attributes

from modelpod.client import AsyncClient, Client
from modelpod.errors import ModelError

from conftest import ROOT, ServerProcess, StartServer, servable

# Run in the server process at start and exit (a sitecustomize on its path): which OpenTelemetry
# modules it loaded, printed when it exits.
_REPORT = """
import atexit, sys

def _report():
    loaded = sorted(m for m in list(sys.modules) if m.split(".")[0] == "opentelemetry")
    sys.stdout.write(f"otel modules: {len(loaded)} {loaded[:3]}\\n")
    sys.stdout.flush()

atexit.register(_report)
"""


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def _reporting_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_REPORT)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, **extra}


def _traced_server(start_server: StartServer, tmp_path: Path, collector: Collector) -> ServerProcess:
    env = _reporting_env(
        tmp_path,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="50",  # milliseconds: the test need not wait the default 5 s
        OTEL_SERVICE_NAME="traced-pod",
    )
    return start_server(
        servable("Batched"), servable("Broken"), servable("Tagged"), args=("--otel",), env=env
    )


def test_a_batch_links_the_requests_it_served(
    start_server: StartServer, tmp_path: Path, collector: Collector
) -> None:
    server = _traced_server(start_server, tmp_path, collector)
    tracer = TracerProvider().get_tracer("the caller")  # a program of the user's that traces
    callers: dict[str, Any] = {}

    def call(tag: str, seconds: float) -> None:
        with (
            tracer.start_as_current_span(f"caller {tag}") as caller,
            Client(server.http_url, model="tagged") as client,
        ):
            callers[tag] = caller.get_span_context()
            assert client.predict(tag=tag, seconds=seconds) == tag

    # The first runs alone for a second; the rest queue meanwhile, and run two at a time.
    first = threading.Thread(target=call, args=("first", 1.0))
    first.start()
    time.sleep(0.2)
    queued = [threading.Thread(target=call, args=(f"queued {i}", 0.0)) for i in range(4)]
    for thread in [*queued]:
        thread.start()
    for thread in [first, *queued]:
        thread.join(timeout=30)
    trace_ids = {context.trace_id.to_bytes(16, "big") for context in callers.values()}
    assert len(trace_ids) == 5

    def ours(spans: list[Span]) -> list[Span]:
        return [s for s in spans if s.trace_id in trace_ids]

    def complete(spans: list[Span]) -> bool:
        queues = [s for s in ours(spans) if s.name == "queue"]
        batched = sum(len(s.links) for s in ours(spans) if s.name == "batch")
        served = {s.trace_id for s in ours(spans) if s.kind == Span.SPAN_KIND_SERVER}
        # Spans leave in batches: a request's own span, ended last, may come in a later one.
        return len(queues) == len(trace_ids) and batched == len(trace_ids) and served == trace_ids

    spans = ours(collector.wait_for(complete))
    assert collector.service_names == {"traced-pod"}
    requests = {s.trace_id: s for s in spans if s.kind == Span.SPAN_KIND_SERVER}
    assert set(requests) == trace_ids  # each request continued its caller's trace
    for context in callers.values():
        request = requests[context.trace_id.to_bytes(16, "big")]
        assert request.parent_span_id == context.span_id.to_bytes(8, "big")  # a child of its caller
        assert attributes(request) == {
            "http.request.method": "POST",
            "http.route": "/models/{name}/{method}",
            "url.path": "/models/tagged/predict",
            "modelpod.model": "tagged",
            "modelpod.version": "1",
            "modelpod.protocol": "http",
            "modelpod.outcome": "ok",
            "modelpod.status": "200",
        }
        (queue,) = [s for s in spans if s.name == "queue" and s.trace_id == request.trace_id]
        assert queue.parent_span_id == request.span_id
        assert request.start_time_unix_nano <= queue.start_time_unix_nano <= queue.end_time_unix_nano

    batches = [s for s in spans if s.name == "batch"]
    linked = [link.span_id for batch in batches for link in batch.links]
    assert sorted(linked) == sorted(r.span_id for r in requests.values())  # each request in one batch
    assert any(len(batch.links) == 2 for batch in batches), "the queued requests ran one at a time"
    for batch in batches:
        first = next(r for r in requests.values() if r.span_id == batch.links[0].span_id)
        assert (batch.trace_id, batch.parent_span_id) == (first.trace_id, first.span_id)
        assert attributes(batch)["modelpod.batch_requests"] == len(batch.links)
        assert attributes(batch)["modelpod.batch_rows"] == len(batch.links)  # a row each
        queue_ends = [
            s.end_time_unix_nano for s in spans if s.name == "queue" and s.trace_id == batch.trace_id
        ]
        assert queue_ends == [batch.start_time_unix_nano]  # its requests waited until it began

    server.stop()
    assert "otel modules: 0" not in server.output


def test_clients_send_the_current_trace_and_errors_carry_their_id(
    start_server: StartServer, tmp_path: Path, collector: Collector
) -> None:
    server = _traced_server(start_server, tmp_path, collector)
    tracer = TracerProvider().get_tracer("the caller")  # a program of the user's that traces
    with tracer.start_as_current_span("caller") as caller:
        with Client(f"grpc://{server.grpc_address}", model="batched") as grpc_client:
            grpc_client.infer({"x": np.ones((2, 4), np.float32)})
        with (
            Client(server.http_url, model="broken", retries=0) as client,
            pytest.raises(ModelError) as raised,
        ):
            client.predict(x=1)
        asyncio.run(_infer_async(server.http_url))  # the task copies this context: the same trace
    context = caller.get_span_context()
    error_id = str(raised.value).rsplit("error id ", 1)[1].strip(")")
    # Probes get no span (they would bury the requests); exported, theirs would come before the next.
    for probe in ("/v2/health/ready", "/v2/health/live", "/metrics"):
        assert httpx.get(f"{server.http_url}{probe}").status_code == 200
    with Client(server.grpc_address) as probing:
        assert probing.ready()
    garbled = {"traceparent": "00-not-a-trace-01"}  # ignored: the request starts a trace of its own
    response = httpx.get(f"{server.http_url}/v2/models/batched", headers=garbled)
    assert response.status_code == 200, response.text

    spans = collector.wait_for(
        lambda s: {"GET /v2/models/{name}", "POST /v2/models/{name}/infer"} <= {x.name for x in s}
    )
    (fresh,) = [s for s in spans if s.name == "GET /v2/models/{name}"]
    assert fresh.trace_id != context.trace_id.to_bytes(16, "big")
    assert not fresh.parent_span_id
    served = {s.name: s for s in spans if s.kind == Span.SPAN_KIND_SERVER and s is not fresh}
    assert sorted(served) == [
        "POST /models/{name}/{method}",
        "POST /v2/models/{name}/infer",
        "grpc ModelInfer",
    ]
    for span in served.values():
        assert span.trace_id == context.trace_id.to_bytes(16, "big")
        assert span.parent_span_id == context.span_id.to_bytes(8, "big")
    grpc_span = attributes(served["grpc ModelInfer"])
    assert (grpc_span["modelpod.protocol"], grpc_span["modelpod.status"]) == ("grpc_v2", "OK")
    failed = served["POST /models/{name}/{method}"]
    assert attributes(failed)["modelpod.error_id"] == error_id
    assert attributes(failed)["modelpod.status"] == "500"
    assert failed.status.code == failed.status.STATUS_CODE_ERROR
    # A model that does not batch runs each call on a model thread: a queue and a batch span still.
    spans = collector.wait_for(lambda s: len([x for x in s if x.parent_span_id == failed.span_id]) >= 3)
    below = sorted(s.name for s in spans if s.parent_span_id == failed.span_id)
    assert below == ["batch", "encode", "queue"]  # and its error answer made

    # The log line about the failure names its trace beside its request.
    line = server.wait_for_line(f"error id {error_id}")
    assert f"trace {context.trace_id:032x}]" in line
    assert trace.get_current_span() is trace.INVALID_SPAN  # the test left no span current


async def _infer_async(address: str) -> None:
    async with AsyncClient(address, model="batched") as client:
        await client.infer({"x": np.ones((1, 4), np.float32)})


class GrpcCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver built from the OTLP protos, on a loopback port."""

    def __init__(self, spans: Collector) -> None:
        self.spans = spans
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.endpoint = f"http://127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def Export(  # noqa: N802 - the name the OTLP service defines
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.spans.receive(request)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_over_otlp_grpc_and_a_stream_in_one_span(
    start_server: StartServer, tmp_path: Path, collector: Collector
) -> None:
    receiver = GrpcCollector(collector)  # the HTTP collector only keeps what this one is sent
    try:
        env = {
            "MODELPOD_OTEL": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "MODELPOD_SLOW_MS": "0",  # every request's breakdown is logged: a line about a request
            "MODELPOD_LOG_FORMAT": "json",
        }
        streaming = f"{ROOT / 'tests' / 'servable_streaming.py'}:Counter"
        server = start_server(servable("Batched"), streaming, env=env)
        with Client(server.grpc_address, model="batched") as client:
            client.infer({"x": np.ones((3, 4), np.float32)})
        with Client(server.grpc_address, model="counter") as client:
            assert list(client.predict_stream(n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]
        with Client(server.http_url, model="counter") as client:  # a streamed HTTP body
            assert list(client.predict_stream(n=2)) == [{"i": 0}, {"i": 1}]
        names = {"batch", "grpc CallStream", "POST /models/{name}/{method}"}
        spans = collector.wait_for(lambda s: names <= {x.name for x in s})
        streams = {
            s.name: attributes(s)
            for s in spans
            if s.name in ("grpc CallStream", "POST /models/{name}/{method}")
        }
        assert streams == {  # each span outlived its stream, so it has what the stream ended with
            "grpc CallStream": {
                "rpc.system": "grpc",
                "rpc.method": "CallStream",
                "modelpod.model": "counter",
                "modelpod.version": "1",
                "modelpod.protocol": "grpc",
                "modelpod.outcome": "ok",
                "modelpod.stream_items": 3,
                "modelpod.status": "OK",
            },
            "POST /models/{name}/{method}": {
                "http.request.method": "POST",
                "http.route": "/models/{name}/{method}",
                "url.path": "/models/counter/predict",
                "modelpod.model": "counter",
                "modelpod.version": "1",
                "modelpod.protocol": "http",
                "modelpod.outcome": "ok",
                "modelpod.stream_items": 2,
                "modelpod.status": "200",
            },
        }
        (request,) = [s for s in spans if s.name == "grpc ModelInfer"]
        (batch,) = [s for s in spans if s.name == "batch"]
        assert (batch.trace_id, batch.parent_span_id) == (request.trace_id, request.span_id)
        assert attributes(batch)["modelpod.batch_rows"] == 3
        line = json.loads(server.wait_for_line(r'"message":"slow request to batched'))
        assert line["trace_id"] == request.trace_id.hex()  # the log line names the request's trace
        assert line["request_id"]
        assert collector.service_names == {"modelpod"}  # no OTEL_SERVICE_NAME: the default
    finally:
        receiver.server.stop(grace=None)


def test_nothing_of_opentelemetry_is_loaded_without_otel(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(servable("Batched"), env=_reporting_env(tmp_path))
    with Client(server.http_url, model="batched") as client:
        client.infer({"x": np.ones((1, 4), np.float32)})
    with Client(server.grpc_address, model="batched") as client:
        client.infer({"x": np.ones((1, 4), np.float32)})
    assert server.stop() == 0
    assert "otel modules: 0 []" in server.output
