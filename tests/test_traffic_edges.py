"""The traffic policy over every edge: V2 infer reports the version the split chose, gRPC native
calls follow it and keep a sticky key's version (the same one as over HTTP), only an admin key may
change it; and the policy's parsing and the shadow comparison as plain functions."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from modelpod.errors import InvalidInput
from modelpod.protocol import native
from modelpod.protocol._generated import native_pb2, native_pb2_grpc
from modelpod.serving.agreement import agreement
from modelpod.serving.traffic_policy import parse_flag, policy_of

from conftest import StartServer, servable

ECHO = servable("Echo")
V2_BODY = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}


def _grpc_version(address: str, key: str, version: str = "") -> str:
    with grpc.insecure_channel(address) as channel:
        stub = native_pb2_grpc.ModelServiceStub(channel)
        request = native_pb2.CallRequest(model="echo", version=version, method="predict",
                                         payload=native.pack({"text": "hi"}))  # fmt: skip
        answer = stub.Call(request, timeout=30, metadata=(("x-modelpod-traffic-key", key),))
    return str(native.unpack(answer.payload)["version"])


def test_v2_and_grpc_follow_the_policy(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(ECHO, args=("--model-pool-size", "3"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        assert http.post("/models/echo/versions/2/initialize", json={}).status_code == 200
        assert http.put("/models/echo/traffic", json={"split": {"2": 1}}).status_code == 200
        assert http.post("/v2/models/echo/infer", json=V2_BODY).json()["model_version"] == "2"
        answered = http.post("/models/echo/predict", json={"text": "hi"})
        assert (answered.headers["x-modelpod-model"], answered.headers["x-modelpod-version"]) == ("echo", "2")
        assert http.post("/v2/models/echo/versions/1/infer", json=V2_BODY).json()["model_version"] == "1"
        assert _grpc_version(server.grpc_address, "anyone") == "2"
        assert _grpc_version(server.grpc_address, "anyone", version="1") == "1"

        policy = {"split": {"1": 1, "2": 1}, "sticky": True}
        assert http.put("/models/echo/traffic", json=policy).status_code == 200
        for n in range(10):
            key = f"user-{n}"
            over_http = http.post("/models/echo/predict", json={"text": "hi"},
                                  headers={"x-modelpod-traffic-key": key}).json()["version"]  # fmt: skip
            assert {_grpc_version(server.grpc_address, key) for _ in range(3)} == {over_http}


def test_only_an_admin_changes_the_policy(start_server: StartServer, tmp_path: Path) -> None:
    keys = {"MODELPOD_API_KEYS": "admin:the-admin-key,predict:the-predict-key"}
    server = start_server(ECHO, env=keys, data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        reader = {"authorization": "Bearer the-predict-key"}
        admin = {"authorization": "Bearer the-admin-key"}
        assert http.get("/models/echo/traffic", headers=reader).status_code == 200
        assert http.put("/models/echo/traffic", json={"split": {"1": 1}}, headers=reader).status_code == 403
        assert http.put("/models/echo/traffic", json={"split": {"1": 1}}).status_code == 401
        changed = http.put("/models/echo/traffic", json={"split": {"1": 1}}, headers=admin)
        assert changed.status_code == 200
        assert changed.json()["warning"] is None
        assert http.post("/models/echo/versions/2/initialize", json={}, headers=admin).status_code == 200
        both = http.put("/models/echo/traffic", json={"split": {"1": 1, "2": 1}}, headers=admin).json()
        assert "MODELPOD_MODEL_POOL_SIZE to 2" in both["warning"]  # the pool keeps one: it would thrash


def test_the_flag_and_documents_parse_or_are_refused_naming_the_problem() -> None:
    policies = parse_flag("iris=1:90,2:10; echo=a:1,b:1+sticky+shadow=c@0.25")
    assert policies["iris"].split == {"1": 90.0, "2": 10.0}
    assert policies["echo"].sticky
    assert policies["echo"].document()["shadow"] == {"version": "c", "share": 0.25}
    refused = {
        "iris": "MODEL=VERSION:WEIGHT",
        "iris=1:x": "not a number",
        "iris=1": "VERSION:WEIGHT",
        "iris=1:1+shadow=2@5": "share",
        "iris=1:1+often": "+sticky or",
        "iris=1:0": "sum to zero",
    }
    for bad, message in refused.items():
        with pytest.raises(InvalidInput, match=message.replace("+", r"\+")):
            parse_flag(bad)
    assert policy_of({"split": {"1": 1}}).choose("k") == "1"
    sticky = policy_of({"split": {"1": 1, "2": 1}, "sticky": True})
    assert len({sticky.choose("same user") for _ in range(50)}) == 1
    assert policy_of({}).choose(None) is None  # no split: the default answers


def test_answers_agree_exactly_or_within_a_float_tolerance() -> None:
    assert agreement({"label": "cat", "p": 0.5}, {"label": "cat", "p": 0.5 + 1e-9}) == {
        "label": True,
        "p": True,
    }
    assert agreement({"label": "cat", "p": 0.5}, {"label": "dog", "p": 0.6}) == {"label": False, "p": False}
    assert agreement(np.array([1.0, 2.0]), np.array([1.0, 2.0000001])) == {"answer": True}
    assert agreement(np.array([1, 2]), np.array([1, 3])) == {"answer": False}
    assert agreement(b"abc", b"abd") == {"answer": False}
    assert agreement({"a": 1}, {"b": 1}) == {"a": False, "b": False}  # an output missing disagrees
    assert agreement(1.0, 5.0, compare=lambda served, shadow: abs(served - shadow) < 10) == {"answer": True}
