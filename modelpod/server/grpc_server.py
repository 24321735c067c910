"""The gRPC server: both services (the Open Inference Protocol's and modelpod's native one) on one
grpc.aio server, with its message size and connection limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.protocol._generated import native_pb2_grpc
from modelpod.server.edge_requests import EdgeRequests
from modelpod.server.grpc import InferenceServicer, NativeServicer
from modelpod.server.grpc_wire import add_servicer
from modelpod.serving.service import InferenceService

GRPC_HANDSHAKE_MS = 10_000  # a connection that has not finished its HTTP/2 (and TLS) handshake by then
GRPC_IDLE_MS = 5 * 60_000  # with no call for this long, a connection is closed (clients reconnect)
GRPC_STREAMS_PER_CONNECTION = 1000  # calls at once on one connection


async def start_grpc_server(
    service: InferenceService,
    host: str,
    port: int,
    max_message_size: int | None,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    credentials: grpc.ServerCredentials | None = None,
    max_connections: int | None = None,
    edge: EdgeRequests | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Bind and start both gRPC services (over TLS with `credentials`); returns the server and its port.

    Connections are bounded as HTTP's are: at most `max_connections` open, a few seconds to finish
    the handshake, a bounded number of calls each, and closed (GOAWAY, which clients follow by
    reconnecting) after a while idle. Calls in their handlers are counted in `edge`.
    """
    limit = max_message_size if max_message_size is not None else -1
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", GRPC_HANDSHAKE_MS),
        ("grpc.max_connection_idle_ms", GRPC_IDLE_MS),
        ("grpc.max_concurrent_streams", GRPC_STREAMS_PER_CONNECTION),
    ]
    if max_connections is not None:
        options.append(("grpc.max_allowed_incoming_connections", max_connections))
    server = grpc.aio.server(interceptors=interceptors, options=options)
    edge = edge or EdgeRequests()
    add_servicer(pb_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(service, edge), server)
    add_servicer(native_pb2_grpc.add_ModelServiceServicer_to_server, NativeServicer(service, edge), server)
    try:
        address = f"{host}:{port}"
        bound = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} for gRPC: the port is in use or not available")
    await server.start()
    return server, bound
