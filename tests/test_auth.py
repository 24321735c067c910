"""API keys and roles against a real `modelpod serve` process, over HTTP and gRPC alike.

One server with one admin key (from MODELPOD_API_KEYS) and one predict key (from a key file);
the rules themselves (which route needs which role, loopback or not) are checked as functions.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelpod import errors
from modelpod.client import AsyncClient, Client
from modelpod.protocol import native
from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2, native_pb2_grpc
from modelpod.server import auth
from modelpod.server.auth import Role
from modelpod.server.settings import Settings

from conftest import ROOT, ServerProcess, launch, servable

ADMIN = secrets.token_urlsafe(24)
PREDICT = secrets.token_urlsafe(24)
WRONG = secrets.token_urlsafe(24)
KEYS = {"admin": ADMIN, "predict": PREDICT, None: None, "wrong": WRONG}


# -- the rules, as functions ----------------------------------------------------------------------------


def test_keys_parse_with_roles_and_compare_whole() -> None:
    table = auth.KeyTable.parse([f"admin:{ADMIN}", f" predict : {PREDICT} "], "test")
    assert table.role_of(ADMIN.encode()) is Role.ADMIN
    assert table.role_of(PREDICT.encode()) is Role.PREDICT
    assert table.role_of(ADMIN[:-1].encode()) is None
    assert table.role_of(ADMIN.encode() + b"x") is None
    assert table.role_of(b"") is None
    assert table.role_of(None) is None
    assert not auth.KeyTable(())


@pytest.mark.parametrize("entry", ["reader:abc", "admin", "admin:", ":abc", "predict: "])
def test_bad_key_entries_are_refused_without_quoting_them(entry: str) -> None:
    with pytest.raises(ValueError, match="entry 2 of the list is not ROLE:KEY") as caught:
        auth.KeyTable.parse(["admin:fine-key", entry], "the list")
    assert "abc" not in str(caught.value)
    assert "fine-key" not in str(caught.value)


def test_keys_come_from_the_setting_and_the_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# the team's keys\n\npredict:{PREDICT}\n  # rotated: predict:old\n")
    keys = auth.load_keys(Settings(api_keys=f"admin:{ADMIN}", api_key_file=key_file))
    assert keys.role_of(ADMIN.encode()) is Role.ADMIN
    assert keys.role_of(PREDICT.encode()) is Role.PREDICT
    assert keys.role_of(b"old") is None
    assert not auth.load_keys(Settings())
    assert ADMIN not in repr(Settings(api_keys=f"admin:{ADMIN}"))


def test_unusable_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read the API key file .*missing"):
        auth.load_keys(Settings(api_key_file=tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no key"):
        auth.load_keys(Settings(api_key_file=empty))


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", b"abc"),
        ("bearer  abc ", b"abc"),
        (b"BEARER abc", b"abc"),
        ("Basic YWJj", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_bearer_key(header: str | bytes | None, key: bytes | None) -> None:
    assert auth.bearer_key(header) == key


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/v2/health/live", None),
        ("GET", "/v2/health/ready", None),
        ("GET", "/v2/health/ready/", None),
        ("GET", "/v2", None),
        ("GET", "/", None),
        ("GET", "/ui", None),
        ("GET", "/docs", None),
        ("GET", "/openapi.json", None),
        ("GET", "/ui/activity", Role.PREDICT),
        ("GET", "/metrics", Role.PREDICT),
        ("GET", "/models", Role.PREDICT),
        ("GET", "/models/echo/versions/1/log", Role.PREDICT),
        ("GET", "/models/echo/train/events", Role.PREDICT),
        ("GET", "/v2/models/echo/stats", Role.PREDICT),
        ("POST", "/v2/models/echo/infer", Role.PREDICT),
        ("POST", "/v2/repository/index", Role.PREDICT),
        ("POST", "/models/echo/predict", Role.PREDICT),
        ("POST", "/models/echo/versions/3/log", Role.PREDICT),
        ("POST", "/models/train/predict", Role.PREDICT),  # a model named "train"
        ("POST", "/models/echo/initialize", Role.ADMIN),
        ("POST", "/models/echo/versions/3/train", Role.ADMIN),
        ("POST", "/models/echo/something_new", Role.ADMIN),
        ("PUT", "/models/echo/default", Role.ADMIN),
        ("POST", "/v2/repository/models/echo/load", Role.ADMIN),
        ("POST", "/v2/repository/models/echo/unload", Role.ADMIN),
        ("POST", "/v2/health/live", Role.PREDICT),  # only reading is open
        ("GET", "/no/such/route", Role.PREDICT),
    ],
)
def test_which_http_route_needs_which_role(method: str, path: str, role: Role | None) -> None:
    assert auth.http_role(method, path) == role


def test_which_rpc_needs_which_role() -> None:
    v2 = "/inference.GRPCInferenceService/"
    assert auth.grpc_role(v2 + "ServerLive") is None
    assert auth.grpc_role(v2 + "ServerReady") is None
    assert auth.grpc_role(v2 + "ModelInfer") is Role.PREDICT
    assert auth.grpc_role(v2 + "ModelStreamInfer") is Role.PREDICT
    assert auth.grpc_role(v2 + "RepositoryModelLoad") is Role.ADMIN
    assert auth.grpc_role(v2 + "RepositoryModelUnload") is Role.ADMIN
    assert auth.grpc_role("/modelpod.native.ModelService/Call") is Role.PREDICT
    assert [auth.native_role(m) for m in ("predict", "log", "training", "initialize", "train")] == [
        Role.PREDICT,
        Role.PREDICT,
        Role.PREDICT,
        Role.ADMIN,
        Role.ADMIN,
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_no_warning_on_loopback(host: str) -> None:
    assert auth.exposure_warning(host, auth.KeyTable(())) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "192.168.0.7", "model-host.example"])
def test_warning_when_reachable_from_elsewhere_without_keys(host: str) -> None:
    warning = auth.exposure_warning(host, auth.KeyTable(()))
    assert warning is not None
    assert f"serving on {host} without API keys" in warning
    assert "MODELPOD_API_KEYS" in warning
    keys = auth.KeyTable.parse([f"admin:{ADMIN}"], "test")
    assert auth.exposure_warning(host, keys) is None


def test_the_server_refuses_bad_keys_at_start_without_printing_them(tmp_path: Path) -> None:
    secret = "do-not-print-" + secrets.token_hex(8)
    done = subprocess.run(
        [sys.executable, "-m", "modelpod", "serve", servable("Echo"), "--http-port", "0", "--grpc-port", "0",
         "--data-path", str(tmp_path)],
        cwd=ROOT,
        env={"PATH": "", "MODELPOD_API_KEYS": f"admin:{ADMIN},reader:{secret}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "entry 2 of the API keys (MODELPOD_API_KEYS) is not ROLE:KEY" in done.stderr
    assert secret not in done.stdout + done.stderr
    assert ADMIN not in done.stdout + done.stderr
    assert "listening" not in done.stdout


# -- a server with keys -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("auth")
    key_file = folder / "keys.txt"
    key_file.write_text(f"# predict only\npredict:{PREDICT}\n")
    process = launch(
        (servable("Echo"), servable("Doubler")),
        folder / "appdata",
        args=("--log-level", "debug"),
        env={"MODELPOD_API_KEYS": f"admin:{ADMIN}", "MODELPOD_API_KEY_FILE": str(key_file)},
    )
    yield process
    process.stop(timeout=15)


def headers(who: str | None) -> dict[str, str]:
    key = KEYS[who]
    return {"Authorization": f"Bearer {key}"} if key else {}


def infer_body() -> dict[str, Any]:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


# What a predict key may do: each with the status it gets when allowed.
PREDICT_ROUTES = [
    ("POST", "/models/echo/predict", {"text": "hi"}),
    ("GET", "/models", None),
    ("GET", "/models/echo", None),
    ("GET", "/v2/models/echo", None),
    ("GET", "/v2/models/echo/ready", None),
    ("GET", "/v2/models/echo/stats", None),
    ("GET", "/metrics", None),
    ("POST", "/v2/models/doubler/infer", infer_body()),
    ("POST", "/v2/repository/index", None),
]
# What only an admin key may do.
ADMIN_ROUTES = [
    ("POST", "/models/echo/versions/made-by-admin/initialize", {"size": 1}),
    ("PUT", "/models/echo/default", {"version": "1"}),
    ("POST", "/v2/repository/models/doubler/unload", None),
    ("POST", "/v2/repository/models/doubler/load", None),
    ("POST", "/models/echo/versions/1/train", {"steps": 1}),
]


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2", "/docs", "/openapi.json"])
def test_health_and_docs_stay_open(http: httpx.Client, path: str) -> None:
    assert http.get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), PREDICT_ROUTES)
@pytest.mark.parametrize("who", ["predict", "admin"])
def test_predict_routes_take_either_key(
    http: httpx.Client, who: str, method: str, path: str, body: Any
) -> None:
    response = http.request(method, path, json=body, headers=headers(who))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(("method", "path", "body"), PREDICT_ROUTES + ADMIN_ROUTES)
@pytest.mark.parametrize("who", [None, "wrong"])
def test_without_a_known_key_everything_else_is_401(
    http: httpx.Client, who: str | None, method: str, path: str, body: Any
) -> None:
    response = http.request(method, path, json=body, headers=headers(who))
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json() == {
        "error": "this server needs an API key: send the header 'Authorization: Bearer KEY'"
    }
    assert response.headers["x-modelpod-error"] == "Unauthenticated"


def test_other_schemes_are_not_keys(http: httpx.Client) -> None:
    response = http.get("/models", headers={"Authorization": f"Basic {PREDICT}"})
    assert response.status_code == 401


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_a_predict_key_on_an_admin_route_is_403(
    http: httpx.Client, method: str, path: str, body: Any
) -> None:
    response = http.request(method, path, json=body, headers=headers("predict"))
    assert response.status_code == 403
    assert response.json() == {"error": "this API key has the predict role; this needs admin"}
    assert response.headers["x-modelpod-error"] == "Forbidden"


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES[:4])
def test_an_admin_key_does_admin_work(http: httpx.Client, method: str, path: str, body: Any) -> None:
    response = http.request(method, path, json=body, headers=headers("admin"))
    assert response.status_code == 200, response.text


def test_client_over_http_and_grpc(server: ServerProcess) -> None:
    for address in (server.http_url, server.grpc_address):
        with Client(address, model="echo", api_key=PREDICT) as echo:
            assert echo.predict(text="hi")["text"] == "hi"
            assert echo.metadata()["name"] == "echo"
            with pytest.raises(errors.Forbidden, match="predict role; this needs admin"):
                echo.version("from-client").initialize(size=2)
        with Client(address, model="echo", api_key=ADMIN) as echo:
            assert echo.version("from-client").initialize(size=2) is not None
            assert echo.version("from-client").predict(text="x")["config"] == {"size": 2}
        with Client(address, model="echo", api_key=WRONG, retries=0) as echo:
            assert echo.live()
            with pytest.raises(errors.Unauthenticated, match="needs an API key"):
                echo.predict(text="hi")


def test_client_takes_its_key_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPOD_API_KEY", PREDICT)
    with Client(server.grpc_address, model="echo") as echo:
        assert echo.predict(text="env")["text"] == "env"
    monkeypatch.setenv("MODELPOD_API_KEY", "")
    with Client(server.http_url, model="echo") as echo, pytest.raises(errors.Unauthenticated):
        echo.predict(text="env")


def test_async_client(server: ServerProcess) -> None:
    async def run() -> None:
        for address in (server.http_url, server.grpc_address):
            async with AsyncClient(address, model="echo", api_key=PREDICT) as echo:
                assert (await echo.predict(text="a"))["text"] == "a"
                with pytest.raises(errors.Forbidden):
                    await echo.initialize(size=3)

    asyncio.run(run())


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_address) as opened:
        yield opened


def metadata(who: str | None) -> tuple[tuple[str, str], ...]:
    return tuple((name.lower(), value) for name, value in headers(who).items())


def rpc_code(call: Any) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return None


def test_grpc_health_stays_open(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10).name


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        (None, grpc.StatusCode.UNAUTHENTICATED),
        ("wrong", grpc.StatusCode.UNAUTHENTICATED),
        ("predict", grpc.StatusCode.PERMISSION_DENIED),
        ("admin", None),
    ],
)
def test_grpc_repository_load_needs_admin(
    channel: grpc.Channel, who: str | None, expected: grpc.StatusCode | None
) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.RepositoryModelLoadRequest(model_name="doubler")
    assert rpc_code(lambda: stub.RepositoryModelLoad(request, metadata=metadata(who), timeout=30)) == expected


@pytest.mark.parametrize(
    ("who", "method", "expected"),
    [
        (None, "predict", grpc.StatusCode.UNAUTHENTICATED),
        ("predict", "predict", None),
        ("predict", "log", None),
        ("predict", "initialize", grpc.StatusCode.PERMISSION_DENIED),
        ("predict", "train", grpc.StatusCode.PERMISSION_DENIED),
        ("admin", "predict", None),
        ("admin", "initialize", None),
    ],
)
def test_grpc_native_calls_by_the_method_they_carry(
    channel: grpc.Channel, who: str | None, method: str, expected: grpc.StatusCode | None
) -> None:
    stub = native_pb2_grpc.ModelServiceStub(channel)
    arguments = {"text": "x"} if method == "predict" else {}
    version = "1" if method in ("predict", "log") else "native"  # what an admin may create
    request = native_pb2.CallRequest(
        model="echo", version=version, method=method, payload=native.pack(arguments)
    )
    assert rpc_code(lambda: stub.Call(request, metadata=metadata(who), timeout=30)) == expected


def test_grpc_native_stream_is_checked_before_it_runs(channel: grpc.Channel) -> None:
    stub = native_pb2_grpc.ModelServiceStub(channel)
    request = native_pb2.CallRequest(model="echo", method="train")
    refused = rpc_code(lambda: list(stub.CallStream(request, metadata=metadata("predict"), timeout=10)))
    assert refused == grpc.StatusCode.PERMISSION_DENIED
    allowed = native_pb2.CallRequest(model="echo", method="predict")
    assert rpc_code(lambda: list(stub.CallStream(allowed, metadata=metadata("predict"), timeout=10))) == (
        grpc.StatusCode.INVALID_ARGUMENT  # past the check, the servicer answers: echo needs its text
    )


@pytest.mark.parametrize("method", ["Call", "CallStream"])
def test_grpc_native_bytes_that_are_no_message_are_the_clients_error(
    channel: grpc.Channel, method: str
) -> None:
    kind = channel.unary_unary if method == "Call" else channel.unary_stream
    rpc = kind(
        f"/modelpod.native.ModelService/{method}", request_serializer=bytes, response_deserializer=bytes
    )
    refused = rpc_code(lambda: list(rpc(b"\xff\xff", metadata=metadata("predict"), timeout=10)))
    assert refused == grpc.StatusCode.INVALID_ARGUMENT


def test_grpc_streaming_infer_needs_a_key(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    request = pb.ModelInferRequest(model_name="doubler")
    call = lambda who: list(stub.ModelStreamInfer(iter([request]), metadata=metadata(who), timeout=10))  # noqa: E731
    assert rpc_code(lambda: call(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert rpc_code(lambda: call("predict")) is None  # the stream carries the request's own error


def test_grpc_refusals_name_the_error(channel: grpc.Channel) -> None:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="echo"), timeout=10)
    error: Any = caught.value
    assert error.details() == "this server needs an API key: send the header 'Authorization: Bearer KEY'"
    assert dict(error.trailing_metadata())["x-modelpod-error"] == "Unauthenticated"


def test_tritonclient_http_with_headers(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.http_port}")
    try:
        assert client.is_server_live()
        x = httpclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
        result = client.infer("doubler", [x], headers=headers("predict"))
        assert result.as_numpy("y").tolist() == [[2.0, 4.0]]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("doubler", [x])
        assert caught.value.status() == "401"
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("doubler", headers=headers("predict"))
        assert caught.value.status() == "403"
    finally:
        client.close()


def test_tritonclient_grpc_with_headers(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_live()
        x = grpcclient.InferInput("x", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[1.0, 2.0]], dtype=np.float32))
        result = client.infer("doubler", [x], headers={"authorization": f"Bearer {PREDICT}"})
        assert result.as_numpy("y").tolist() == [[2.0, 4.0]]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("doubler", [x])
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as caught:
            client.unload_model("doubler", headers={"authorization": f"Bearer {PREDICT}"})
        assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    finally:
        client.close()


def test_keys_never_reach_the_log(server: ServerProcess, http: httpx.Client) -> None:
    http.post("/models/echo/initialize", json={}, headers=headers("predict"))
    http.get("/models", headers=headers("wrong"))
    http.post("/models/nope/predict", json={}, headers=headers("admin"))  # an error that is logged
    assert server.lines, "the server printed nothing"
    for key in (ADMIN, PREDICT, WRONG):
        assert key not in server.output
    assert "without API keys" not in server.output  # keys given, on loopback: no warning
