"""Which waiting requests the server watches for their client hanging up, and when it starts to.

A request still unanswered after `WATCH_AFTER` seconds gets a watcher: a task that reads its
connection until the client hangs up, then cancels the request's handler (a queued request it
abandoned is dropped before compute instead of running for nobody). Most requests are answered
sooner, and a timer of their own, armed and cancelled, would cost each of them more than the few
that are abandoned: one timer per event loop looks every `WATCH_AFTER` seconds at the requests
waiting, and starts watchers for those that were already waiting at its previous look (so each
is watched after waiting between one and two periods). The timer runs only while some wait."""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from starlette.requests import Request

WATCH_AFTER = 0.05  # seconds: the timer's period


class Waiting:
    """One request awaiting its answer; `gone` once its client has hung up."""

    __slots__ = ("gone", "handler", "look", "request", "watcher")

    def __init__(self, request: Request, handler: asyncio.Task[Any], look: int) -> None:
        self.request = request
        self.handler = handler
        self.look = look  # the watchlist's look this request arrived before
        self.watcher: asyncio.Task[None] | None = None
        self.gone = False


class Watchlist:
    """The requests waiting on one event loop, and the timer that looks at them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: set[Waiting] = set()
        self.looks = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, request: Request, handler: asyncio.Task[Any]) -> Waiting:
        entry = Waiting(request, handler, self.looks)
        self.waiting.add(entry)
        if self.timer is None:
            self.timer = self.loop.call_later(WATCH_AFTER, self._look)
        return entry

    def remove(self, entry: Waiting) -> None:
        self.waiting.discard(entry)
        if entry.watcher is not None:
            entry.watcher.cancel()

    def _look(self) -> None:
        self.timer = None
        for entry in self.waiting:
            if entry.look < self.looks and entry.watcher is None:  # waiting since before the last look
                entry.watcher = self.loop.create_task(_cancel_on_disconnect(entry))
        self.looks += 1
        if self.waiting:
            self.timer = self.loop.call_later(WATCH_AFTER, self._look)


async def _cancel_on_disconnect(entry: Waiting) -> None:
    while (await entry.request.receive())["type"] != "http.disconnect":
        pass
    entry.gone = True
    entry.handler.cancel()


_WATCHLISTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Watchlist] = weakref.WeakKeyDictionary()


def watchlist() -> Watchlist:
    """The running loop's watchlist (a server has one loop; tests may run several in turn)."""
    loop = asyncio.get_running_loop()
    found = _WATCHLISTS.get(loop)
    if found is None:
        found = _WATCHLISTS[loop] = Watchlist(loop)
    return found
