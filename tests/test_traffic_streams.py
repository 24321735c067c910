"""Streams and OpenAI's /v1 routes follow a model's traffic split as predict does: native streams over
HTTP and gRPC, gRPC ModelStreamInfer, /v1/completions (whole and streamed) and /v1/embeddings; a
request that names its version (`name:version` on /v1) bypasses the split."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx

from modelpod.client import Client
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc

from conftest import ROOT, ServerProcess, StartServer, servable

TRAFFIC = ROOT / "tests" / "servable_traffic.py"
MODELS = (f"{TRAFFIC}:Versioned", f"{TRAFFIC}:VersionedVectors", servable("Scaled"))


def _all_to_version_2(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    server = start_server(*MODELS, args=("--model-pool-size", "2"), data_path=tmp_path / "data")
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for model in ("versioned", "vvectors", "scaled"):
            made = http.post(f"/models/{model}/versions/2/initialize", json={})
            assert made.status_code == 200, made.text
            put = http.put(f"/models/{model}/traffic", json={"split": {"2": 1}})
            assert put.status_code == 200, put.text
    return server


def test_native_streams_follow_the_split(start_server: StartServer, tmp_path: Path) -> None:
    server = _all_to_version_2(start_server, tmp_path)
    for address in (server.http_url, server.grpc_address):
        with Client(address, model="versioned") as client:
            assert list(client.predict_stream(prompt="x", max_tokens=3)) == ["v2 "] * 3
            assert list(client.version(1).predict_stream(prompt="x")) == ["v1 "] * 2  # named: bypassed


def test_grpc_stream_infer_follows_the_split(start_server: StartServer, tmp_path: Path) -> None:
    server = _all_to_version_2(start_server, tmp_path)
    number = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP64", shape=[1])
    number.contents.fp64_contents.append(0.5)
    prompt = pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])
    prompt.contents.bytes_contents.append(b"x")
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for named, answered in (("", "2"), ("1", "1")):
            # a model with one answer, and one whose answer is a stream (decoupled)
            for model, tensor, replies in (("scaled", number, 1), ("versioned", prompt, 2)):
                request = pb.ModelInferRequest(model_name=model, model_version=named, inputs=[tensor])
                answers = list(stub.ModelStreamInfer(iter([request]), timeout=30))
                assert [a.error_message for a in answers] == [""] * replies
                assert {a.infer_response.model_version for a in answers} == {answered}


def test_openai_routes_follow_the_split(start_server: StartServer, tmp_path: Path) -> None:
    server = _all_to_version_2(start_server, tmp_path)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        for model, text in (("versioned", "v2 v2 "), ("versioned:1", "v1 v1 ")):
            body = {"model": model, "prompt": "x", "max_tokens": 2, "n": 2}
            answer = http.post("/v1/completions", json=body)
            assert answer.status_code == 200, answer.text
            assert [c["text"] for c in answer.json()["choices"]] == [text, text]
        streamed = http.post("/v1/completions", json={"model": "versioned", "prompt": "x", "stream": True})
        assert streamed.status_code == 200, streamed.text
        assert "v2 " in streamed.text
        assert "v1 " not in streamed.text
        vectors = http.post("/v1/embeddings", json={"model": "vvectors", "input": ["ab", "c"]}).json()
        assert [d["embedding"] for d in vectors["data"]] == [[2.0, 2.0], [2.0, 1.0]]
        named = http.post("/v1/embeddings", json={"model": "vvectors:1", "input": "ab"}).json()
        assert named["data"][0]["embedding"] == [1.0, 2.0]
