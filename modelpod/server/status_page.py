"""The status page: `GET /` and `GET /ui` serve one self-contained HTML file, which polls
`GET /models` and `GET /ui/activity` (the last few minutes, from `modelpod.observe.activity`) every second."""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from modelpod.server.endpoints import handled, json_response, service_of


@functools.cache
def _page() -> str:
    return (resources.files("modelpod.server") / "static" / "status.html").read_text(encoding="utf-8")


@handled
async def status_page(request: Request) -> Response:
    # Open to everyone: it holds no data; the JSON endpoints it reads are what may need a key.
    return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})


@handled
async def activity(request: Request) -> Response:
    return json_response(service_of(request).recent.document())


def routes() -> list[BaseRoute]:
    return [
        Route("/", status_page, methods=["GET"]),
        Route("/ui", status_page, methods=["GET"]),
        Route("/ui/activity", activity, methods=["GET"]),
    ]
