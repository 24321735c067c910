"""The HTTP edge: one Starlette app around the inference service."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from modelpod.server import docs, routes_metrics, routes_native, routes_openai, routes_v2, status_page
from modelpod.server.auth import AuthMiddleware, KeyTable
from modelpod.server.endpoints import EdgeContext, route_not_found
from modelpod.server.inference_lane import InferenceLane
from modelpod.server.quota_edges import QuotaMiddleware
from modelpod.serving.quotas import Quotas
from modelpod.serving.service import InferenceService


def create_app(
    service: InferenceService,
    max_body_bytes: int | None = None,
    keys: KeyTable | None = None,
    body_timeout: float | None = None,
    max_parsed_bytes: int | None = None,
    quotas: Quotas | None = None,
) -> ServingApp:
    """The whole HTTP API: native routes, the Open Inference Protocol, and the OpenAPI docs;
    behind API keys when `keys` holds any, and per-caller `quotas`. Bodies may take `body_timeout`
    seconds to arrive."""
    routes = all_routes()
    not_found = {404: route_not_found, 405: route_not_found}
    middleware = [Middleware(AuthMiddleware, keys=keys)] if keys else []
    if quotas:  # inside the keys' check: a caller without a known key is refused before it counts
        middleware.append(
            Middleware(QuotaMiddleware, quotas=quotas, keys=keys or KeyTable(()), recorder=service.recorder)
        )
    if middleware:  # innermost: inside the keys' and quotas' checks
        middleware.append(Middleware(InferenceLane))
    app = ServingApp(routes=routes, exception_handlers=not_found, middleware=middleware)
    app.lane_outside = not middleware
    # Starlette would answer `/models/` with a redirect to an absolute URL built from the Host
    # header, which a client chooses: a 404 naming the path without the slash instead.
    app.router.redirect_slashes = False
    app.context = EdgeContext(service, max_body_bytes, body_timeout, max_parsed_bytes)
    return app


class ServingApp(Starlette):
    """Starlette, with the inference lane around its whole stack when no middleware (API keys,
    quotas) has to see the requests first: an inference request then skips Starlette's error
    middleware too, which wraps `send` once more for every request. (Its endpoints answer their
    own errors, `endpoints.handled`; anything that escapes them is uvicorn's to log and answer.)"""

    lane_outside = False
    context: EdgeContext  # the service and the body limits, read by every endpoint

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        return InferenceLane(stack) if self.lane_outside else stack


def all_routes() -> list[BaseRoute]:
    """Every route of the HTTP API, in the order Starlette tries them."""
    return _inference_first([
        *routes_native.routes(),
        *routes_v2.routes(),
        *routes_openai.routes(),
        *routes_metrics.routes(),
        *docs.routes(),
        *status_page.routes(),
    ])  # fmt: skip


# The routes every inference request takes: a model's methods and V2 inference.
_INFERENCE = (routes_native.call_method, routes_v2.infer)


def _inference_first(routes: list[BaseRoute]) -> list[BaseRoute]:
    """The inference routes first. Starlette tries routes in order, a regular expression each, and
    an inference request would otherwise be tried against every metadata route before its own. No
    other route matches their paths with POST, so the order changes no answer."""
    first = [
        r for r in routes if isinstance(r, Route) and r.endpoint in _INFERENCE and "POST" in (r.methods or ())
    ]
    return first + [r for r in routes if r not in first]
