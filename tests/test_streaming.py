"""Streaming: a model whose `predict` yields, through a real server, over every transport.

Server-sent events and JSON lines (httpx), the native gRPC `CallStream` (grpcio), the Open
Inference Protocol's `ModelStreamInfer` (NVIDIA's tritonclient), and modelpod's own clients.
One server serves the whole module; each test tells its requests apart by their arguments.
"""

from __future__ import annotations

import asyncio
import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelpod import (
    STREAM_END,
    AsyncClient,
    Client,
    InvalidInput,
    ModelError,
    NotFound,
    Runner,
    Store,
    Timeout,
)
from modelpod.client._stream import ItemReader
from modelpod.errors import Interrupted, ModelpodError
from modelpod.protocol import native
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import ROOT, ServerProcess, StartServer, launch
from servable_streaming import Counter, Tokens

MODELS = ROOT / "tests" / "servable_streaming.py"
SECRET = "do-not-leak"
ERROR_ID = re.compile(r"error id ([0-9a-f]{12})")
SSE, JSONL = "text/event-stream", "application/jsonl"
WAIT = 15.0  # seconds any one thing in these tests may take before it counts as never happening

Stream = Callable[[ServerProcess, str, dict[str, Any]], Iterator[Any]]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    names = ("Counter", "Gated", "FailsMidway", "AsyncCounter", "Plain", "Tokens")
    process = launch(tuple(f"{MODELS}:{name}" for name in names), tmp_path_factory.mktemp("streams"))
    yield process
    process.stop(timeout=15)


# -- one stream, as each transport receives it: its items, then the end (or the error raises) -------


class StreamFailed(Exception):
    """An error event (or line): the document the server sent."""


def http_stream(accept: str) -> Stream:
    def stream(server: ServerProcess, model: str, arguments: dict[str, Any]) -> Iterator[Any]:
        url = f"{server.http_url}/models/{model}/predict"
        with httpx.stream("POST", url, json=arguments, headers={"accept": accept}, timeout=WAIT) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith(accept)
            frames = sse_events(response) if accept == SSE else jsonl_frames(response)
            for kind, data in frames:
                if kind == "end":
                    return
                if kind == "error":
                    raise StreamFailed(data)
                yield data
        raise AssertionError("the stream stopped without its end event")

    return stream


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(item|end|error, data) for each server-sent event as it arrives."""
    name, data = "item", []
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and data:
            yield name, json.loads("\n".join(data))
            name, data = "item", []


def jsonl_frames(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    for line in response.iter_lines():
        frame = json.loads(line)
        if "item" in frame:
            yield "item", frame["item"]
        elif frame == {"end": True}:
            yield "end", None
        else:
            yield "error", frame


def grpc_stream(server: ServerProcess, model: str, arguments: dict[str, Any]) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        request = native_pb2.CallRequest(model=model, method="predict", payload=native.pack(arguments))
        replies = native_pb2_grpc.ModelServiceStub(channel).CallStream(request, timeout=WAIT)
        try:
            for reply in replies:
                yield native.unpack(reply.payload)
        finally:
            replies.cancel()


def client_stream(scheme: str) -> Stream:
    def stream(server: ServerProcess, model: str, arguments: dict[str, Any]) -> Iterator[Any]:
        address = server.http_url if scheme == "http" else server.grpc_address
        with Client(address, model=model, timeout=WAIT) as client:
            yield from client.predict_stream(**arguments)

    return stream


def triton_stream(server: ServerProcess, model: str, arguments: dict[str, Any]) -> Iterator[Any]:
    """tritonclient's stream API: each response is an item until the empty one flagged final."""
    client = triton.InferenceServerClient(server.grpc_address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(model, triton_inputs(arguments), enable_empty_final_response=True)
        while True:
            result, error = answers.get(timeout=WAIT)
            if error is not None:
                raise error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                assert not response.outputs
                return
            yield triton_item(result, response)
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def triton_inputs(arguments: dict[str, Any]) -> list[triton.InferInput]:
    kinds = {str: ("BYTES", np.object_), int: ("INT64", np.int64), float: ("FP64", np.float64)}
    inputs = []
    for name, value in arguments.items():
        datatype, dtype = kinds[type(value)]
        tensor = triton.InferInput(name, [1], datatype)
        tensor.set_data_from_numpy(np.array([value.encode() if isinstance(value, str) else value], dtype))
        inputs.append(tensor)
    return inputs


def triton_item(result: Any, response: Any) -> Any:
    """A response's one row as the Python value the model yielded."""
    values = {output.name: plain(result.as_numpy(output.name)[0]) for output in response.outputs}
    return values["output"] if set(values) == {"output"} else values


def plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value.item()


TRANSPORTS: dict[str, Stream] = {
    "sse": http_stream(SSE),
    "jsonl": http_stream(JSONL),
    "grpc": grpc_stream,
    "client-http": client_stream("http"),
    "client-grpc": client_stream("grpc"),
    "tritonclient": triton_stream,
}
transports = pytest.mark.parametrize("transport", list(TRANSPORTS))


def events(server: ServerProcess) -> list[str]:
    path = server.data_path / "events.log"
    return path.read_text().splitlines() if path.exists() else []


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {WAIT} s")
        time.sleep(0.02)


def metric(server: ServerProcess, line_start: str) -> float:
    text = httpx.get(f"{server.http_url}/metrics", timeout=WAIT).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    return sum(values)


# -- every transport ----------------------------------------------------------------------------


@transports
def test_items_stream_then_end(server: ServerProcess, transport: str) -> None:
    assert list(TRANSPORTS[transport](server, "counter", {"n": 3})) == [{"i": 0}, {"i": 1}, {"i": 2}]


@transports
def test_the_first_item_arrives_before_the_generator_finishes(
    server: ServerProcess, transport: str, tmp_path: Path
) -> None:
    """The model yields its first item, then waits for a gate that only this test opens, and only
    once it holds that first item: a server that held items back would never get past the gate."""
    gate = tmp_path / "gate"
    items = TRANSPORTS[transport](server, "gated", {"gate": str(gate)})
    assert next(items) == "before the gate"
    gate.touch()
    assert list(items) == ["after the gate"]


@transports
def test_an_error_midway_ends_the_stream_as_an_error(server: ServerProcess, transport: str) -> None:
    items = TRANSPORTS[transport](server, "failsmidway", {"n": 2})
    assert [next(items), next(items)] == [0, 1]
    with pytest.raises((StreamFailed, grpc.RpcError, ModelError, InferenceServerException)) as raised:
        next(items)  # the items before the error, then the error: never a silent end
    message = str(raised.value)
    assert "raised RuntimeError" in message
    assert ERROR_ID.search(message)
    assert SECRET not in message


@transports
def test_a_client_that_leaves_stops_the_generator(server: ServerProcess, transport: str) -> None:
    """Its `finally` runs, its place is freed (nothing stays in flight), and it is counted."""
    n = 100_000 + list(TRANSPORTS).index(transport)  # tells this test's generator apart
    before = metric(server, "modelpod_streams_cancelled_total")
    items = TRANSPORTS[transport](server, "counter", {"n": n, "delay": 0.02})
    assert [next(items), next(items)] == [{"i": 0}, {"i": 1}]
    items.close()  # the connection (or call, or stream) closes
    wait_for(lambda: f"counter n={n} closed" in events(server), "the generator's cleanup")
    wait_for(lambda: metric(server, "modelpod_streams_cancelled_total") > before, "counting the stream")
    wait_for(lambda: metric(server, "modelpod_in_flight_requests") == 0, "freeing the stream's place")


# -- HTTP ---------------------------------------------------------------------------------------


def test_server_sent_events_on_the_wire(server: ServerProcess) -> None:
    response = httpx.post(
        f"{server.http_url}/models/counter/predict", json={"n": 2}, headers={"accept": SSE}, timeout=WAIT
    )
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == 'data: {"i":0}\n\ndata: {"i":1}\n\nevent: end\ndata: {}\n\n'


def test_json_lines_on_the_wire_also_as_ndjson(server: ServerProcess) -> None:
    for accept in (JSONL, "application/x-ndjson"):
        response = httpx.post(
            f"{server.http_url}/models/counter/predict",
            json={"n": 2},
            headers={"accept": accept},
            timeout=WAIT,
        )
        assert response.headers["content-type"].startswith(JSONL)
        assert response.text == '{"item":{"i":0}}\n{"item":{"i":1}}\n{"end":true}\n'


def test_a_request_refused_before_its_first_item_gets_its_status(server: ServerProcess) -> None:
    def post(model: str, body: dict[str, Any]) -> httpx.Response:
        url = f"{server.http_url}/models/{model}/predict"
        return httpx.post(url, json=body, headers={"accept": SSE}, timeout=WAIT)

    assert post("nope", {}).status_code == 404
    refused = post("counter", {"m": 1})
    assert refused.status_code == 400
    assert "'m'" in refused.json()["error"]
    failed = post("failsmidway", {"n": 0})  # fails before yielding anything
    assert failed.status_code == 500
    assert ERROR_ID.search(failed.json()["error"])


def test_a_deadline_bounds_the_whole_stream(server: ServerProcess) -> None:
    headers = {"accept": SSE, "request-timeout": "2"}
    url = f"{server.http_url}/models/counter/predict"
    with httpx.stream("POST", url, json={"n": 2, "delay": 10.0}, headers=headers, timeout=WAIT) as response:
        received = list(sse_events(response))
    assert received[0] == ("item", {"i": 0})
    assert received[1][0] == "error"
    assert (received[1][1]["type"], received[1][1]["status"]) == ("Timeout", 504)


def test_the_error_event_carries_the_typed_error(server: ServerProcess) -> None:
    with pytest.raises(StreamFailed) as raised:
        list(http_stream(SSE)(server, "failsmidway", {"n": 1}))
    document = raised.value.args[0]
    assert (document["type"], document["status"]) == ("ModelError", 500)
    assert document["error"].endswith(f"(error id {document['error_id']})")


def test_a_model_that_does_not_stream_gives_one_item(server: ServerProcess) -> None:
    for transport in ("sse", "client-grpc"):
        assert list(TRANSPORTS[transport](server, "plain", {"text": "hi"})) == [{"echo": "hi"}]


def test_predict_without_a_stream_gathers_the_items(server: ServerProcess) -> None:
    response = httpx.post(f"{server.http_url}/models/counter/predict", json={"n": 2}, timeout=WAIT)
    assert response.json() == [{"i": 0}, {"i": 1}]
    with Client(server.grpc_address, model="asynccounter") as client:
        assert client.predict(n=3) == [0, 1, 2]


def test_an_async_generator_model_streams_and_is_closed(server: ServerProcess) -> None:
    assert list(http_stream(JSONL)(server, "asynccounter", {"n": 3})) == [0, 1, 2]
    items = http_stream(SSE)(server, "asynccounter", {"n": 200_000, "delay": 0.02})
    assert [next(items), next(items)] == [0, 1]
    items.close()
    wait_for(lambda: "asynccounter n=200000 closed" in events(server), "the async generator's cleanup")


# -- gRPC ---------------------------------------------------------------------------------------


def test_grpc_refusals_before_the_first_item(server: ServerProcess) -> None:
    def code(model: str, method: str, arguments: dict[str, Any]) -> grpc.StatusCode:
        with grpc.insecure_channel(server.grpc_address) as channel:
            request = native_pb2.CallRequest(model=model, method=method, payload=native.pack(arguments))
            with pytest.raises(grpc.RpcError) as raised:
                list(native_pb2_grpc.ModelServiceStub(channel).CallStream(request, timeout=WAIT))
            return raised.value.code()  # type: ignore[no-any-return]

    assert code("nope", "predict", {}) == grpc.StatusCode.NOT_FOUND
    assert code("counter", "predict", {"m": 1}) == grpc.StatusCode.INVALID_ARGUMENT
    assert code("counter", "train", {}) == grpc.StatusCode.INVALID_ARGUMENT  # only predict streams


def test_tritonclient_flags_each_response_and_sends_the_final_one_when_asked(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.grpc_address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("counter", triton_inputs({"n": 2}), request_id="plain-ending")
        client.async_stream_infer("plain", triton_inputs({"text": "hi"}), request_id="one-answer")
        received = [answers.get(timeout=WAIT) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    assert [error for _, error in received] == [None, None, None]
    responses = [result.get_response() for result, _ in received]
    assert [r.id for r in responses] == ["plain-ending", "plain-ending", "one-answer"]
    # no empty final response unless asked for; the model that does not stream answers once, final
    assert [r.parameters["triton_final_response"].bool_param for r in responses] == [False, False, True]
    assert [triton_item(result, r) for (result, _), r in zip(received, responses, strict=True)] == [
        {"i": 0}, {"i": 1}, {"echo": "hi"},
    ]  # fmt: skip


def test_tritonclient_streams_one_row_per_request(server: ServerProcess) -> None:
    client = triton.InferenceServerClient(server.grpc_address)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        rows = triton.InferInput("n", [2], "INT64")
        rows.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
        client.async_stream_infer("counter", [rows])
        _, error = answers.get(timeout=WAIT)
    finally:
        client.stop_stream()
        client.close()
    assert "one row per request" in str(error)


# -- modelpod's clients and the proxy -----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_clients_get_arrays_exactly_and_time_out_per_item(server: ServerProcess, scheme: str) -> None:
    address = server.http_url if scheme == "http" else server.grpc_address
    with Client(address, model="counter") as client:
        items = list(client.predict_stream(n=2, arrays=True))
        assert [item.dtype for item in items] == [np.float32, np.float32]
        np.testing.assert_array_equal(items[1], np.full((2, 3), 1, dtype=np.float32))
        slow = client.with_timeout(0.3).predict_stream(n=3, delay=5.0)
        assert next(slow) == {"i": 0}
        with pytest.raises(Timeout):
            next(slow)
        with pytest.raises(NotFound):
            next(client.model("nope").predict_stream())

    async def use_async() -> list[Any]:
        async with AsyncClient(address, model="asynccounter") as client:
            received = [item async for item in client.predict_stream(n=3)]
            leaving = client.predict_stream(n=300_000 + len(scheme), delay=0.02)
            received.append(await anext(leaving))
            await leaving.aclose()
            return received

    assert asyncio.run(use_async()) == [0, 1, 2, 0]
    wait_for(lambda: f"asynccounter n={300_000 + len(scheme)} closed" in events(server), "cleanup")


def test_the_client_reads_frames_across_chunks_and_knows_a_cut_stream() -> None:
    frames = b"".join(native.pack(frame) for frame in ({"item": np.arange(3)}, {"item": b"\x00"}))
    reader = ItemReader("server")
    items = [item for i in range(len(frames)) for item in reader.feed(frames[i : i + 1])]  # byte by byte
    np.testing.assert_array_equal(items[0], np.arange(3))
    assert items[1] == b"\x00"
    with pytest.raises(Interrupted):
        reader.finish()  # the bytes stopped without the end frame
    error = {"error": "model x raised E (error id 0123456789ab)", "type": "ModelError", "status": 500,
             "error_id": "0123456789ab"}  # fmt: skip
    with pytest.raises(ModelError) as raised:
        list(ItemReader("server").feed(native.pack({"item": 1}) + native.pack(error)))
    assert raised.value.error_id == "0123456789ab"
    with pytest.raises(ModelpodError, match="malformed"):
        list(ItemReader("server").feed(native.pack([1, 2])))


def test_remote_model_streams_locally_and_remotely(start_server: StartServer, tmp_path: Path) -> None:
    proxy = Counter(data_path=tmp_path / "work", serve=True)
    assert list(proxy.predict_stream(n=2)) == [{"i": 0}, {"i": 1}]
    assert proxy.route == "local"
    store = Store(data_path=tmp_path)
    store.apply(proxy)
    env = {"PYTHONPATH": str(ROOT / "tests")}
    server = start_server(
        args=("--store", store.url, "--model", "counter"), env=env, data_path=tmp_path / "served"
    )
    proxy.refresh_seconds = 0.0  # look for the server now
    assert list(proxy.predict_stream(n=3)) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert proxy.route == f"remote 127.0.0.1:{server.grpc_port}"
    assert "counter n=3 finished" in events(server)
    proxy.close()


# -- streaming and batching ---------------------------------------------------------------------


def test_requests_batched_together_each_get_their_own_stream(server: ServerProcess) -> None:
    """While one batch streams, later requests queue and run as the next batch; each request's
    stream ends as soon as it has its own tokens (STREAM_END), while the others go on."""
    started = threading.Event()

    def first() -> list[Any]:
        items = client_stream("http")(server, "tokens", {"n": 8, "step": 0.1})
        received = [next(items)]
        started.set()
        return received + list(items)

    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(first)
        assert started.wait(WAIT)
        later = [
            pool.submit(lambda n=n: list(client_stream("grpc")(server, "tokens", {"n": n})))
            for n in (1, 3, 2)
        ]
        results = [future.result(timeout=WAIT) for future in (running, *later)]
    assert results == [[f"t{i}" for i in range(n)] for n in (8, 1, 3, 2)]
    sizes = [int(line.rsplit(" ", 1)[1]) for line in events(server) if line.startswith("tokens batch of")]
    assert max(sizes) >= 2, sizes  # the three later requests came while the first batch ran
    listed = httpx.get(f"{server.http_url}/models/tokens").json()["versions"][0]["batch_sizes"]
    assert max(map(int, listed)) >= 2, listed  # streaming batches count among the version's batches


def test_a_batch_whose_clients_all_leave_is_closed(server: ServerProcess) -> None:
    before = events(server).count("tokens batch closed")
    items = http_stream(SSE)(server, "tokens", {"n": 100_000, "step": 0.02})
    assert next(items) == "t0"
    items.close()
    wait_for(lambda: events(server).count("tokens batch closed") > before, "closing the batch")


def test_runner_streams_batches_and_gathers_them(tmp_path: Path) -> None:
    runner = Runner(Tokens, data_path=tmp_path)
    pairs = list(runner.stream_batch([{"n": 1}, {"n": 2}, {"m": 0}]))
    assert pairs[0][0] == 2  # the bad request fails at once, before the batch runs
    assert isinstance(pairs[0][1], InvalidInput)
    assert pairs[1:] == [(0, "t0"), (1, "t0"), (0, STREAM_END), (1, "t1"), (1, STREAM_END)]
    assert runner.predict_batch([{"n": 1}, {"n": 3}]) == [["t0"], ["t0", "t1", "t2"]]
    assert list(runner.predict_stream(n=2)) == ["t0", "t1"]
    runner.close()
