"""Models the streaming tests serve: each shows one thing a stream must get right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from modelpod import STREAM_END, Model

GATE_WAIT = 20.0  # seconds a gated model waits for its gate before it gives up (a test failure)


class Recording(Model):
    """Writes what its generators do to `<data_path>/events.log`, so tests can see it."""

    def event(self, what: str) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        with (self.data_path / "events.log").open("a") as file:
            file.write(what + "\n")


class Counter(Recording):
    """Yields n items, `delay` seconds apart; its `finally` says whether it finished or was closed."""

    name = "counter"

    def predict(self, n: int = 3, delay: float = 0.0, arrays: bool = False) -> Iterator[Any]:
        finished = False
        try:
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                yield np.full((2, 3), i, dtype=np.float32) if arrays else {"i": i}
            finished = True
        finally:
            self.event(f"counter n={n} {'finished' if finished else 'closed'}")


class Gated(Model):
    """Yields its first item, then waits for the file `gate` to exist before the second: a client
    that receives the first item, then opens the gate, proves items travel as they are produced."""

    name = "gated"

    def predict(self, gate: str) -> Iterator[str]:
        yield "before the gate"
        deadline = time.monotonic() + GATE_WAIT
        while not Path(gate).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("nobody opened the gate: the first item never reached the client")
            time.sleep(0.01)
        yield "after the gate"


class FailsMidway(Model):
    """Two items, then its own bug."""

    name = "failsmidway"

    def predict(self, n: int = 2) -> Iterator[int]:
        yield from range(n)
        raise RuntimeError("the model's own bug, with a secret: do-not-leak")


class AsyncCounter(Recording):
    """An async generator model: awaited on the server's event loop."""

    name = "asynccounter"

    async def predict(self, n: int = 3, delay: float = 0.0) -> AsyncIterator[int]:
        finished = False
        try:
            for i in range(n):
                if i and delay:
                    await asyncio.sleep(delay)
                yield i
            finished = True
        finally:
            self.event(f"asynccounter n={n} {'finished' if finished else 'closed'}")


class Plain(Model):
    """Does not stream: asked for a stream, it gives one item."""

    name = "plain"

    def predict(self, text: str) -> dict[str, str]:
        return {"echo": text}


class Tokens(Recording):
    """Streams per request from one batch, as a token generator would: at each step, the next
    token of every request still going, and STREAM_END for each as soon as it has all of its own."""

    name = "tokens"
    max_batch_size = 8
    max_batch_delay_ms = 50

    def predict(self, n: int, step: float = 0.0) -> Iterator[str]:
        for _, token in self.predict_batch([{"n": n, "step": step}]):
            if token is not STREAM_END:
                yield token

    def predict_batch(self, items: list[dict[str, Any]]) -> Iterator[tuple[int, Any]]:
        self.event(f"tokens batch of {len(items)}")
        finished = False
        try:
            for step in range(max(item["n"] for item in items) + 1):
                for index, item in enumerate(items):
                    if step < item["n"]:
                        yield index, f"t{step}"
                    elif step == item["n"]:
                        yield index, STREAM_END
                time.sleep(max(item.get("step", 0.0) for item in items))
            finished = True
        finally:
            self.event(f"tokens batch {'finished' if finished else 'closed'}")
