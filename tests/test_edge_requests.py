"""Both edges show the inline gate the requests they are answering: a gRPC call inside its handler
is company for any other request, as an HTTP request being answered is."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from modelpod.errors import InvalidInput
from modelpod.server.edge_requests import EdgeRequests
from modelpod.server.grpc import guarded


class Aborted(Exception):
    pass


class Context:
    """What `guarded` asks of a grpc.aio call's context."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, metadata: Any) -> None:
        raise Aborted(details)


class Servicer:
    def __init__(self, edge: EdgeRequests) -> None:
        self.service = SimpleNamespace(tracer=None, slow_ms=1e9)
        self.edge = edge
        self.seen: list[bool] = []

    @guarded
    async def call(self, request: str, context: Any) -> str:
        await asyncio.sleep(0.01)  # (every call started meanwhile is in its handler)
        self.seen.append(self.edge.at_most_one())
        if request == "bad":
            raise InvalidInput("bad")
        return request


def test_calls_in_their_handlers_are_counted_until_they_end_however_they_end() -> None:
    edge = EdgeRequests()
    servicer = Servicer(edge)

    async def calls() -> None:
        assert await servicer.call("one", Context()) == "one"  # type: ignore[arg-type]
        assert edge.calls == 0
        await asyncio.gather(servicer.call("a", Context()), servicer.call("b", Context()))  # type: ignore[arg-type]
        with pytest.raises(Aborted):
            await servicer.call("bad", Context())  # type: ignore[arg-type]

    asyncio.run(calls())
    alone, first_of_two, _, alone_again = servicer.seen  # (the second of two may end alone)
    assert alone
    assert not first_of_two
    assert alone_again
    assert edge.calls == 0


def test_an_http_request_and_a_grpc_call_together_are_not_alone() -> None:
    edge = EdgeRequests()
    edge.tasks = {"an HTTP request"}
    assert edge.at_most_one()
    edge.calls = 1
    assert not edge.at_most_one()
