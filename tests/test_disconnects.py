"""The watch for clients that hang up: one timer per event loop, watchers only for requests that
have waited a period, the handler cancelled when its client is gone, nothing left running after."""

from __future__ import annotations

import asyncio
from typing import Any

from modelpod.server import disconnects
from modelpod.server.disconnects import WATCH_AFTER


class Connection:
    """A request's `receive`: silent until the client hangs up."""

    def __init__(self) -> None:
        self.hung_up = asyncio.Event()
        self.reads = 0

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        await self.hung_up.wait()
        return {"type": "http.disconnect"}


async def eventually(condition: Any, seconds: float = 5.0) -> None:
    """Until `condition()` holds (a busy machine runs timers late), or fail after `seconds`."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def test_a_request_answered_within_a_period_is_never_watched_and_the_timer_stops() -> None:
    async def run() -> None:
        watchlist = disconnects.watchlist()
        connection = Connection()
        entry = watchlist.add(connection, asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.sleep(WATCH_AFTER / 2)
        watchlist.remove(entry)
        await eventually(lambda: watchlist.timer is None)  # nothing waits: the timer stops
        assert connection.reads == 0
        assert entry.watcher is None

    asyncio.run(run())


def test_a_waiting_request_is_watched_and_cancelled_when_its_client_hangs_up() -> None:
    async def run() -> None:
        watchlist = disconnects.watchlist()
        connection = Connection()

        async def handler() -> None:
            await asyncio.sleep(10)  # a request waiting for its answer

        task = asyncio.ensure_future(handler())
        await asyncio.sleep(0)
        entry = watchlist.add(connection, task)  # type: ignore[arg-type]
        await eventually(lambda: connection.reads == 1)  # watched from the second look on
        connection.hung_up.set()
        await eventually(task.cancelled)
        assert entry.gone
        watchlist.remove(entry)
        assert not watchlist.waiting

    asyncio.run(run())


def test_each_event_loop_has_its_own_watchlist() -> None:
    async def current() -> disconnects.Watchlist:
        return disconnects.watchlist()

    first, second = asyncio.run(current()), asyncio.run(current())
    assert first is not second
