"""A multi-model endpoint: one served name that forwards each request to one of several models.

    class Classify(Router):
        routes = {"flowers": "iris", "mood": "sentiment"}   # query value -> served model
        route_param = "model"                               # POST /models/classify/predict?model=mood
        default_route = "flowers"

The client calls one endpoint and never learns which model answered. Override `choose` to route
on anything else in the request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from modelpod.errors import InvalidInput
from modelpod.runtime.model import Model


class Router(Model):
    """Serve it beside the models it names; `modelpod serve` forwards its requests to them."""

    routes: ClassVar[Mapping[str, str]] = {}
    route_param: ClassVar[str] = "model"
    default_route: ClassVar[str | None] = None

    def choose(self, query_params: Mapping[str, str], inputs: Mapping[str, Any]) -> str:
        """The served model that answers this request."""
        choice = query_params.get(self.route_param, self.default_route)
        if choice is None:
            raise InvalidInput(f"choose a model with ?{self.route_param}=: one of {', '.join(self.routes)}")
        if choice not in self.routes:
            raise InvalidInput(
                f"unknown {self.route_param} {choice!r}; choose one of {', '.join(self.routes)}"
            )
        return self.routes[choice]

    def predict(self, **inputs: Any) -> Any:
        raise InvalidInput(f"{self.model_name} only routes requests; serve it with the models it names")
