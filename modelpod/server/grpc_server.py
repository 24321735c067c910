"""The gRPC server: both services (the Open Inference Protocol's and modelpod's native one) on
grpc.aio servers sharing one port, with their message size and connection limits."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

import grpc

from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2_grpc
from modelpod.server.grpc import InferenceServicer, NativeServicer
from modelpod.server.grpc_wire import add_servicer
from modelpod.serving.service import InferenceService

GRPC_HANDSHAKE_MS = 10_000  # a connection that has not finished its HTTP/2 (and TLS) handshake by then
GRPC_IDLE_MS = 5 * 60_000  # with no call for this long, a connection is closed (clients reconnect)
GRPC_STREAMS_PER_CONNECTION = 1000  # calls at once on one connection
# grpc.aio accepts one call at a time per server: each new call waits for the previous one's
# acceptance to cross from gRPC's threads to the event loop and back, so under load calls reach
# the service one by one and the batcher sees small batches (3-4 rows of 32 at 64 calls in
# flight). Several servers on the port (SO_REUSEPORT; the kernel spreads the connections) accept
# in parallel: batches of 9-14 rows, 10-30% less CPU per call (h2load, README's Performance).
GRPC_ACCEPTORS = 4
CONNECTIONS_PER_ACCEPTOR = 64  # below this many allowed per acceptor, fewer acceptors (the cap stays exact)


class GrpcServer:
    """The grpc.aio servers that share the gRPC port; stopped together."""

    def __init__(self, servers: list[grpc.aio.Server]) -> None:
        self.servers = servers

    async def stop(self, grace: float | None) -> None:
        await asyncio.gather(*(server.stop(grace) for server in self.servers))


async def start_grpc_server(
    service: InferenceService,
    host: str,
    port: int,
    max_message_size: int | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    credentials: grpc.ServerCredentials | None = None,
    max_connections: int | None = None,
) -> tuple[GrpcServer, int]:
    """Bind and start both gRPC services (over TLS with `credentials`); returns the server and its port.

    Connections are bounded as HTTP's are: at most `max_connections` open (shared evenly by the
    acceptors), a few seconds to finish the handshake, a bounded number of calls each, and closed
    (GOAWAY, which clients follow by reconnecting) after a while idle.
    """
    acceptors = _acceptors(max_connections)
    port = _free_port(host, port) if acceptors > 1 else port
    servers: list[grpc.aio.Server] = []
    for index in range(acceptors):
        cap = None if max_connections is None else _share(max_connections, acceptors, index)
        server = grpc.aio.server(
            interceptors=interceptors, options=_options(max_message_size, cap, shared=acceptors > 1)
        )
        add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(service), server)
        add_servicer(native_pb2_grpc.add_ModelServiceServicer_to_server, NativeServicer(service), server)
        port = _bind(server, host, port, credentials)
        servers.append(server)
    for server in servers:
        await server.start()
    return GrpcServer(servers), port


def _acceptors(max_connections: int | None) -> int:
    """As many acceptors as the cap allows each a fair share of it (one for a small cap, so that
    the kernel's spreading of connections cannot refuse one before the cap is reached)."""
    if max_connections is None:
        return GRPC_ACCEPTORS
    return max(1, min(GRPC_ACCEPTORS, max_connections // CONNECTIONS_PER_ACCEPTOR))


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _options(
    max_message_size: int | None, max_connections: int | None, shared: bool
) -> list[tuple[str, Any]]:
    limit = max_message_size if max_message_size is not None else -1
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1 if shared else 0),
        ("grpc.server_handshake_timeout_ms", GRPC_HANDSHAKE_MS),
        ("grpc.max_connection_idle_ms", GRPC_IDLE_MS),
        ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
    ]
    if max_connections is not None:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    return options


def _free_port(host: str, port: int) -> int:
    """The port, checked free (or, for 0, chosen) by binding it without SO_REUSEPORT: the acceptors
    share it with each other, but a port another server holds is refused as it was before."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError:
            raise OSError(
                f"cannot listen on {host}:{port} for gRPC: the port is in use or not available"
            ) from None
        chosen: int = probe.getsockname()[1]
        return chosen


def _bind(server: grpc.aio.Server, host: str, port: int, credentials: grpc.ServerCredentials | None) -> int:
    address = f"{host}:{port}"
    try:
        bound = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for gRPC: the port is in use or not available")
    return bound
