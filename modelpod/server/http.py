"""The HTTP edge: one Starlette app around the inference service."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from modelpod.server import docs, routes_metrics, routes_native, routes_v2
from modelpod.server.endpoints import route_not_found
from modelpod.service import InferenceService


def create_app(service: InferenceService, max_body_bytes: int | None = None) -> Starlette:
    """The whole HTTP API: native routes, the Open Inference Protocol, and the OpenAPI docs."""
    routes: list[BaseRoute] = [
        *routes_native.routes(),
        *routes_v2.routes(),
        *routes_metrics.routes(),
        *docs.routes(),
    ]
    not_found = {404: route_not_found, 405: route_not_found}
    app = Starlette(routes=routes, exception_handlers=not_found)
    app.state.service = service
    app.state.max_body_bytes = max_body_bytes
    return app
