"""Request ids and log formats, through a real server."""

from __future__ import annotations

import json

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
    assert entry["logger"] == "modelpod.runner"
    assert "error id" in entry["message"]
    assert "RuntimeError" in entry["exception"]
