"""Where models are served: the endpoints table of the Store. A server registers each version it
serves, per protocol, and beats its heart; a `RemoteModel` asks for the live ones. A server that
crashes stops beating, and its rows are forgotten once stale."""

from __future__ import annotations

import builtins
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from sqlalchemy import Connection, delete, insert, select, update

from modelpod.registry.schema import endpoints


@dataclass(frozen=True)
class Endpoint:
    """A live server answering for one version of a model."""

    identifier: str
    version: str
    protocol: str
    address: str
    server_id: str
    heartbeat_at: float = field(compare=False)


class EndpointRecords:
    """The Store's endpoint methods (a part of `Store`, which gives the transaction and the timeout)."""

    heartbeat_timeout: float

    def _transaction(self) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def register_endpoint(
        self, server_id: str, identifier: str, version: str, protocol: str, address: str
    ) -> None:
        row = {"server_id": server_id, "identifier": identifier, "version": version, "protocol": protocol,
               "address": address, "heartbeat_at": time.time()}  # fmt: skip
        with self._transaction() as connection:
            connection.execute(delete(endpoints).where(
                (endpoints.c.server_id == server_id) & (endpoints.c.identifier == identifier)
                & (endpoints.c.version == version) & (endpoints.c.protocol == protocol)
            ))  # fmt: skip
            connection.execute(insert(endpoints).values(**row))

    def heartbeat(self, server_id: str) -> None:
        with self._transaction() as connection:
            connection.execute(
                update(endpoints).where(endpoints.c.server_id == server_id).values(heartbeat_at=time.time())
            )

    def deregister(self, server_id: str) -> None:
        with self._transaction() as connection:
            connection.execute(delete(endpoints).where(endpoints.c.server_id == server_id))

    def endpoints(self, identifier: str, version: str) -> builtins.list[Endpoint]:
        """Live endpoints for a version, freshest first; stale ones (a crashed server) are forgotten."""
        fresh_after = time.time() - self.heartbeat_timeout
        with self._transaction() as connection:
            connection.execute(delete(endpoints).where(endpoints.c.heartbeat_at < fresh_after))
            query = select(endpoints).where(
                (endpoints.c.identifier == identifier) & (endpoints.c.version == version)
            )
            rows = connection.execute(query.order_by(endpoints.c.heartbeat_at.desc())).mappings().all()
        return [Endpoint(**row) for row in rows]
