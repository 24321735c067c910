"""Request ids and log formats, through a real server."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx

from modelpod.protocol import native
from modelpod.protocol._generated import native_pb2, native_pb2_grpc

from conftest import StartServer, servable


def test_request_ids_come_back_and_reach_the_log_lines_about_the_request(start_server: StartServer) -> None:
    server = start_server(servable("Broken"), servable("Echo"))
    given = httpx.post(
        f"{server.http_url}/models/broken/predict", json={}, headers={"x-request-id": "abc-123"}
    )
    assert given.headers["x-request-id"] == "abc-123"
    error_id = given.headers["x-error-id"]
    line = server.wait_for_line(f"error id {error_id}")
    assert "[request abc-123]" in line
    made = httpx.post(f"{server.http_url}/models/echo/predict", json={"text": "x"})
    assert len(made.headers["x-request-id"]) == 16


def test_grpc_calls_carry_request_ids_both_ways(start_server: StartServer) -> None:
    server = start_server(servable("Echo"))
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(model="echo", method="predict", payload=native.pack({"text": "x"}))
        _, call = stub.Call.with_call(request, metadata=(("x-request-id", "grpc-7"),), timeout=30)
    assert dict(call.trailing_metadata())["x-request-id"] == "grpc-7"


def test_json_logs_are_one_object_per_line_with_the_request_id(start_server: StartServer) -> None:
    server = start_server(servable("Broken"), env={"MODELPOD_LOG_FORMAT": "json"})
    httpx.post(f"{server.http_url}/models/broken/predict", json={}, headers={"x-request-id": "json-1"})
    line = server.wait_for_line(r'"request_id":"json-1"')
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["logger"] == "modelpod.runtime.runner"
    assert "error id" in entry["message"]
    assert "RuntimeError" in entry["exception"]


SLOW_LINE = (
    r"slow request to {model} version 1: (?P<total>[\d.]+) ms \(queue (?P<queue>[\d.]+) ms, "
    r"compute (?P<compute>[\d.]+) ms, encode (?P<encode>[\d.]+) ms, other [\d.]+ ms; threshold 150 ms\)"
)


def test_slow_requests_are_logged_with_where_their_time_went(start_server: StartServer) -> None:
    server = start_server(
        servable("Slow"), servable("Tagged"), env={"MODELPOD_SLOW_MS": "150"}, args=("--workers", "0")
    )
    httpx.post(f"{server.http_url}/models/slow/predict", json={"seconds": 0.01}, timeout=30)
    httpx.post(
        f"{server.http_url}/models/slow/predict", json={"seconds": 0.3}, headers={"x-request-id": "slow-1"}
    )
    line = server.wait_for_line(SLOW_LINE.format(model="slow"))
    found = re.search(SLOW_LINE.format(model="slow"), line)
    assert found is not None
    assert "[request slow-1]" in line
    assert float(found["compute"]) >= 300
    assert float(found["total"]) >= float(found["compute"])
    assert "seconds': 0.01" not in server.output
    assert server.output.count("slow request to slow") == 1  # the fast one was not logged

    with grpc.insecure_channel(server.grpc_address) as channel, ThreadPoolExecutor(2) as pool:
        stub = native_pb2_grpc.ModelServiceStub(channel)

        def tagged(tag: str, seconds: float) -> None:
            arguments = native.pack({"tag": tag, "seconds": seconds})
            stub.Call(native_pb2.CallRequest(model="tagged", method="predict", payload=arguments), timeout=30)

        first = pool.submit(tagged, "first", 0.5)
        time.sleep(0.1)
        tagged("queued", 0.0)  # over gRPC, batched: waits in the queue for the first one's batch
        first.result()
    line = server.wait_for_line(r"slow request to tagged version 1: [\d.]+ ms \(queue [2-9]\d\d")
    found = re.search(SLOW_LINE.format(model="tagged"), line)
    assert found is not None
    assert float(found["compute"]) < 100  # it waited for the other's batch; its own call was quick
