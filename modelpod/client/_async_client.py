"""`AsyncClient`: `Client` for asyncio programs, the same operations awaited. Everything but the
I/O (building operations, retry decisions, codecs) is shared with `Client` through `ClientBase`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from modelpod.client._client import ClientBase
from modelpod.client._grpc import AsyncGRPCTransport
from modelpod.client._http import AsyncHTTPTransport
from modelpod.client._operations import (
    Array,
    Call,
    Live,
    Metadata,
    ModelInfo,
    Models,
    Operation,
    Ready,
    training_outcome,
    training_pauses,
)
from modelpod.client._security import Security
from modelpod.client._transport import AsyncTransport
from modelpod.errors import ModelpodError

T = TypeVar("T")


class AsyncClient(ClientBase[AsyncTransport]):
    """`Client` for asyncio: the same constructor and methods, as coroutines; `async with` closes it."""

    def _connect(self, http: bool, address: str, security: Security) -> AsyncTransport:
        return AsyncHTTPTransport(address, security) if http else AsyncGRPCTransport(address, security)

    async def initialize(self, **config: Any) -> Any:
        """See `Client.initialize`."""
        return await self._send(self._call(await self._name(), "initialize", config))

    async def train(self, **options: Any) -> Any:
        """See `Client.train`."""
        job: dict[str, Any] | None = await self.start_training(**options)
        pauses = training_pauses()
        while job is not None and job["state"] == "running":
            await asyncio.sleep(next(pauses))
            job = await self.training()
        return training_outcome(job)

    async def start_training(self, **options: Any) -> dict[str, Any]:
        """See `Client.start_training`."""
        job: dict[str, Any] = await self._send(self._call(await self._name(), "train", options))
        return job

    async def training(self) -> dict[str, Any] | None:
        """See `Client.training`."""
        job: dict[str, Any] | None = await self._send(self._call(await self._name(), "training", {}))
        return job

    async def predict(self, **inputs: Any) -> Any:
        """See `Client.predict`."""
        return await self._send(self._call(await self._name(), "predict", inputs))

    async def predict_stream(self, **inputs: Any) -> AsyncGenerator[Any, None]:
        """See `Client.predict_stream`: `async for item in client.predict_stream(...)`."""
        call = self._call(await self._name(), "predict", inputs)
        transport, attempt = self._family.open(), 0
        while True:
            items = transport.stream(call, self._timeout)
            async with contextlib.aclosing(items):
                try:
                    first = await anext(items)
                except StopAsyncIteration:
                    return
                except ModelpodError as error:
                    wait = self._backoff.delay(call.retry, attempt, error)
                    if wait is None:
                        raise
                else:
                    yield first
                    async for item in items:
                        yield item
                    return
            await asyncio.sleep(wait)
            attempt += 1

    async def log(self) -> Any:
        """See `Client.log`."""
        return await self._send(self._call(await self._name(), "log", {}))

    async def traffic(self) -> dict[str, Any]:
        """See `Client.traffic`."""
        policy: dict[str, Any] = await self._send(Call(await self._name(), None, "traffic", {}))
        return policy

    async def set_traffic(self, policy: Mapping[str, Any]) -> dict[str, Any]:
        """See `Client.set_traffic`."""
        call = Call(await self._name(), None, "set_traffic", {"policy": dict(policy)})
        changed: dict[str, Any] = await self._send(call)
        return changed

    async def infer(
        self,
        inputs: Mapping[str, Array],
        outputs: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> dict[str, Array]:
        """See `Client.infer`."""
        return await self._send(self._infer(await self._name(), inputs, outputs, request_id))

    async def metadata(self) -> dict[str, Any]:
        """See `Client.metadata`."""
        return await self._send(Metadata(await self._name(), self._version))

    async def ready(self) -> bool:
        """See `Client.ready`."""
        return await self._send(Ready(await self._name(), self._version) if self._for_a_model else Ready())

    async def live(self) -> bool:
        """See `Client.live`."""
        return await self._send(Live())

    async def models(self) -> list[ModelInfo]:
        """See `Client.models`."""
        return await self._send(Models())

    async def close(self) -> None:
        """See `Client.close`."""
        if self._owner and not self._family.closed:
            self._family.closed = True
            await self._family.transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()

    async def _name(self) -> str:
        return self._model or self._family.model or self._discovered(await self._send(Models()))

    async def _send(self, operation: Operation[T]) -> T:
        transport, attempt = self._family.open(), 0
        while True:
            try:
                return await transport.send(operation, self._timeout)
            except ModelpodError as error:
                wait = self._backoff.delay(operation.retry, attempt, error)
                if wait is None:
                    raise
            await asyncio.sleep(wait)
            attempt += 1
