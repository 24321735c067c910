"""The gRPC port is shared by several grpc.aio servers (SO_REUSEPORT): calls on many connections
are all answered, and the port is still refused to any other server, another modelpod's included."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import cast

import grpc
import pytest

from modelpod.protocol._generated import grpc_service_pb2 as pb
from modelpod.protocol._generated import grpc_service_pb2_grpc as pb_grpc
from modelpod.server.grpc_server import start_grpc_server
from modelpod.serving.service import InferenceService

from conftest import ServerProcess, launch, servable

NO_SERVICE = cast(InferenceService, None)  # binding needs no model: the servicers only keep it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = launch((servable("Echo"),), tmp_path_factory.mktemp("acceptors") / "appdata")
    yield process
    process.stop()


def test_calls_on_many_connections_are_all_answered(server: ServerProcess) -> None:
    # a channel of its own subchannel pool each: sixteen TCP connections, which the kernel spreads
    channels = [
        grpc.insecure_channel(server.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(16)
    ]
    try:
        for channel in channels:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ModelReady(pb.ModelReadyRequest(name="echo"), timeout=30).ready
    finally:
        for channel in channels:
            channel.close()


def test_a_port_another_process_listens_on_is_refused() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(OSError, match="the port is in use"):
            asyncio.run(start_grpc_server(NO_SERVICE, "127.0.0.1", port, None))


def test_a_port_another_modelpod_serves_is_refused() -> None:
    async def second_on_the_same_port() -> None:
        first, port = await start_grpc_server(NO_SERVICE, "127.0.0.1", 0, None)
        try:
            with pytest.raises(OSError, match="the port is in use"):
                await start_grpc_server(NO_SERVICE, "127.0.0.1", port, None)
        finally:
            await first.stop(None)

    asyncio.run(second_on_the_same_port())
