"""A multi-model endpoint: which served model answers a request."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from modelpod import InvalidInput, Router


class Classify(Router):
    name = "classify"
    routes = {"flowers": "iris", "mood": "sentiment"}
    default_route = "flowers"


class NoDefault(Router):
    name = "no-default"
    routes = {"a": "model-a", "b": "model-b"}
    route_param = "task"


class BySize(Router):
    """Routes on the request itself, not on its query string."""

    name = "by-size"
    routes = {"small": "tiny-model", "large": "big-model"}

    def choose(self, query_params: Mapping[str, str], inputs: Mapping[str, Any]) -> str:
        if "model" in query_params:
            return super().choose(query_params, inputs)
        return self.routes["large" if len(inputs.get("text", "")) > 10 else "small"]


def test_default_route(tmp_path: Path) -> None:
    assert Classify(data_path=tmp_path).choose({}, {}) == "iris"
    assert Classify(data_path=tmp_path).choose({"other": "mood"}, {"text": "x"}) == "iris"


def test_route_by_query_parameter(tmp_path: Path) -> None:
    router = Classify(data_path=tmp_path)
    assert router.choose({"model": "mood"}, {}) == "sentiment"
    assert router.choose({"model": "flowers"}, {}) == "iris"
    assert NoDefault(data_path=tmp_path).choose({"task": "b", "model": "a"}, {}) == "model-b"


def test_unknown_route(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unknown model 'iris'; choose one of flowers, mood"):
        Classify(data_path=tmp_path).choose({"model": "iris"}, {})  # a target is not a route
    with pytest.raises(InvalidInput, match="unknown task 'c'; choose one of a, b"):
        NoDefault(data_path=tmp_path).choose({"task": "c"}, {})


def test_no_route_and_no_default(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"choose a model with \?task=: one of a, b"):
        NoDefault(data_path=tmp_path).choose({"model": "a"}, {})


def test_custom_choose(tmp_path: Path) -> None:
    router = BySize(data_path=tmp_path)
    assert router.choose({}, {"text": "short"}) == "tiny-model"
    assert router.choose({}, {"text": "a rather longer text"}) == "big-model"
    assert router.choose({"model": "large"}, {"text": ""}) == "big-model"
    with pytest.raises(InvalidInput, match="unknown model 'huge'"):
        router.choose({"model": "huge"}, {})


def test_a_router_does_not_predict(tmp_path: Path) -> None:
    with pytest.raises(
        InvalidInput, match="classify only routes requests; serve it with the models it names"
    ):
        Classify(data_path=tmp_path).predict(text="hello")
    with pytest.raises(InvalidInput, match=r"^renamed only routes requests"):
        Classify(name="renamed", data_path=tmp_path).predict()
