"""A response's head and body leave in one write; a head with no body in the same turn of the
event loop still leaves at the end of that turn; `100 Continue` is never held back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelpod.server.coalesced_writes import CoalescedWrites

from conftest import ServerProcess, launch, servable


class RecordingTransport:
    """The calls a transport receives, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: list[bytes]) -> None:
        self.calls.append(("writelines", [bytes(p) for p in parts]))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.calls.append(("close", None))
        self.closing = True

    def get_extra_info(self, name: str) -> str:
        return f"info {name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_in_the_same_turn_are_one_vectored_write() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        transport = RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(HEAD)
        writes.write(b"ok")
        writes.write(b"more")  # later writes pass through
        await asyncio.sleep(0)  # the end-of-turn flush finds nothing held
        return transport.calls

    assert asyncio.run(scenario()) == [("writelines", [HEAD, b"ok"]), ("write", b"more")]


def test_a_head_alone_is_written_at_the_end_of_the_turn() -> None:
    async def scenario() -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
        transport = RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(HEAD)
        during = list(transport.calls)
        await asyncio.sleep(0)
        return during, transport.calls

    during, after = asyncio.run(scenario())
    assert during == []
    assert after == [("write", HEAD)]


def test_continue_is_written_at_once_and_close_flushes_the_head() -> None:
    async def scenario() -> list[tuple[str, Any]]:
        transport = RecordingTransport()
        writes = CoalescedWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writes.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writes.write(HEAD)
        writes.close()
        assert writes.get_extra_info("peername") == "info peername"
        return transport.calls

    assert asyncio.run(scenario()) == [
        ("write", b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("write", HEAD),
        ("close", None),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch((servable("Echo"),), tmp_path_factory.mktemp("writes") / "appdata")
    yield process
    assert process.stop() == 0, process.output


def test_expect_100_continue_gets_its_continue_before_the_body_is_sent(server: ServerProcess) -> None:
    body = b'{"text": "hi"}'
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # asked for the body
        sock.sendall(body)
        answer = b""
        while b"hi" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK")


def test_head_requests_and_small_answers_arrive_whole(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.head("/v2/health/ready").status_code == 200  # a head with no body follows
        for text in ("a", "b" * 10_000):
            answer = http.post("/models/echo/predict", json={"text": text})
            assert answer.status_code == 200
            assert answer.headers["x-request-id"]
            assert text in answer.text
