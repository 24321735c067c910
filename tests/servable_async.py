"""Models whose `predict` is `async def`: awaited on the server's event loop."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from modelpod import InvalidInput, Model


class AsyncEcho(Model):
    """Waits `delay` seconds without holding a thread, then says where and when it ran."""

    name = "asyncecho"
    example = {"text": "warm-up"}

    async def predict(self, text: str, delay: float = 0.0) -> dict[str, Any]:
        if not text:
            raise InvalidInput("text must not be empty")
        started = time.time()
        await asyncio.sleep(delay)
        return {
            "text": text,
            "start": started,
            "end": time.time(),
            "thread": threading.current_thread().name,
            "pid": os.getpid(),
            "loop": id(asyncio.get_running_loop()),
        }


class AsyncFails(Model):
    """Its own bug, raised from a coroutine."""

    name = "asyncfails"

    async def predict(self, text: str) -> str:
        await asyncio.sleep(0)
        raise RuntimeError(f"the model's own bug about {text}")
