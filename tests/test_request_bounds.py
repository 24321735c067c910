"""What one request may cost a real server (issue 20, items 1, 4 and 8): every attack is refused or
answered in bounded time and memory, over HTTP JSON, HTTP binary and gRPC, while health keeps
answering and well-behaved clients keep succeeding.

- a keyword model's tensors are expanded into calls only within the request's cost bounds (rows,
  elements, decoded bytes), and a model that does not batch gets a 1-D tensor in one call;
- timeouts and deadlines of any size are clamped, never an OverflowError or a replaced worker;
- a field named `self` is the caller's error.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import numpy as np
import psutil
import pytest

from modelpod.errors import PayloadTooLarge
from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc
from modelpod.protocol.cost import CostLimits, check_cost, cost_of
from modelpod.runtime.batching import BatchConfig
from modelpod.runtime.deadline import MAX_WAIT_SECONDS, clamp_wait

from conftest import ROOT, ServerProcess, launch

BOUNDS = ROOT / "tests" / "servable_bounds.py"
FAULTS = ROOT / "tests" / "servable_faults.py"
HEADER_LENGTH = "Inference-Header-Content-Length"
MESSAGE_LIMIT = 64 * 1024**2  # the servers' --max-message-size: the derived bounds follow it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = (f"{BOUNDS}:Unhinted", f"{BOUNDS}:Words", f"{BOUNDS}:Batched", f"{FAULTS}:Careful")
    process = launch(models, tmp_path_factory.mktemp("bounds") / "appdata", ("--max-message-size", "64MiB"))
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Careful in one worker process: where a huge timeout once overflowed `Connection.poll`."""
    args = ("--workers", "1", "--max-request-rows", "4")
    process = launch((f"{FAULTS}:Careful",), tmp_path_factory.mktemp("isolated") / "appdata", args)
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output
    assert "OverflowError" not in process.output


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(server.grpc_address, options=options) as channel:
        yield channel


# -- requests, three ways ---------------------------------------------------------------------------


def json_infer(http: httpx.Client, model: str, name: str, datatype: str, shape: list[int], data: Any,
               headers: dict[str, str] | None = None, **parameters: Any) -> httpx.Response:  # fmt: skip
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    body: dict[str, Any] = {"inputs": [tensor]}
    if parameters:
        body["parameters"] = parameters
    return http.post(f"/v2/models/{model}/infer", content=json.dumps(body), headers=headers)


def binary_infer(
    http: httpx.Client, model: str, name: str, datatype: str, shape: list[int], raw: bytes
) -> httpx.Response:
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": len(raw)},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return http.post(
        f"/v2/models/{model}/infer",
        content=header + raw,
        headers={HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
    )


def grpc_infer(
    channel: grpc.Channel, model: str, name: str, datatype: str, shape: list[int], raw: bytes,
    timeout: float = 20,
) -> tuple[grpc.StatusCode, str, pb.ModelInferResponse | None]:  # fmt: skip
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    try:
        return (
            grpc.StatusCode.OK,
            "",
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=timeout),
        )
    except grpc.RpcError as error:
        return error.code(), error.details(), None


def bytes_raw(count: int) -> bytes:
    """`count` empty BYTES elements: a 4-byte length prefix of zero each."""
    return b"\0\0\0\0" * count


# -- watching the server while an attack runs -------------------------------------------------------


@dataclass
class Watch:
    worst_health: float = 0.0  # seconds: the slowest /v2/health/ready answer
    failed_health: int = 0
    peak_rss: int = 0
    start_rss: int = 0


def watched(server: ServerProcess, attack: Callable[[], None]) -> Watch:
    """Run `attack` while another client polls health and the server's RSS is sampled."""
    process = psutil.Process(server.process.pid)
    watch = Watch(start_rss=process.memory_info().rss)
    watch.peak_rss = watch.start_rss
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.http_url, timeout=10) as client:
            while not done.is_set():
                started = time.monotonic()
                try:
                    ok = client.get("/v2/health/ready").status_code == 200
                except httpx.HTTPError:
                    ok = False
                watch.worst_health = max(watch.worst_health, time.monotonic() - started)
                watch.failed_health += not ok
                watch.peak_rss = max(watch.peak_rss, process.memory_info().rss)
                done.wait(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        attack()
    finally:
        done.set()
        poller.join()
    return watch


def assert_cheap(watch: Watch, rss_growth: int = 200 * 1024**2) -> None:
    assert watch.failed_health == 0
    assert watch.worst_health < 1.0, f"health took {watch.worst_health:.2f} s during the attack"
    growth = watch.peak_rss - watch.start_rss
    assert growth < rss_growth, f"RSS grew by {growth / 1024**2:.0f} MB during the attack"


def assert_serving(http: httpx.Client, channel: grpc.Channel) -> None:
    """Well-behaved clients still get their answers, over both transports."""
    answer = json_infer(http, "words", "text", "BYTES", [2], ["a", "b"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == ["A", "B"]
    assert http.post("/models/careful/predict", json={"text": "ok", "times": 2}).json()["text"] == "okok"
    code, details, _ = grpc_infer(channel, "batched", "x", "FP64", [3], np.arange(3, dtype="<f8").tobytes())
    assert code == grpc.StatusCode.OK, details


# -- item 1: a cost model per request ---------------------------------------------------------------

BILLIONS_OF_EMPTY_ROWS = [4294967296, 0]  # about 100 bytes of request; once 4 GB and a stalled server
A_MILLION_EMPTY_ROWS = [1_000_000, 0]


@pytest.mark.parametrize("model", ["unhinted", "words", "batched"])
def test_billions_of_zero_width_rows_are_refused_at_once(
    server: ServerProcess, http: httpx.Client, channel: grpc.Channel, model: str
) -> None:
    name = {"unhinted": "x", "words": "text", "batched": "x"}[model]

    def attack() -> None:
        answer = json_infer(http, model, name, "FP64", BILLIONS_OF_EMPTY_ROWS, [])
        assert answer.status_code == 413, answer.text
        assert "MODELPOD_MAX_REQUEST_" in answer.json()["error"]  # rows or elements: both are bounded
        answer = binary_infer(http, model, name, "FP64", BILLIONS_OF_EMPTY_ROWS, b"")
        assert answer.status_code == 413, answer.text
        code, details, _ = grpc_infer(channel, model, name, "FP64", BILLIONS_OF_EMPTY_ROWS, b"")
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert "MODELPOD_MAX_REQUEST_" in details

    assert_cheap(watched(server, attack))
    assert_serving(http, channel)


def test_a_million_zero_width_rows_are_more_calls_than_a_keyword_model_takes(
    server: ServerProcess, http: httpx.Client, channel: grpc.Channel
) -> None:
    def attack() -> None:
        for _ in range(3):
            answer = json_infer(http, "unhinted", "x", "FP64", A_MILLION_EMPTY_ROWS, [])
            assert answer.status_code == 413, answer.text
            message = answer.json()["error"]
            assert "1000000 rows" in message
            assert "MODELPOD_MAX_REQUEST_ROWS" in message
            answer = binary_infer(http, "batched", "x", "FP64", A_MILLION_EMPTY_ROWS, b"")
            assert answer.status_code == 413, answer.text
            assert "at most 64 are allowed" in answer.json()["error"]
            code, details, _ = grpc_infer(channel, "unhinted", "x", "FP64", A_MILLION_EMPTY_ROWS, b"")
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details

    assert_cheap(watched(server, attack))
    assert_serving(http, channel)


@pytest.mark.parametrize("count", [2_000_000, 5_000_000])
def test_millions_of_empty_strings_are_refused_before_they_are_decoded(
    server: ServerProcess, http: httpx.Client, channel: grpc.Channel, count: int
) -> None:
    raw = bytes_raw(count)  # 8 MB for 2M: once 13 s of expansion and 1.4 GB never given back

    def attack() -> None:
        started = time.monotonic()
        answer = binary_infer(http, "words", "text", "BYTES", [count], raw)
        assert answer.status_code == 413, answer.text
        assert "MODELPOD_MAX_REQUEST_DECODED_BYTES" in answer.json()["error"]
        code, details, _ = grpc_infer(channel, "words", "text", "BYTES", [count], raw)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
        assert time.monotonic() - started < 10  # refused from the shape: no element was decoded

    assert_cheap(watched(server, attack))
    assert_serving(http, channel)


def test_more_rows_than_a_batching_models_queue_holds_are_refused(
    server: ServerProcess, http: httpx.Client
) -> None:
    answer = binary_infer(http, "batched", "x", "FP64", [65], np.ones(65, "<f8").tobytes())
    assert answer.status_code == 413, answer.text
    assert "MODELPOD_MAX_REQUEST_ROWS" in answer.json()["error"]


def test_a_1d_tensor_is_one_call_to_a_model_that_does_not_batch(
    server: ServerProcess, http: httpx.Client, channel: grpc.Channel
) -> None:
    values = np.arange(10_000, dtype=np.float32)
    expected = (values * 2).tolist()
    answers = [
        json_infer(http, "unhinted", "x", "FP32", [len(values)], values.tolist()).json()["outputs"],
        binary_infer(http, "unhinted", "x", "FP32", [len(values)], values.tobytes()).json()["outputs"],
    ]
    for outputs in answers:  # one call: one row of y, and one `calls`, whichever transport
        by_name = {output["name"]: output for output in outputs}
        assert by_name["y"]["shape"] == [1, len(values)]
        assert by_name["y"]["data"][:3] == expected[:3]
        assert by_name["calls"]["shape"] == [1]
        assert by_name["calls"]["data"] == [1]
    code, details, response = grpc_infer(channel, "unhinted", "x", "FP32", [len(values)], values.tobytes())
    assert code == grpc.StatusCode.OK, details
    assert response is not None
    shapes = {output.name: list(output.shape) for output in response.outputs}
    assert shapes == {"y": [1, len(values)], "calls": [1]}


def test_a_1d_tensor_is_one_value_per_call_where_the_parameter_takes_one(http: httpx.Client) -> None:
    answer = json_infer(http, "words", "text", "BYTES", [3], ["a", "b", "c"])
    assert answer.json()["outputs"][0]["data"] == ["A", "B", "C"]
    answer = json_infer(http, "batched", "x", "FP64", [3], [1, 2, 3])
    assert answer.json()["outputs"][0]["data"] == [2.0, 3.0, 4.0]


def test_a_large_1d_tensor_to_a_keyword_model_is_answered_in_bounded_time(
    server: ServerProcess, http: httpx.Client, channel: grpc.Channel
) -> None:
    values = np.ones(1_000_000, dtype=np.float32)  # once a million calls and 15-21 s per request

    def attack() -> None:
        started = time.monotonic()
        answer = binary_infer(http, "unhinted", "x", "FP32", [len(values)], values.tobytes())
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - started < 15

    assert_cheap(watched(server, attack), rss_growth=400 * 1024**2)
    assert_serving(http, channel)


def test_a_tensor_that_decodes_past_the_bound_is_refused_naming_the_setting(
    http: httpx.Client, channel: grpc.Channel
) -> None:
    values = np.ones(MESSAGE_LIMIT // 32, dtype=np.float32)  # 8 MiB on the wire, 72 MiB as Python floats
    answer = binary_infer(http, "unhinted", "x", "FP32", [len(values)], values.tobytes())
    assert answer.status_code == 413, answer.text
    assert "MODELPOD_MAX_REQUEST_DECODED_BYTES" in answer.json()["error"]
    code, details, _ = grpc_infer(channel, "unhinted", "x", "FP32", [len(values)], values.tobytes())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert "MODELPOD_MAX_REQUEST_DECODED_BYTES" in details
    assert_serving(http, channel)


def test_metadata_names_only_what_the_model_is_known_to_take_and_answer(
    http: httpx.Client, channel: grpc.Channel
) -> None:
    unhinted = http.get("/v2/models/unhinted").json()
    assert unhinted["inputs"] == []  # not `x: BYTES [-1]`: it takes any datatype
    assert unhinted["outputs"] == []  # not `output`: it answers `y` and `calls`
    words = http.get("/v2/models/words").json()
    assert words["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert words["outputs"] == [{"name": "output", "datatype": "BYTES", "shape": [-1]}]
    metadata = pb_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
        pb.ModelMetadataRequest(name="unhinted")
    )
    assert list(metadata.inputs) == []
    assert list(metadata.outputs) == []


def test_the_row_bound_is_a_setting(isolated: ServerProcess) -> None:
    with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
        answer = json_infer(client, "careful", "text", "BYTES", [4], ["a", "b", "c", "d"])
        assert answer.status_code == 200, answer.text
        answer = json_infer(client, "careful", "text", "BYTES", [5], ["a", "b", "c", "d", "e"])
        assert answer.status_code == 413, answer.text
        assert "at most 4 are allowed" in answer.json()["error"]


def test_costs_are_arithmetic_on_shapes() -> None:
    empty_rows = {"x": np.empty((4294967296, 0), dtype=np.float64)}  # no memory: a zero dimension
    cost = cost_of(empty_rows, 4294967296, frozenset({"x"}))
    assert cost.elements == 4294967296
    with pytest.raises(PayloadTooLarge, match="MODELPOD_MAX_REQUEST_ROWS"):
        check_cost(cost, CostLimits(), BatchConfig(), "m")
    with pytest.raises(PayloadTooLarge, match="MODELPOD_MAX_REQUEST_ELEMENTS"):
        check_cost(cost_of(empty_rows, 1, frozenset()), CostLimits(), BatchConfig(), "m")
    check_cost(cost_of(empty_rows, 1, frozenset()), CostLimits(message_size=None), BatchConfig(), "m")


# -- item 4: timeouts and deadlines of any size -----------------------------------------------------


def test_every_wait_is_clamped_to_what_the_platform_can_arm() -> None:
    assert clamp_wait(None) is None
    assert clamp_wait(math.inf) == clamp_wait(1e16) == MAX_WAIT_SECONDS
    assert clamp_wait(-1.0) == 0.0
    assert clamp_wait(math.nan) == 0.0
    assert clamp_wait(None, 5.0) == clamp_wait(1e9, 5.0) == clamp_wait(5.0, 7.0) == 5.0
    assert clamp_wait(None, 1e12) == MAX_WAIT_SECONDS
    assert MAX_WAIT_SECONDS * 1000 < 2**31 - 1  # Connection.poll's milliseconds in a C int


@pytest.mark.parametrize("value", ["1e9", "inf", "1e400", "2147484", "0.5e7"])
def test_a_huge_request_timeout_header_is_clamped(isolated: ServerProcess, value: str) -> None:
    with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
        answer = client.post(
            "/models/careful/predict", json={"text": "ok"}, headers={"Request-Timeout": value}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == "ok"


@pytest.mark.parametrize("value", ["nan", "-1", "-inf", "soon"])
def test_a_request_timeout_that_is_no_duration_is_the_callers_error(
    isolated: ServerProcess, value: str
) -> None:
    with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
        answer = client.post(
            "/models/careful/predict", json={"text": "ok"}, headers={"Request-Timeout": value}
        )
        assert answer.status_code == 400, answer.text
        assert "timeout" in answer.json()["error"]


def test_a_huge_v2_timeout_parameter_and_grpc_deadline_are_clamped(isolated: ServerProcess) -> None:
    with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
        answer = json_infer(client, "careful", "text", "BYTES", [1], ["ok"], timeout=1e16)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == ["ok"]
    with grpc.insecure_channel(isolated.grpc_address) as channel:
        code, details, _ = grpc_infer(channel, "careful", "text", "BYTES", [1], b"\2\0\0\0ok", timeout=1e7)
        assert code == grpc.StatusCode.OK, details
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(
            model="careful", method="predict", payload=native.pack({"text": "a"})
        )
        assert native.unpack(stub.Call(request, timeout=1e7).payload)["text"] == "a"


def test_huge_timeouts_neither_restart_workers_nor_starve_other_clients(isolated: ServerProcess) -> None:
    successes = [0]
    stop = threading.Event()

    def well_behaved() -> None:
        with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
            while not stop.is_set():
                answer = client.post("/models/careful/predict", json={"text": "ok"})
                successes[0] += answer.status_code == 200

    def attack() -> None:
        with httpx.Client(base_url=isolated.http_url, timeout=20) as client:
            for value in ("1e9", "inf") * 5:
                answer = client.post(
                    "/models/careful/predict", json={"text": "x"}, headers={"Request-Timeout": value}
                )
                assert answer.status_code == 200, answer.text

    clients = [threading.Thread(target=well_behaved) for _ in range(2)]
    for client in clients:
        client.start()
    try:
        watch = watched(isolated, attack)
        time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert_cheap(watch)
    assert successes[0] >= 10
    assert "restarted a worker" not in isolated.output
    assert "OverflowError" not in isolated.output


# -- item 8: reserved names --------------------------------------------------------------------------


def test_a_field_named_self_is_the_callers_error_everywhere(
    http: httpx.Client, channel: grpc.Channel
) -> None:
    answer = http.post("/models/careful/predict", json={"self": 1, "text": "a"})
    assert answer.status_code == 400, answer.text
    assert "'self'" in answer.json()["error"]
    for model in ("careful", "words", "batched"):
        answer = json_infer(http, model, "self", "BYTES", [1], ["a"])
        assert answer.status_code == 400, answer.text
        assert "'self'" in answer.json()["error"]
    code, details, _ = grpc_infer(channel, "words", "self", "BYTES", [1], b"\1\0\0\0a")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'self'" in details
    stub = native_pb2_grpc.ModelServiceStub(channel)
    request = native_pb2.CallRequest(model="careful", method="predict", payload=native.pack({"self": 1}))
    with pytest.raises(grpc.RpcError) as refused:
        stub.Call(request, timeout=20)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "'self'" in refused.value.details()  # type: ignore[attr-defined]


# -- bodies parsed as JSON or msgpack -----------------------------------------------------------------
# Their parsers hold the interpreter lock for their whole run: a big one would stall health checks for
# seconds (a 114 MiB JSON list once took 7.8 s), so the server parses at most MODELPOD_MAX_PARSED_SIZE.


@pytest.fixture(scope="module")
def parsing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ("--max-parsed-size", "4MiB", "--max-message-size", "64MiB")
    process = launch((f"{BOUNDS}:Unhinted",), tmp_path_factory.mktemp("parsing") / "appdata", args)
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


def test_a_json_body_larger_than_the_server_parses_is_refused_unparsed(parsing: ServerProcess) -> None:
    values = list(range(2_000_000))  # about 15 MB of JSON, under the message limit
    body = json.dumps({"x": values}).encode()
    native_json = json.dumps({"inputs": [{"name": "x", "datatype": "INT64", "shape": [len(values)],
                                          "data": values}]}).encode()  # fmt: skip
    answers: list[httpx.Response] = []

    def attack() -> None:
        with httpx.Client(base_url=parsing.http_url, timeout=30) as client:
            answers.append(client.post("/models/unhinted/predict", content=body))
            answers.append(client.post("/v2/models/unhinted/infer", content=native_json))
            packed = native.pack({"x": values})
            answers.append(
                client.post("/models/unhinted/predict", content=packed,
                            headers={"content-type": "application/msgpack"})
            )  # fmt: skip

    watch = watched(parsing, attack)
    for answer in answers:
        assert answer.status_code == 413, answer.text
        assert "MODELPOD_MAX_PARSED_SIZE" in answer.json()["error"]
        assert "binary" in answer.json()["error"]
    assert_cheap(watch)


def test_a_binary_tensor_past_the_parsed_size_is_still_served(parsing: ServerProcess) -> None:
    """Only the JSON header of a binary request is parsed: the tensor's bytes are not."""
    count = 1_200_000  # 4.8 MB of FP32, over the 4 MiB parsed limit
    with httpx.Client(base_url=parsing.http_url, timeout=60) as client:
        answer = binary_infer(client, "unhinted", "x", "FP32", [count], b"\0\0\0\0" * count)
    assert answer.status_code == 200, answer.text[:300]


def test_a_json_body_under_the_parsed_size_is_served(parsing: ServerProcess) -> None:
    with httpx.Client(base_url=parsing.http_url, timeout=30) as client:
        answer = client.post("/models/unhinted/predict", json={"x": list(range(1000))})
    assert answer.status_code == 200, answer.text


def test_a_client_that_hangs_up_midway_through_its_body_is_no_server_error(
    server: ServerProcess, http: httpx.Client
) -> None:
    host, port = server.http_url.removeprefix("http://").split(":")
    for path in ("/models/careful/predict", "/v2/models/careful/infer"):
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            connection.sendall(head.encode() + b'Content-Length: 1000\r\n\r\n{"x": [1, 2')
            time.sleep(0.2)  # the server is reading the body now
    time.sleep(0.5)
    assert http.get("/v2/health/ready").status_code == 200
    assert "internal server error" not in server.output  # (and no traceback: see the fixture)
