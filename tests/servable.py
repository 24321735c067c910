"""Models the server tests serve: each one shows one behaviour a server must get right."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any

import numpy as np

from modelpod import InvalidInput, Model, Response, Router, TensorSpec


class Tracked(Model):
    """Writes every setup and teardown to `<data_path>/events.log`, so tests can see the pool work."""

    def _event(self, what: str) -> None:
        self.data_path.mkdir(parents=True, exist_ok=True)
        with (self.data_path / "events.log").open("a") as file:
            file.write(f"{what} {self.model_name}:{self.version}\n")

    def setup(self) -> None:
        delay = float(self.config.get("load_seconds", 0))
        time.sleep(delay)
        self._event("setup")

    def teardown(self) -> None:
        self._event("teardown")


class Echo(Tracked):
    """Answers with what it was given, its version and its config."""

    name = "echo"
    example = {"text": "warm-up"}

    def predict(self, text: str, repeat: int = 1) -> dict[str, Any]:
        if not isinstance(text, str):
            raise InvalidInput(f"text must be a string, not {type(text).__name__}")
        return {"text": text * repeat, "version": self.version, "config": self.config}

    def train(self, steps: int = 3) -> dict[str, Any]:
        for step in range(1, steps + 1):
            self.report(step=step, total=steps, loss=1.0 / step)
        (self.model_dir / "weights.txt").write_text(f"trained {steps}")
        return {"steps": steps}


class Slow(Tracked):
    """Sleeps as long as asked: for in-flight requests during shutdown and version switches."""

    name = "slow"

    def predict(self, seconds: float = 0.5) -> dict[str, Any]:
        time.sleep(seconds)
        return {"slept": seconds, "version": self.version}


class Broken(Model):
    """Its predict always raises: the client must get a 500 with an error id, nothing else."""

    name = "broken"

    def predict(self, x: int = 0) -> int:
        raise RuntimeError("the model's own bug, with a secret: do-not-leak")


class FailsToLoad(Model):
    """Its setup raises: the server must keep serving the others and say why this one is not ready."""

    name = "failstoload"

    def setup(self) -> None:
        raise OSError("weights file missing")

    def predict(self, x: int = 0) -> int:
        return x


class Hungry(Tracked):
    """Holds `megabytes` of memory while loaded, for the memory-bounded pool."""

    name = "hungry"

    def setup(self) -> None:
        self.block = np.ones(int(self.config.get("megabytes", 64)) * 2**20 // 8)
        super().setup()

    def teardown(self) -> None:
        del self.block
        super().teardown()

    def predict(self) -> dict[str, Any]:
        return {"version": self.version, "pid": os.getpid()}


class Counter(Tracked):
    """Counts how often it was set up, to show concurrent first requests load once."""

    name = "counter"
    loads = 0
    _lock = threading.Lock()

    def setup(self) -> None:
        time.sleep(0.5)
        with Counter._lock:
            Counter.loads += 1
        super().setup()

    def predict(self) -> dict[str, int]:
        return {"loads": Counter.loads}


class Doubler(Model):
    """A tensor model: every Open Inference Protocol datatype goes in and comes back doubled."""

    name = "doubler"
    inputs = [TensorSpec("x", "FP32", (-1, -1))]
    outputs = [TensorSpec("y", "FP32", (-1, -1))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x * 2


class Custom(Model):
    """Returns its own responses: a 400 for a negative number, a 201 otherwise."""

    name = "custom"

    def predict(self, n: int) -> Response:
        if n < 0:
            return Response({"error": "n must not be negative"}, status=400)
        return Response({"n": n}, status=201, headers={"X-Custom": "yes"})


class Bytes(Model):
    """Takes raw bytes as `binary_data` and gives bytes back."""

    name = "bytes"

    def predict(self, binary_data: bytes) -> bytes:
        return binary_data[::-1]


class Big(Model):
    """Echoes large arrays: the transports must carry at least 256 MiB."""

    name = "big"
    inputs = [TensorSpec("x", "UINT8", (-1,))]
    outputs = [TensorSpec("y", "UINT8", (-1,))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x


class Pick(Router):
    """One endpoint for two models, chosen by `?model=`."""

    name = "pick"
    routes = {"talk": "echo", "sum": "add"}
    default_route = "talk"


class Busy(Model):
    """Answers its own 503, counting calls in `<data_path>/busy.count`: a client must not resend it."""

    name = "busy"

    def predict(self) -> Response:
        counter = self.data_path / "busy.count"
        counter.write_text(str(int(counter.read_text()) + 1 if counter.exists() else 1))
        return Response({"error": "the model itself says: busy"}, status=503)


class Batched(Model):
    """A tensor model that batches: requests queue for up to 200 ms and run together, 16 rows at most."""

    name = "batched"
    inputs = [TensorSpec("x", "FP32", (-1, 4))]
    outputs = [TensorSpec("y", "FP32", (-1, 4))]
    max_batch_size = 16
    max_batch_delay_ms = 200.0  # long, so that a test can tell "did not wait" from "waited" on a busy machine

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.005)  # a model with a fixed cost per call is what batching is for
        return x * 2


class BatchedWords(Model):
    """A keyword model that batches through predict_batch."""

    name = "words"
    max_batch_size = 8
    max_batch_delay_ms = 30.0

    def predict(self, word: str) -> str:
        return word.upper()

    def predict_batch(self, items: list[dict[str, Any]]) -> list[Any]:
        return [ValueError("no empty words") if not i["word"] else i["word"].upper() for i in items]


class Tagged(Model):
    """Batches (one request at a time, no delay), sleeps as asked, and records each tag it ran."""

    name = "tagged"
    max_batch_size = 2

    def predict(self, tag: str, seconds: float = 0.0) -> str:
        time.sleep(seconds)
        self.data_path.mkdir(parents=True, exist_ok=True)
        with (self.data_path / "tags.log").open("a") as file:
            file.write(tag + "\n")
        return tag


class Scaled(Model):
    """Versions for a shadow or canary: x times its config's `scale`, after `sleep` seconds; `fail`
    raises, `fail_share` raises on that share of requests (at random)."""

    name = "scaled"

    def predict(self, x: float) -> dict[str, Any]:
        time.sleep(float(self.config.get("sleep", 0)))
        if self.config.get("fail") or random.random() < float(self.config.get("fail_share", 0)):
            raise ValueError("this version fails on purpose")
        return {"y": x * float(self.config.get("scale", 1.0)), "label": "big" if x > 1 else "small"}


class Lenient(Scaled):
    """`Scaled` with its own comparison: numbers within 1 of each other agree."""

    name = "lenient"

    def compare(self, served: dict[str, Any], shadow: dict[str, Any]) -> dict[str, bool]:
        return {"y": abs(served["y"] - shadow["y"]) < 1, "label": served["label"] == shadow["label"]}


class LoopKind(Model):
    """Answers which event loop the server runs (the module of its class): `async def` runs on it."""

    async def predict(self) -> str:
        return type(asyncio.get_running_loop()).__module__
