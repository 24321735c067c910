"""Serving models from a Store: lay their versions out for the server, and announce where they are served."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path

from modelpod.errors import NotFound
from modelpod.registry.store import Store
from modelpod.serving.repository import Repository

logger = logging.getLogger("modelpod.server")


def add_store_models(
    repository: Repository, store: Store, references: Sequence[str]
) -> list[tuple[str, str]]:
    """Host `identifier[:version]` models from the store; every version of each becomes servable.

    The named version (the latest by default) is the default version. Returns what is served.
    """
    served: list[tuple[str, str]] = []
    for reference in references:
        identifier, _, version = reference.partition(":")
        records = store.show(identifier)
        if not records:
            raise NotFound(f"the store has no model {identifier!r}")
        chosen = store.record(identifier, version or None)
        for record in records:
            store.materialize(record, repository.data_path)
        repository.add(store.model_class(chosen), name=identifier, default_version=chosen.version)
        served.extend((identifier, record.version) for record in records)
    return served


class Announcer:
    """Records in the store that this server answers for some versions; heartbeats; forgets on stop."""

    def __init__(self, store: Store, served: Sequence[tuple[str, str]], interval: float) -> None:
        self.store = store
        self.served = list(served)
        self.interval = interval
        self.server_id = str(uuid.uuid4())
        self._task: asyncio.Task[None] | None = None

    async def start(self, host: str, http_port: int, grpc_port: int, tls: bool = False) -> None:
        """Record both addresses, in the spelling a `Client` connects with (`https`, `grpcs` over TLS)."""
        name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        grpc_address = f"grpcs://{name}:{grpc_port}" if tls else f"{name}:{grpc_port}"
        addresses = {"grpc": grpc_address, "http": f"{'https' if tls else 'http'}://{name}:{http_port}"}
        for identifier, version in self.served:
            for protocol, address in addresses.items():
                await asyncio.to_thread(
                    self.store.register_endpoint, self.server_id, identifier, version, protocol, address
                )
        self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.store.heartbeat, self.server_id)
            except Exception as error:  # a store outage must not take the server down
                logger.warning("heartbeat to the store failed: %s", error)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await asyncio.to_thread(self.store.deregister, self.server_id)


def open_store(url: str, data_path: Path, heartbeat_seconds: float, allow_pickle: bool) -> Store:
    """The store a server reads models from; endpoints go stale after three missed heartbeats."""
    return Store(url, data_path=data_path, heartbeat_timeout=3 * heartbeat_seconds, allow_pickle=allow_pickle)
