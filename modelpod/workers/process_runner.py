"""A model version run in worker processes, shaped like a Runner so the model pool loads, uses and
evicts it like any other (see `modelpod.workers.pool` for the processes themselves)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelpod.errors import InvalidInput, ModelpodError
from modelpod.runtime.deadline import call_deadline, clamp_wait
from modelpod.runtime.model import Model
from modelpod.workers.pool import WorkerPool


class ProcessRunner:
    """`load`, `predict`, `predict_batch` and `close`, answered by a pool of worker processes."""

    def __init__(self, model: Model, target: Any, *, workers: int, timeout: float | None = None,
                 runner_options: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self.model = model  # an unloaded instance: what the server asks about the model
        self.timeout = clamp_wait(timeout)  # a --model-timeout of years is the longest wait there is
        self._workers = WorkerPool(
            target, model.version, name=model.model_name, data_path=Path(model.data_path), workers=workers,
            runner_options={k: v for k, v in (runner_options or {}).items() if k != "batching"},
        )  # fmt: skip

    def load(self) -> None:
        self._workers.start()

    def close(self) -> None:
        self._workers.close()

    def memory_bytes(self) -> int:
        """What the loaded model costs: the resident memory of its worker processes."""
        return sum(self._workers.memory().values())

    def predict(self, **inputs: Any) -> Any:
        return self.predict_batch([inputs])[0]

    def predict_batch(
        self, items: Sequence[Mapping[str, Any]], skip_errors: bool = False, rows: Sequence[int] | None = None
    ) -> list[Any]:
        # `rows` stay here: the worker stacks the arrays it decodes from shared memory, and counts them.
        results = self._workers.run_batch([dict(item) for item in items], timeout=self._timeout())
        if not skip_errors:
            for result in results:
                if isinstance(result, ModelpodError):
                    raise result
        return results

    def _timeout(self) -> float | None:
        """The model's timeout, or less: what is left until the request's deadline."""
        deadline = call_deadline.get()
        if deadline is None:
            return self.timeout
        return clamp_wait(deadline - time.monotonic(), self.timeout)

    def train(self, **options: Any) -> Any:
        raise InvalidInput(f"model {self.model.model_name} runs in worker processes: train it in-process")

    def __repr__(self) -> str:
        return f"<ProcessRunner {self._workers.label} in {len(self._workers.pids())} processes>"
