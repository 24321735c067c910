"""`GET /metrics`: the server's Prometheus metrics, in the text exposition format."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelpod.observe.prometheus import CONTENT_TYPE
from modelpod.server.endpoints import handled, service_of


@handled
async def metrics(request: Request) -> Response:
    return Response(service_of(request).metrics.exposition(), media_type=CONTENT_TYPE)


def routes() -> list[BaseRoute]:
    return [Route("/metrics", metrics, methods=["GET"])]
