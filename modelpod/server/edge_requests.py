"""The requests both edges are answering now, for the inline gate's question: is this one alone?"""

from __future__ import annotations

from collections.abc import Sized


class EdgeRequests:
    """HTTP: uvicorn's set of request tasks (one per request from its head to its answer, whichever
    connection it came on), seen through a connection. gRPC: the unary calls inside their handlers,
    counted by the gRPC edge (on the event loop, as every handler runs)."""

    def __init__(self) -> None:
        self.tasks: Sized = ()
        self.calls = 0

    def at_most_one(self) -> bool:
        return len(self.tasks) + self.calls <= 1
