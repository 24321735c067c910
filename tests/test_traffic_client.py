"""The traffic policy from `Client` and `AsyncClient`, over HTTP and gRPC (the native service's
`traffic` and `set_traffic` calls): read with a predict key, replaced with an admin key only."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from modelpod.client import AsyncClient, Client
from modelpod.errors import Forbidden, InvalidInput

from conftest import ServerProcess, StartServer, servable

ADMIN, PREDICT = secrets.token_urlsafe(16), secrets.token_urlsafe(16)


def _server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    keys = {"MODELPOD_API_KEYS": f"admin:{ADMIN},predict:{PREDICT}"}
    server = start_server(
        servable("Echo"), args=("--model-pool-size", "2"), env=keys, data_path=tmp_path / "d"
    )
    with Client(server.http_url, model="echo", api_key=ADMIN) as admin:
        admin.version(2).initialize()
    return server


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_clients_read_and_set_the_policy(start_server: StartServer, tmp_path: Path, transport: str) -> None:
    server = _server(start_server, tmp_path)
    address = server.http_url if transport == "http" else server.grpc_address
    with (
        Client(address, model="echo", api_key=ADMIN) as admin,
        Client(address, model="echo", api_key=PREDICT) as user,
    ):
        assert user.traffic()["split"] == {}
        changed = admin.set_traffic({"split": {"2": 1}, "shadow": {"version": "1", "share": 0.5}})
        assert changed["split"] == {"2": 1.0}
        assert changed["shadow"] == {"version": "1", "share": 0.5}
        assert user.predict(text="hi")["version"] == "2"
        assert user.traffic()["split"] == {"2": 1.0}
        with pytest.raises(Forbidden):
            user.set_traffic({})
        with pytest.raises(InvalidInput, match="unknown version"):
            admin.set_traffic({"split": {"9": 1}})
        assert admin.version(1).traffic()["split"] == {"2": 1.0}  # the model's, whichever version
        assert admin.set_traffic({})["split"] == {}
        assert user.predict(text="hi")["version"] == "1"

    async def through_async() -> dict[str, float]:
        async with AsyncClient(address, model="echo", api_key=ADMIN) as client:
            await client.set_traffic({"split": {"1": 3, "2": 1}})
            split: dict[str, float] = (await client.traffic())["split"]
            return split

    assert asyncio.run(through_async()) == {"1": 3.0, "2": 1.0}
