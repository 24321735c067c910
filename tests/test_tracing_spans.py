"""The spans inside a request (`--otel`): each step of a served pipeline, a router's hop, the response's
encoding, each request on a gRPC ModelStreamInfer stream; HTTP spans named by their route; and a
RemoteModel's call to its server continuing the caller's trace."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from otlp_collector import Collector, attributes

from modelpod import Store
from modelpod.client import Client
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc

from conftest import ROOT, StartServer, example, servable

STEPS = ROOT / "tests" / "servable_pipeline.py"
ROUTE = "POST /models/{name}/{method}"


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def otel_env(collector: Collector) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


def children(spans: list[Span], parent: Span) -> list[Span]:
    """The spans directly below `parent`, by start time."""
    below = [s for s in spans if s.trace_id == parent.trace_id and s.parent_span_id == parent.span_id]
    return sorted(below, key=lambda s: s.start_time_unix_nano)


def test_pipeline_steps_router_hops_encoding_and_stream_requests(
    start_server: StartServer, collector: Collector
) -> None:
    models = [servable("Batched"), servable("Pick"), servable("Echo")]
    models += [f"{STEPS}:{name}" for name in ("Third", "Describe", "Shout", "Whisper")]
    server = start_server(
        *models,
        args=("--otel", "--pipeline", "declared=third,describe,shout|whisper"),
        env=otel_env(collector),
    )
    caller = TracerProvider().get_tracer("the caller")
    with caller.start_as_current_span("caller"):
        with Client(server.http_url, model="declared") as client:
            assert client.predict(text="Hey") == "HEY: FRACTION 1!"
        with Client(server.http_url, model="pick") as client:
            assert client.predict(text="hi")["text"] == "hi"
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    x = pb.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0, 4.0])
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4], contents=x)
    requests = [pb.ModelInferRequest(model_name="batched", id=str(i), inputs=[tensor]) for i in range(2)]
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(iter(requests), metadata=list(carrier.items()), timeout=30))
    assert [a.error_message for a in answers] == ["", ""]

    def complete(spans: list[Span]) -> bool:
        names = [s.name for s in spans]
        stream = (
            names.count("grpc ModelStreamInfer") == 1 and names.count("grpc ModelStreamInfer request") == 2
        )
        return (
            stream and names.count("step shout") == 1 and names.count("queue") >= 4 and "route pick" in names
        )

    spans = collector.wait_for(complete)
    served = [s for s in spans if s.name == ROUTE]
    (pipeline,) = [s for s in served if attributes(s)["modelpod.model"] == "declared"]
    assert attributes(pipeline)["http.route"] == "/models/{name}/{method}"
    below = [s.name for s in children(spans, pipeline)]
    steps = [name for name in below if name.startswith("step ")]
    assert steps == ["step third", "step describe", "step shout"]  # one span per step, in order
    assert below[-1] == "encode"  # the answer made last
    assert all(attributes(s)["modelpod.outcome"] == "ok" for s in spans if s.name.startswith("step "))

    (routed,) = [s for s in served if attributes(s)["modelpod.model"] == "echo"]  # the router's target
    (hop,) = [s for s in children(spans, routed) if s.name == "route pick"]
    assert attributes(hop)["modelpod.route_target"] == "echo"
    assert "encode" in [s.name for s in children(spans, routed)]

    (stream,) = [s for s in spans if s.name == "grpc ModelStreamInfer"]
    assert stream.trace_id == pipeline.trace_id  # the stream continued the caller's trace too
    inside = children(spans, stream)
    assert [s.name for s in inside] == ["grpc ModelStreamInfer request"] * 2  # one per request
    for request in inside:
        assert attributes(request)["modelpod.model"] == "batched"
        assert attributes(request)["modelpod.status"] == "OK"
        assert sorted(s.name for s in children(spans, request)) == ["batch", "queue"]


def test_a_remote_model_carries_the_trace_to_its_server(
    start_server: StartServer, collector: Collector, tmp_path: Path
) -> None:
    from servable import Echo

    store = Store(data_path=tmp_path, heartbeat_timeout=1.5)
    proxy = Echo(data_path=tmp_path / "work", serve=True)
    store.apply(proxy)
    env = {
        **otel_env(collector),
        "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}",
        "MODELPOD_HEARTBEAT_SECONDS": "0.5",
    }
    start_server(args=("--otel", "--store", store.url, "--model", "echo"), env=env,
                 data_path=tmp_path / "served")  # fmt: skip
    proxy.refresh_seconds = 0.0
    caller = TracerProvider().get_tracer("the caller")
    with caller.start_as_current_span("caller") as span:
        assert proxy.predict(text="traced")["text"] == "traced"
    assert proxy.route is not None
    assert proxy.route.startswith("remote ")
    context = span.get_span_context()
    spans = collector.wait_for(lambda s: any(x.kind == Span.SPAN_KIND_SERVER for x in s))
    (request,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert request.trace_id == context.trace_id.to_bytes(16, "big")
    assert request.parent_span_id == context.span_id.to_bytes(8, "big")
    assert attributes(request)["modelpod.model"] == "echo"
    store.close()


def test_a_worker_process_time_is_a_span_within_its_batch(
    start_server: StartServer, collector: Collector
) -> None:
    scale = f"{ROOT / 'tests' / 'servable_workers.py'}:Scale"
    server = start_server(scale, args=("--otel", "--workers", "1"), env=otel_env(collector))
    x, k = np.ones((2, 3)), np.ones((2, 3), np.int32)
    with Client(server.http_url, model="scale") as client:
        assert np.array_equal(client.infer({"x": x, "k": k})["y"], x * 2)
    spans = collector.wait_for(lambda s: any(x.name == "worker" for x in s))
    (batch,) = [s for s in spans if s.name == "batch"]
    (worker,) = children(spans, batch)
    assert worker.name == "worker"
    assert batch.start_time_unix_nano <= worker.start_time_unix_nano <= worker.end_time_unix_nano
    assert worker.end_time_unix_nano == batch.end_time_unix_nano  # the call's end, seen from both sides


def test_client_server_pipeline_and_worker_processes_are_one_trace(
    start_server: StartServer, collector: Collector
) -> None:
    steps = [example(f"pipeline.py:{name}") for name in ("Scale", "Linear", "Tree", "Label", "IrisPipeline")]
    server = start_server(*steps, args=("--otel", "--workers", "1"), env=otel_env(collector))
    caller = TracerProvider().get_tracer("the caller")
    with (
        caller.start_as_current_span("caller") as span,
        Client(server.http_url, model="iris-pipeline") as client,
    ):
        assert client.predict(x=[[5.1, 3.5, 1.4, 0.2]])["label"] == ["setosa"]
    trace_id = span.get_span_context().trace_id.to_bytes(16, "big")

    def complete(spans: list[Span]) -> bool:
        ours = [s for s in spans if s.trace_id == trace_id]
        served = [s for s in ours if s.kind == Span.SPAN_KIND_SERVER]  # ended last, perhaps sent later
        return len([s for s in ours if s.name == "worker"]) == 3 and len(served) == 1

    spans = [s for s in collector.wait_for(complete) if s.trace_id == trace_id]
    (request,) = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    assert request.parent_span_id == span.get_span_context().span_id.to_bytes(8, "big")
    steps_run = [s.name for s in children(spans, request) if s.name.startswith("step ")]
    assert steps_run == ["step iris-scale", "step iris-linear", "step iris-label"]
    for batch in [s for s in spans if s.name == "batch"]:  # each step's batch, in a worker process
        assert [s.name for s in children(spans, batch)] == ["worker"]


def test_a_models_own_spans_join_the_requests_trace(start_server: StartServer, collector: Collector) -> None:
    model = f"{ROOT / 'tests' / 'servable_otel.py'}:Instrumented"
    server = start_server(model, args=("--otel",), env=otel_env(collector))
    with Client(server.http_url, model="instrumented") as client:
        assert client.predict(text="hi") == {"text": "HI"}

    def joined(spans: list[Span]) -> bool:
        requests = {s.trace_id for s in spans if s.name == ROUTE}
        return any(s.name == "inside the model" and s.trace_id in requests for s in spans)

    spans = collector.wait_for(joined)
    request = next(
        s for s in spans if s.name == ROUTE and attributes(s).get("modelpod.model") == "instrumented"
    )
    inside = [s for s in spans if s.name == "inside the model" and s.trace_id == request.trace_id]
    assert [s.parent_span_id for s in inside] == [request.span_id]  # the warm-up's has another trace
