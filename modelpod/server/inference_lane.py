"""The inference routes' short way through the HTTP edge.

Every inference request (`POST /models/{name}[/versions/{version}]/{method}`, `POST
/v2/models/{name}[/versions/{version}]/infer`) would otherwise cross Starlette's exception
middleware, its router's route list, the route's method check and its request-response wrappers,
each of them wrapping `send` again: tens of microseconds a request, on the event loop that every
request shares. This lane sends those requests straight to their endpoints: it is the innermost
middleware when there are API keys or quotas (they still see every request), and outside Starlette's
whole stack when there are none (`http.ServingApp`). The endpoints answer their own
errors (`endpoints.handled`), so Starlette's layers had nothing to add to them; every other request
goes on through Starlette as before. The paths are matched as Starlette matches them: a parameter
is one non-empty path segment, and the inference routes come first among the routes
(`http._inference_first`), so no other route could have taken these requests.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from modelpod.server import routes_native, routes_v2
from modelpod.server.endpoints import Endpoint


class InferenceLane:
    """ASGI middleware: inference requests to their endpoints, everything else to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = inference_route(scope["path"])
            if found is not None:
                endpoint, params = found
                scope["endpoint"] = endpoint
                scope["path_params"] = params
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def inference_route(path: str) -> tuple[Endpoint, dict[str, str]] | None:
    """The endpoint and path parameters of an inference path; None for any other path."""
    parts = path.split("/")
    count = len(parts)
    if count < 4 or parts[0] or not all(parts[1:]):
        return None  # not absolute, or an empty segment: no parameter matches one
    if parts[1] == "models":
        if count == 4:
            return routes_native.call_method, {"name": parts[2], "method": parts[3]}
        if count == 6 and parts[3] == "versions":
            return routes_native.call_method, {"name": parts[2], "version": parts[4], "method": parts[5]}
    elif parts[1] == "v2" and parts[2] == "models":
        if count == 5 and parts[4] == "infer":
            return routes_v2.infer, {"name": parts[3]}
        if count == 7 and parts[4] == "versions" and parts[6] == "infer":
            return routes_v2.infer, {"name": parts[3], "version": parts[5]}
    return None
