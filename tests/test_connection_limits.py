"""Connection hygiene against a real server, with raw sockets where a polite client would not do:
a body that never arrives holds no memory and is cut off with 408; a head that never ends is cut
off with 431; idle connections are closed; connections over the cap are refused with a clear 503
while health still answers; no redirect is built from the Host header. Every attack is bounded
in sockets (at most a few dozen) and in time.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import psutil
import pytest

from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc

from conftest import ServerProcess, StartServer, launch, servable

BODY_TIMEOUT = 2.0  # seconds: set low so that the tests see it
KEEP_ALIVE = 1.0
HEADER_LIMIT = 16 * 1024
ECHO = servable("Echo")
SLOW = servable("Slow")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = (
        "--body-timeout", str(BODY_TIMEOUT),
        "--keep-alive-timeout", str(KEEP_ALIVE),
        "--max-header-size", str(HEADER_LIMIT),
    )  # fmt: skip
    process = launch((ECHO, SLOW), tmp_path_factory.mktemp("connections") / "appdata", args)
    yield process
    assert process.stop() == 0, process.output
    assert "Traceback" not in process.output


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open."""
    received = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    pytest.fail(f"the connection was still open after {within} s; received {received[:200]!r}")


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.process.pid).memory_info().rss)


def health_ok(server: ServerProcess) -> bool:
    return httpx.get(f"{server.http_url}/v2/health/ready", timeout=5).status_code == 200


def test_a_body_declared_huge_that_never_arrives_holds_no_memory_and_gets_408(server: ServerProcess) -> None:
    before = rss(server)
    head = (
        "POST /models/echo/predict HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: application/json\r\nContent-Length: 500000000\r\n\r\n{"
    )
    sockets = [connect(server) for _ in range(20)]
    try:
        for sock in sockets:
            sock.sendall(head.encode())
        time.sleep(0.5)
        assert health_ok(server)
        assert rss(server) - before < 200 * 1024**2  # was 477 MB for each of these connections
        for sock in sockets:
            answer = read_until_closed(sock, BODY_TIMEOUT + 10)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"MODELPOD_BODY_TIMEOUT" in answer
    finally:
        for sock in sockets:
            sock.close()
    assert health_ok(server)


def test_a_head_that_never_ends_is_cut_off_at_the_header_limit(server: ServerProcess) -> None:
    sock = connect(server)
    try:
        sock.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nX-Filler: ")
        sent = 0
        refused = False
        while sent < 64 * 1024**2 and not refused:
            try:
                sock.sendall(b"a" * 65536)
                sent += 65536
            except OSError:  # the server stopped reading and closed the connection
                refused = True
        assert refused
        assert sent < 8 * 1024**2
    finally:
        sock.close()
    sock = connect(server)
    try:  # over the limit in one piece: the answer names it before the connection closes
        sock.sendall(
            b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nX-Filler: " + b"a" * 2 * HEADER_LIMIT
        )
        answer = read_until_closed(sock, 10)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"MODELPOD_MAX_HEADER_SIZE" in answer
    finally:
        sock.close()
    long_but_allowed = {"X-Filler": "a" * (HEADER_LIMIT // 2)}
    response = httpx.get(f"{server.http_url}/v2/health/ready", headers=long_but_allowed, timeout=5)
    assert response.status_code == 200


def test_idle_connections_are_closed_after_the_keep_alive_timeout(server: ServerProcess) -> None:
    fresh = [connect(server) for _ in range(30)]  # never send anything
    after_answer = connect(server)
    try:
        after_answer.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
        for sock in fresh:
            assert read_until_closed(sock, KEEP_ALIVE + 10) == b""
        answered = read_until_closed(after_answer, KEEP_ALIVE + 10)
        assert answered.startswith(b"HTTP/1.1 200")
        assert answered.count(b"HTTP/1.1") == 1
    finally:
        for sock in [*fresh, after_answer]:
            sock.close()


def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_408(server: ServerProcess) -> None:
    dawdler = connect(server)
    try:
        dawdler.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # a head begun, never finished
        started = time.monotonic()
        trickled = 0
        while not select.select([dawdler], [], [], KEEP_ALIVE / 4)[0]:  # until the server answers
            assert time.monotonic() - started < KEEP_ALIVE + 10, "still open"
            dawdler.sendall(b"X")  # a byte now and then must not keep the head alive forever
            trickled += 1
        assert trickled >= 2
        cut_off = read_until_closed(dawdler, 10)
        assert cut_off.startswith(b"HTTP/1.1 408"), cut_off[:200]
        assert b"MODELPOD_KEEP_ALIVE_TIMEOUT" in cut_off
    finally:
        dawdler.close()


def test_a_pipelined_request_slower_than_the_keep_alive_timeout_is_answered(server: ServerProcess) -> None:
    body = b'{"seconds": %.1f}' % (KEEP_ALIVE * 2)
    slow = b"POST /models/slow/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    slow += b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    sock = connect(server)
    try:  # two requests in one write: the second waits for the first, then runs past the timeout
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n" + slow)
        answers = read_until_closed(sock, KEEP_ALIVE * 2 + 20)
        assert answers.count(b"HTTP/1.1 200") == 2, answers[:300]
    finally:
        sock.close()


def test_redirects_are_never_built_from_the_host_header(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.http_url, timeout=10, follow_redirects=False) as client:
        for path in ("/models/", "/v2/health/ready/", "/v2/models/echo/", "/models/echo/predict/"):
            method = "POST" if path.endswith("predict/") else "GET"
            response = client.request(method, path, headers={"Host": "evil.example"})
            assert "evil.example" not in response.headers.get("location", ""), path
            assert response.status_code == 404, (path, response.status_code)
            assert "without the trailing slash" in response.json()["error"]


def test_connections_over_the_cap_are_refused_clearly_and_health_still_answers(
    start_server: StartServer,
) -> None:
    server = start_server(ECHO, args=("--max-connections", "20", "--keep-alive-timeout", "30"))
    url = server.http_url
    with httpx.Client(base_url=url, timeout=10) as early:
        assert early.post("/models/echo/predict", json={"text": "hi"}).status_code == 200
        crowd = [connect(server) for _ in range(25)]
        try:
            time.sleep(0.3)
            # opened before the crowd: served as before
            assert early.post("/models/echo/predict", json={"text": "hi"}).status_code == 200
            refused = httpx.post(f"{url}/models/echo/predict", json={"text": "hi"}, timeout=10)
            assert refused.status_code == 503
            assert "MODELPOD_MAX_CONNECTIONS" in refused.json()["error"]
            assert refused.headers["connection"] == "close"
            assert refused.headers["retry-after"] == "1"
            assert httpx.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
            assert httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200
        finally:
            for sock in crowd:
                sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.post(f"{url}/models/echo/predict", json={"text": "hi"}, timeout=10)
        if response.status_code == 200:
            break
        time.sleep(0.1)
    assert response.status_code == 200


def test_grpc_connections_over_the_cap_are_refused_and_earlier_ones_served(
    start_server: StartServer,
) -> None:
    server = start_server(ECHO, args=("--max-connections", "3"))
    channels: list[grpc.Channel] = []

    def ready(channel: grpc.Channel) -> bool:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return bool(stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready)

    try:
        for _ in range(5):  # each channel its own connection
            options = [("grpc.use_local_subchannel_pool", 1)]
            channels.append(grpc.insecure_channel(server.grpc_address, options=options))
        assert all(ready(channel) for channel in channels[:3])
        for channel in channels[3:]:
            with pytest.raises(grpc.RpcError) as refused:
                ready(channel)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ready(channels[0])  # the earlier connections are still served
    finally:
        for channel in channels:
            channel.close()
