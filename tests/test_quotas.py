"""Quotas per caller: a key over its rate is refused with 429 / RESOURCE_EXHAUSTED and a Retry-After
that, honoured, succeeds (the client waits it out by itself); another key is unaffected; a
concurrency quota holds under a burst; refusals are counted by the key's name. Against real
`modelpod serve` processes, over HTTP and gRPC."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelpod import errors
from modelpod.client import AsyncClient, Client
from modelpod.errors import InvalidInput, RateLimited
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc
from modelpod.server.auth import KeyTable, Role
from modelpod.serving.quotas import Quota, Quotas, parse_quotas

from conftest import ROOT, ServerProcess, StartServer, servable

ALICE, BOB = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
ECHO = servable("Echo")


def _keyed_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    key_file = tmp_path / "keys"
    key_file.write_text(f"predict:{ALICE} name=alice\npredict:{BOB} name=bob\n")
    quotas = "alice=rate:1,burst:2;*=rate:100"
    return start_server(ECHO, args=("--api-key-file", str(key_file), "--quotas", quotas))


def _as(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_key_over_its_rate_gets_429_with_a_retry_after_that_works(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _keyed_server(start_server, tmp_path)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        answers = [
            http.post("/models/echo/predict", json={"text": "a"}, headers=_as(ALICE)) for _ in range(3)
        ]
        assert [a.status_code for a in answers[:2]] == [200, 200]  # its burst
        refused = answers[2]
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-modelpod-error"] == "RateLimited"
        assert "alice is over its quota of 1 requests per second" in refused.json()["error"]
        assert ALICE not in refused.text
        for _ in range(10):  # another key: its own bucket, untouched by alice's
            assert http.post("/models/echo/predict", json={"text": "b"}, headers=_as(BOB)).status_code == 200
        time.sleep(float(refused.headers["retry-after"]))
        honoured = http.post("/models/echo/predict", json={"text": "a"}, headers=_as(ALICE))
        assert honoured.status_code == 200, honoured.text

        # OpenAI's routes count too, and answer in OpenAI's shape
        while http.post("/models/echo/predict", json={"text": "a"}, headers=_as(ALICE)).status_code == 200:
            pass
        openai = http.post("/v1/embeddings", json={"model": "echo", "input": "x"}, headers=_as(ALICE))
        assert openai.status_code == 429
        assert openai.headers["retry-after"] == "1"
        assert openai.json()["error"]["type"] == "rate_limit_error"
        assert openai.json()["error"]["code"] == "rate_limited"
        metrics = http.get("/metrics", headers=_as(BOB)).text
    assert 'modelpod_quota_refusals_total{caller="alice",limit="rate",model=""}' in metrics
    assert "bob" not in [line for line in metrics.splitlines() if "quota_refusals_total{" in line]


def test_clients_wait_out_a_retry_after_over_both_transports(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = _keyed_server(start_server, tmp_path)
    for address in (server.http_url, server.grpc_address):
        with Client(address, model="echo", api_key=ALICE, retries=3) as client:
            started = time.monotonic()
            answers = [client.predict(text=str(n))["text"] for n in range(4)]  # 2 over the burst
            assert answers == ["0", "1", "2", "3"]
            assert time.monotonic() - started >= 1.0  # they were refused, and waited, not failed
        with Client(address, model="echo", api_key=ALICE, retries=0) as eager:
            with pytest.raises(RateLimited) as refused:
                _until_refused(lambda: eager.predict(text="x"))
            assert refused.value.retry_after is not None
            assert refused.value.retry_after >= 1
    time.sleep(2)  # a fresh burst for the raw gRPC call below

    channel = grpc.insecure_channel(server.grpc_address)
    call = native_pb2_grpc.ModelServiceStub(channel).Call
    request = native_pb2.CallRequest(model="echo", method="predict", payload=b"\x81\xa4text\xa1x")
    with pytest.raises(grpc.RpcError) as raw:
        _until_refused(lambda: call(request, metadata=_as(ALICE).items()))
    assert raw.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(raw.value.trailing_metadata() or ())
    assert trailing["retry-after"] == "1"
    assert trailing[errors.ERROR_NAME_HEADER] == "RateLimited"
    channel.close()


def _until_refused(send: Callable[[], object]) -> None:
    """Send until a refusal raises (at most 10 times: the quota is 1 per second, burst 2)."""
    for _ in range(10):
        send()


def test_the_async_client_honours_it_too(start_server: StartServer, tmp_path: Path) -> None:
    server = _keyed_server(start_server, tmp_path)

    async def predictions() -> list[str]:
        async with AsyncClient(server.grpc_address, model="echo", api_key=ALICE, retries=3) as client:
            return [(await client.predict(text=str(n)))["text"] for n in range(4)]

    assert asyncio.run(predictions()) == ["0", "1", "2", "3"]


def test_a_concurrency_quota_holds_under_a_burst(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(servable("Slow"), args=("--quotas", "*=concurrency:2"))
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def one(key: str) -> None:
        with httpx.Client(base_url=server.http_url, timeout=30) as http:
            barrier.wait()
            answer = http.post(
                "/models/slow/predict", json={"seconds": 3}, headers={"x-modelpod-traffic-key": key}
            )
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert answer.headers["retry-after"] == "1"

    burst = [threading.Thread(target=one, args=("user-1",)) for _ in range(8)]
    for thread in burst:
        thread.start()
    time.sleep(1)  # user-1's burst is running: user-2 has its own count
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        other = http.post(
            "/models/slow/predict", json={"seconds": 0}, headers={"x-modelpod-traffic-key": "user-2"}
        )
        assert other.status_code == 200, other.text
        for thread in burst:
            thread.join(timeout=60)
        metrics = http.get("/metrics").text
    assert sorted(statuses) == [200, 200] + [429] * 6  # 8 at once, 3 s each: exactly 2 ran
    assert 'modelpod_quota_refusals_total{caller="traffic-key",limit="concurrency",model=""} 6.0' in metrics


def test_token_buckets_and_per_model_quotas_by_the_clock() -> None:
    now = [0.0]
    quotas = Quotas(parse_quotas("a=rate:2,burst:2; *@m=rate:1 ; b=concurrency:1"), clock=lambda: now[0])
    quotas.admit("a", "x")
    quotas.admit("a", "x")
    with pytest.raises(RateLimited) as over:
        quotas.admit("a", "x")
    assert over.value.retry_after == pytest.approx(0.5)
    now[0] = 0.5  # one token back
    quotas.admit("a", "x")
    now[0] = 10.0
    quotas.admit("c", "m")  # another caller: its own bucket for model m
    with pytest.raises(RateLimited) as per_model:
        quotas.admit("c", "m")
    assert (per_model.value.limit, per_model.value.model) == ("rate", "m")
    quotas.admit("c", "other")  # m's quota only binds m
    release = quotas.admit("b", None)
    with pytest.raises(RateLimited) as busy:
        quotas.admit("b", None)
    assert busy.value.limit == "concurrency"
    release()
    release()  # twice is once
    quotas.admit("b", None)
    assert quotas.rules["*", "m"] == Quota(rate=1.0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "is not CALLER[@MODEL]="),
        ("alice=speed:3", "is not rate:R, burst:B or concurrency:C"),
        ("alice=rate:fast", "is not a number"),
        ("alice=rate:0", "must be a positive number"),
        ("alice=burst:3", "a burst needs a rate"),
        ("alice=concurrency:1.5", "whole number"),
        ("alice=", "sets nothing"),
    ],
)
def test_bad_quotas_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_quotas(text)


def test_tritonclient_sees_429_and_resource_exhausted(start_server: StartServer) -> None:
    server = start_server(servable("Scaled"), args=("--quotas", "*=rate:0.2,burst:1"))
    x = np.array([0.5], dtype=np.float64)
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    tensor = httpclient.InferInput("x", [1], "FP64")
    tensor.set_data_from_numpy(x)
    http.infer("scaled", [tensor])
    with pytest.raises(InferenceServerException) as over_http:
        http.infer("scaled", [tensor])
    assert "over its quota" in str(over_http.value)
    http.close()
    rpc = grpcclient.InferenceServerClient(server.grpc_address)
    tensor = grpcclient.InferInput("x", [1], "FP64")
    tensor.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as over_grpc:
        rpc.infer("scaled", [tensor])
    assert over_grpc.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    rpc.close()


def test_keys_are_named_for_quotas_and_never_by_themselves() -> None:
    table = KeyTable.parse([f"predict:{ALICE} name=alice", f"admin:{BOB}"], "the list", first=3)
    assert table.name_of(ALICE.encode()) == "alice"
    assert table.name_of(BOB.encode()) == "key-4"  # by its place among all keys
    assert table.name_of(b"nobody") is None
    assert table.role_of(ALICE.encode()) is Role.PREDICT
    with pytest.raises(ValueError, match="only name=NAME may follow"):
        KeyTable.parse([f"predict:{ALICE} colour=red"], "the list")


def test_streams_count_against_quotas_over_grpc(start_server: StartServer) -> None:
    server = start_server(
        f"{ROOT}/tests/servable_traffic.py:Versioned", args=("--quotas", "*=rate:0.2,burst:2")
    )
    with Client(server.grpc_address, model="versioned", retries=0) as client:
        assert list(client.predict_stream(prompt="x")) == ["v1 ", "v1 "]  # CallStream: one of 2
    prompt = pb.ModelInferRequest.InferInputTensor(name="prompt", datatype="BYTES", shape=[1])
    prompt.contents.bytes_contents.append(b"x")
    request = pb.ModelInferRequest(model_name="versioned", inputs=[prompt])
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert len(list(stub.ModelStreamInfer(iter([request]), timeout=30))) == 2  # two of 2
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.ModelStreamInfer(iter([request]), timeout=30))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with Client(server.grpc_address, model="versioned", retries=0) as client, pytest.raises(RateLimited):
        list(client.predict_stream(prompt="x"))
