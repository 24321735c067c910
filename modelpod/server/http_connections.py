"""HTTP connections that cannot hold the server's memory or file descriptors hostage.

uvicorn's own protocol (httptools) keeps every byte of an unfinished request head, keeps a
connection that never sends a request forever (its keep-alive timer starts only after a first
answer, and any byte, even one of a head that never ends, stops it), and its concurrency limit
refuses health probes too. This protocol adds, per connection:

- a limit on the request head: past `max_header_bytes` before the head is complete, 431 and close;
- a deadline for the head: a new connection, or one idle after an answer, that has not sent a
  complete head within `head_timeout` seconds is closed (with 408 if it had started one);
- a cap on open connections: a connection accepted while `max_connections` are open is refused,
  each of its requests answered 503 and the connection then closed, except the health probes (an
  orchestrator must still see the server alive and ready when it is busy); connections opened
  earlier are served as before. Beyond twice the cap, new connections are closed as soon as they
  are accepted, so that even refusing cannot use up the file descriptors.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelpod.protocol import jsoncodec
from modelpod.server.coalesced_writes import CoalescedWrites
from modelpod.server.edge_requests import EdgeRequests
from modelpod.server.endpoints import BODY_RECEIVED

logger = logging.getLogger("modelpod.http")

PROBES = (b"/v2/health/live", b"/v2/health/ready")  # answered even over the connection cap


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int | None
    head_timeout: float
    max_connections: int


def guarded_protocol(limits: ConnectionLimits, edge: EdgeRequests | None = None) -> type[GuardedHttpProtocol]:
    """uvicorn's `http=` protocol class, holding these limits (and showing its requests to `edge`)."""
    return type("GuardedHttp", (GuardedHttpProtocol,), {"limits": limits, "edge": edge or EdgeRequests()})


class GuardedHttpProtocol(HttpToolsProtocol):
    limits: ClassVar[ConnectionLimits]
    edge: ClassVar[EdgeRequests]
    _last_warning: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_app = self.app
        self._head_bytes = 0  # bytes received since the current head began, until it is complete
        self._awaiting_head = True
        self._head_deadline: asyncio.TimerHandle | None = None
        self._refused_at = 0  # connections open when this one came, if over the cap; else 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.edge.tasks = self.tasks  # the server's one set, the same for every connection
        open_now = len(self.connections)
        if open_now > 2 * self.limits.max_connections:
            self._warn(f"{open_now - 1} connections open: closed a new one unanswered")
            transport.abort()
            return
        if open_now > self.limits.max_connections:
            self._refused_at = open_now
            self._warn(f"{open_now} connections open, over MODELPOD_MAX_CONNECTIONS: answering 503")
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
        super().data_received(data)
        limit = self.limits.max_header_bytes
        if self._awaiting_head and limit is not None and self._head_bytes > limit:
            self._refuse(431, f"the request head (request line and headers) is over {limit} bytes, "
                         "the most this server accepts (MODELPOD_MAX_HEADER_SIZE)")  # fmt: skip

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._disarm_head_deadline()
        refuse = self._refused_at > 0 and not self._is_probe()
        limit = self.limits.max_connections
        self.app = functools.partial(_over_capacity, self._refused_at, limit) if refuse else self._own_app
        super().on_headers_complete()
        if self.cycle is not None:  # the request's cycle, just made: its head and body in one write
            self.cycle.transport = CoalescedWrites(self.transport, self.loop)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        """uvicorn's `on_body`, without two copies of every chunk: uvicorn appends each chunk to a
        bytearray, which its `receive` copies again into bytes for the app. A chunk that arrives
        while nothing is waiting to be read is handed over as the bytes it came in (`bytes()` of
        bytes is no copy); only chunks that pile up before the app reads are joined."""
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        held: bytes | bytearray = cycle.body
        if not held:
            cycle.body = body  # type: ignore[assignment]  # bytes-like, as uvicorn's receive reads it
        elif isinstance(held, bytearray):
            held += body
        else:
            cycle.body = bytearray(held) + body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self.cycle is not None:  # the app reads the body without a deadline (`read_body`)
            self.cycle.scope[BODY_RECEIVED] = True  # type: ignore[literal-required]  # modelpod's key
        super().on_message_complete()
        self._awaiting_head = True  # whatever comes next is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._awaiting_head and not self._answering() and not self.transport.is_closing():
            self._arm_head_deadline()

    def _answering(self) -> bool:
        """A request is being answered (a pipelined one, started as the last answer completed)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _is_probe(self) -> bool:
        return self.parser.get_method() == b"GET" and httptools.parse_url(self.url).path in PROBES

    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.limits.head_timeout, self._head_too_late)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_late(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self._answering():
            return
        if self._head_bytes == 0:  # idle: close quietly, as any keep-alive timeout does
            self.transport.close()
            return
        seconds = self.limits.head_timeout
        self._refuse(
            408, f"the request head did not arrive within {seconds:g} s (MODELPOD_KEEP_ALIVE_TIMEOUT)"
        )

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` with `message` and close, whatever the connection was in the middle of."""
        if self.transport.is_closing():
            return
        body = jsoncodec.dumps({"error": message})
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()
        self._disarm_head_deadline()

    @classmethod
    def _warn(cls, message: str) -> None:
        now = time.monotonic()
        if now - cls._last_warning >= 1.0:  # once a second at most: a flood must not flood the log too
            GuardedHttpProtocol._last_warning = now
            logger.warning("%s", message)


async def _over_capacity(open_now: int, limit: int, scope: Any, receive: Any, send: Any) -> None:
    message = (
        f"the server had {open_now} open connections when this one came, over its limit of {limit} "
        "(MODELPOD_MAX_CONNECTIONS); retry on a new connection later"
    )
    body = jsoncodec.dumps({"error": message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"),
        (b"x-modelpod-error", b"Unavailable"),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})
