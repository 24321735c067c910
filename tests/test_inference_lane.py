"""The inference lane takes exactly the inference routes past Starlette's router: the paths Starlette
would have matched to them, with the same parameters, and nothing else; what it takes is answered
as before, errors included, and what it leaves still reaches Starlette."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from starlette.routing import Match

from modelpod.server import routes_native, routes_v2
from modelpod.server.http import all_routes
from modelpod.server.inference_lane import inference_route

from conftest import StartServer, example, servable


@pytest.mark.parametrize(
    ("path", "endpoint", "params"),
    [
        ("/models/iris/predict", routes_native.call_method, {"name": "iris", "method": "predict"}),
        ("/models/iris/train", routes_native.call_method, {"name": "iris", "method": "train"}),
        (
            "/models/iris/versions/2/predict",
            routes_native.call_method,
            {"name": "iris", "version": "2", "method": "predict"},
        ),
        ("/v2/models/iris/infer", routes_v2.infer, {"name": "iris"}),
        ("/v2/models/iris/versions/2/infer", routes_v2.infer, {"name": "iris", "version": "2"}),
        ("/models/a b/predict", routes_native.call_method, {"name": "a b", "method": "predict"}),
    ],
)
def test_inference_paths_go_to_their_endpoint_with_starlettes_parameters(
    path: str, endpoint: object, params: dict[str, str]
) -> None:
    assert inference_route(path) == (endpoint, params)
    assert starlettes_route(path) == (endpoint, params)


def starlettes_route(path: str) -> tuple[object, dict[str, str]] | None:
    """The endpoint and parameters of the first route Starlette matches to `POST path`."""
    scope = {"type": "http", "method": "POST", "path": path, "root_path": ""}
    for route in all_routes():
        match, child = route.matches(scope)
        if match is Match.FULL:
            return child["endpoint"], child["path_params"]
    return None


@pytest.mark.parametrize(
    "path",
    [
        "/models",
        "/models/iris",
        "/models//predict",  # an empty segment: no parameter matches it
        "/models/iris/predict/",
        "/models/iris/v/2/predict",
        "/v2/models/iris",
        "/v2/models/iris/ready",
        "/v2/models/iris/versions/2/ready",
        "/v2/models/iris/infer/x",
        "/v1/embeddings",
        "models/iris/predict",
        "",
    ],
)
def test_every_other_path_is_left_to_starlette(path: str) -> None:
    assert inference_route(path) is None
    found = starlettes_route(path)  # Starlette's router takes it to another route, or to none
    assert found is None or found[0] not in (routes_native.call_method, routes_v2.infer)


def test_what_the_lane_takes_is_answered_as_before_and_the_rest_reaches_starlette(
    start_server: StartServer,
) -> None:
    server = start_server(servable("Echo"), example("mlp.py:MLP"))
    with httpx.Client(base_url=f"http://127.0.0.1:{server.http_port}", timeout=30) as client:
        answer = client.post("/models/echo/predict", json={"text": "ab", "repeat": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == "abab"
        assert answer.headers["x-modelpod-model"] == "echo"  # the endpoint's own headers
        assert client.post("/models/echo/versions/1/predict", json={"text": "x"}).json()["text"] == "x"
        row = np.linspace(-1, 1, 16).tolist()
        tensor = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": row}
        v2 = client.post("/v2/models/mlp/infer", json={"inputs": [tensor]})
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["shape"] == [1, 4]
        # Errors keep their table: a model's refusal, an unknown model, a body that is not JSON.
        refused = client.post("/models/echo/predict", json={"text": 3})
        assert (refused.status_code, refused.headers["x-modelpod-error"]) == (400, "InvalidInput")
        missing = client.post("/v2/models/nope/infer", json={"inputs": [tensor]})
        assert missing.status_code == 404
        assert "nope" in missing.json()["error"]
        assert client.post("/models/echo/predict", content=b"{not json").status_code == 400
        # Left to Starlette: its routes, its 404 for a path no route matches, its 405.
        assert client.get("/models/echo").json()["name"] == "echo"
        assert client.post("/models//predict").status_code == 404
        assert client.get("/models/echo/predict").status_code == 405
