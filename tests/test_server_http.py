"""The HTTP API of a real `modelpod serve` process, driven with httpx."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgpack
import numpy as np
import pytest

from modelpod.protocol import native

from conftest import ServerProcess, example, launch, servable

MODELS = (
    servable("Echo"),
    servable("Broken"),
    servable("FailsToLoad"),
    servable("Doubler"),
    servable("Custom"),
    servable("Bytes"),
    servable("Pick"),
    example("iris.py:IrisClassifier"),
    f"sentiment={example('cortex_style.py:SentimentPredictor')}",
    example("functions.py:add"),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch(MODELS, tmp_path_factory.mktemp("http") / "appdata", ("--model-pool-size", "2"))
    yield process
    assert process.stop() == 0, process.output


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert list(body) == ["error"], body
    return str(body["error"])


# -- start-up -------------------------------------------------------------------------------------


def test_prints_where_it_listens_and_each_model_loaded(server: ServerProcess) -> None:
    assert f"modelpod: HTTP listening on http://127.0.0.1:{server.http_port}" in server.lines
    assert f"modelpod: gRPC listening on 127.0.0.1:{server.grpc_port}" in server.lines
    for name in ("echo", "iris", "sentiment", "add", "doubler"):
        assert any(line.startswith(f"modelpod: loaded {name}:1 in ") for line in server.lines), name


def test_a_model_that_fails_to_load_is_reported_and_others_serve(
    server: ServerProcess, http: httpx.Client
) -> None:
    assert any(
        "failstoload:1 failed to load" in line and "weights file missing" in line for line in server.lines
    )
    ready = http.get("/v2/models/failstoload/ready")
    assert ready.status_code == 503
    assert ready.json() == {"name": "failstoload", "ready": False}
    refused = http.post("/models/failstoload/predict", json={"x": 1})
    assert refused.status_code == 503
    assert "weights file missing" in error_of(refused)
    index = {(m["name"], m["version"]): m for m in http.post("/v2/repository/index").json()}
    assert index[("failstoload", "1")]["state"] == "UNAVAILABLE"
    assert "weights file missing" in index[("failstoload", "1")]["reason"]
    assert http.post("/models/echo/predict", json={"text": "still here"}).json()["text"] == "still here"


# -- native routes --------------------------------------------------------------------------------


def test_predict_with_keyword_arguments(http: httpx.Client) -> None:
    response = http.post("/models/echo/predict", json={"text": "hi", "repeat": 2})
    assert response.status_code == 200
    assert response.json() == {"text": "hihi", "version": "1", "config": {}}


def test_predict_example_models(http: httpx.Client) -> None:
    iris = http.post("/models/iris/predict", json={"features": [5.1, 3.5, 1.4, 0.2]}).json()
    assert iris["label"] == "setosa"
    assert http.post("/models/add/predict", json={"a": 2, "b": 3.5}).json() == 5.5


def test_cortex_predictor_gets_payload_and_query_params(http: httpx.Client) -> None:
    good = http.post("/models/sentiment/predict", json={"text": "a great and lovely day"})
    assert good.status_code == 200
    assert good.json()["label"] == "positive"
    strict = http.post("/models/sentiment/predict", params={"threshold": "100"}, json={"text": "a great day"})
    assert strict.json()["label"] != "positive"
    bad = http.post("/models/sentiment/predict", json={"no_text": 1})
    assert bad.status_code == 400
    assert "error" in bad.json()


def test_router_forwards_by_query_parameter(http: httpx.Client) -> None:
    assert http.post("/models/pick/predict", params={"model": "sum"}, json={"a": 1, "b": 2}).json() == 3
    assert http.post("/models/pick/predict", json={"text": "hi"}).json()["text"] == "hi"
    unknown = http.post("/models/pick/predict", params={"model": "nope"}, json={})
    assert unknown.status_code == 400
    assert "choose one of talk, sum" in error_of(unknown)
    body = {"inputs": [{"name": "a", "datatype": "FP64", "shape": [2], "data": [1, 2]},
                       {"name": "b", "datatype": "FP64", "shape": [2], "data": [10, 20]}]}  # fmt: skip
    summed = http.post("/v2/models/pick/infer", params={"model": "sum"}, json=body).json()
    assert summed["outputs"][0]["data"] == [11.0, 22.0]


def test_model_response_object_is_returned_as_it_is(http: httpx.Client) -> None:
    created = http.post("/models/custom/predict", json={"n": 3})
    assert created.status_code == 201
    assert created.headers["x-custom"] == "yes"
    assert created.json() == {"n": 3}
    refused = http.post("/models/custom/predict", json={"n": -1})
    assert refused.status_code == 400
    assert refused.json() == {"error": "n must not be negative"}


def test_binary_data_in_and_out(http: httpx.Client) -> None:
    response = http.post(
        "/models/bytes/predict",
        content=b"\x00\xffabc",
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"cba\xff\x00"


def test_msgpack_round_trips_arrays(http: httpx.Client) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    response = http.post(
        "/models/echo/predict",
        content=native.pack({"text": "x"}),
        headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
    )
    assert response.headers["content-type"] == "application/msgpack"
    assert native.unpack(response.content)["text"] == "x"
    doubled = http.post(
        "/v2/models/doubler/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": array.ravel().tolist()}]},
    ).json()
    assert doubled["outputs"][0]["data"] == (array * 2).ravel().tolist()
    assert msgpack.unpackb(response.content) is not None


def test_initialize_train_log_and_predict_a_new_version(http: httpx.Client, server: ServerProcess) -> None:
    info = http.post("/models/echo/versions/7/initialize", json={"greeting": "hello"}).json()
    assert info["version"] == "7"
    assert info["config"] == {"greeting": "hello"}
    assert info["class"] == "servable:Echo"
    assert (server.data_path / "echo" / "7" / "model_info.json").exists()
    assert http.post("/models/echo/versions/7/train", json={"steps": 4}).status_code == 202
    while (job := http.get("/models/echo/versions/7/train").json())["state"] == "running":
        time.sleep(0.02)
    assert job["result"] == {"steps": 4}
    log = http.get("/models/echo/versions/7/log").json()
    assert [entry["step"] for entry in log] == [1, 2, 3, 4]
    assert log[-1]["metrics"] == {"loss": 0.25}
    assert http.post("/models/echo/versions/7/log").json() == log
    answer = http.post("/models/echo/versions/7/predict", json={"text": "v7"}).json()
    assert answer == {"text": "v7", "version": "7", "config": {"greeting": "hello"}}
    listing = {m["name"]: m for m in http.get("/models").json()}
    assert [v["version"] for v in listing["echo"]["versions"]] == ["1", "7"]
    assert http.get("/models/echo").json() == listing["echo"]


def test_reinitialize_reloads_with_the_new_config(http: httpx.Client) -> None:
    http.post("/models/echo/versions/cfg/initialize", json={"n": 1})
    assert http.post("/models/echo/versions/cfg/predict", json={"text": ""}).json()["config"] == {"n": 1}
    http.post("/models/echo/versions/cfg/initialize", json={"n": 2})
    assert http.post("/models/echo/versions/cfg/predict", json={"text": ""}).json()["config"] == {"n": 2}


def test_concurrent_requests(http: httpx.Client) -> None:
    def call(i: int) -> str:
        return str(http.post("/models/echo/predict", json={"text": str(i)}).json()["text"])

    with ThreadPoolExecutor(16) as executor:
        assert list(executor.map(call, range(64))) == [str(i) for i in range(64)]


# -- errors: one table, a clear message, and the server keeps serving --------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/models/nope/predict", {}, 404, "model 'nope' is not served here"),
        ("POST", "/models/echo/versions/9/predict", {"text": "x"}, 404, "has no version '9'"),
        ("POST", "/models/echo/versions/..%2F..%2Fetc/predict", {}, 404, ""),
        ("POST", "/models/echo/versions/bad$name/initialize", {}, 400, "invalid version"),
        ("POST", "/models/echo/fly", {}, 404, "unknown method 'fly'"),
        ("POST", "/models/echo/predict", {}, 400, "missing a required argument: 'text'"),
        (
            "POST",
            "/models/echo/predict",
            {"text": "a", "colour": 1},
            400,
            "unexpected keyword argument 'colour'",
        ),
        ("POST", "/models/echo/predict", {"text": 5}, 400, "text must be a string"),
        ("POST", "/models/echo/predict", [1, 2], 400, "keyword arguments"),
        ("POST", "/models/iris/predict", {"features": [1]}, 400, "features must have 4 numbers"),
        ("GET", "/nowhere", None, 404, "no such route: GET /nowhere"),
        ("DELETE", "/models/echo/predict", None, 405, "method not allowed"),
        ("PUT", "/models/echo/default", {"version": "42"}, 404, "has no version '42'"),
        ("PUT", "/models/echo/default", {"wrong": 1}, 400, '{"version": "<version>"}'),
        ("POST", "/models/doubler/train", {}, 400, "has no train() method"),
    ],
)
def test_errors(http: httpx.Client, method: str, path: str, body: object, status: int, message: str) -> None:
    response = http.request(method, path, json=body) if body is not None else http.request(method, path)
    assert response.status_code == status, response.text
    if status >= 400:
        assert message in error_of(response)
    assert http.post("/models/echo/predict", json={"text": "ok"}).json()["text"] == "ok"


def test_malformed_json_and_bad_utf8(http: httpx.Client) -> None:
    for content in (b'{"text": ', b"\xff\xfe{}", b"[" * 100_000, b'{"text": NaN}'):
        response = http.post(
            "/models/echo/predict", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, content[:10]
        assert "not valid JSON" in error_of(response)


def test_model_that_raises_gets_500_with_an_error_id_and_no_details(
    http: httpx.Client, server: ServerProcess
) -> None:
    response = http.post("/models/broken/predict", json={"x": 1})
    assert response.status_code == 500
    message = error_of(response)
    error_id = response.headers["x-error-id"]
    assert f"error id {error_id}" in message
    assert "RuntimeError" in message
    assert "do-not-leak" not in response.text
    assert "Traceback" not in response.text
    server.wait_for_line(f"error id {error_id}")
    assert http.post("/models/echo/predict", json={"text": "fine"}).status_code == 200


def test_body_size_limit(tmp_path_factory: pytest.TempPathFactory) -> None:
    small = launch((servable("Echo"),), tmp_path_factory.mktemp("limit"), ("--max-message-size", "1KiB"))
    try:
        with httpx.Client(base_url=small.http_url) as client:
            too_big = client.post("/models/echo/predict", json={"text": "x" * 2000})
            assert too_big.status_code == 413
            assert "at most 1024" in error_of(too_big)
            assert client.post("/models/echo/predict", json={"text": "x"}).status_code == 200
    finally:
        assert small.stop() == 0


# -- Open Inference Protocol over HTTP (tritonclient tests cover the rest) ------------------------------


def test_v2_server_and_model_metadata(http: httpx.Client) -> None:
    meta = http.get("/v2").json()
    assert meta["name"] == "modelpod"
    assert "binary_tensor_data" in meta["extensions"]
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    iris = http.get("/v2/models/iris").json()
    assert iris["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, -1]}]
    assert http.get("/v2/models/echo/versions/1").json()["versions"] == ["1"]
    assert http.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": True}
    assert http.get("/v2/models/nope").status_code == 404


def test_v2_infer_on_a_keyword_model_runs_one_request_per_row(http: httpx.Client) -> None:
    body = {
        "id": "req-1",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}],
    }
    response = http.post("/v2/models/echo/infer", json=body).json()
    assert response["id"] == "req-1"
    assert response["model_version"] == "1"
    outputs = {o["name"]: o for o in response["outputs"]}
    assert outputs["text"]["data"] == ["a", "b", "c"]
    assert outputs["version"]["data"] == ["1", "1", "1"]


def test_openapi_document_and_docs_page(http: httpx.Client) -> None:
    document = http.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert "/v2/models/{name}/infer" in document["paths"]
    assert "/models/{name}/{method}" in document["paths"]
    assert "/openapi.json" in http.get("/docs").text
