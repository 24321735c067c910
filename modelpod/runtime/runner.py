"""Run a model in-process: load it on a device, prepare inputs, run processors, keep statistics.

The runner is what the server uses, and what a user uses without a server:

    runner = Runner(Sentiment)
    runner.predict(text="great")
    runner.predict_batch([{"text": "great"}, {"text": "awful"}], max_batch_size=32)
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from modelpod.errors import InvalidInput, ModelLoadError, ModelpodError
from modelpod.runtime import batch_calls, checks, item_streams, leaks, profiling
from modelpod.runtime.adapters import as_model
from modelpod.runtime.batchers import Batchers
from modelpod.runtime.call_log import CallLog
from modelpod.runtime.calls import ModelCalls, Postprocessor, Preprocessor, check_train_options
from modelpod.runtime.inputs import InputPreparer
from modelpod.runtime.items import iterate_async
from modelpod.runtime.latency import StatsSnapshot
from modelpod.runtime.loading import Loading
from modelpod.runtime.model import DEFAULT_VERSION, Model
from modelpod.runtime.stacking import rows_of
from modelpod.types import BatchConfig


class Runner:
    """Executes one model instance in-process.

    Options:
      device:          "cpu", "cuda", "cuda:N" or "mps"; None picks the best available
      warmup:          run the model's `example` once when loading
      convert:         None, "numpy" or "torch": turn list inputs into arrays or tensors on the device
      add_batch_dim:   tensor models only: give unbatched inputs a batch dimension, and take it off again
      mixed_precision: run torch models under `torch.autocast`
      inference_mode:  run torch models under `torch.inference_mode` (on by default)
      custom_ops:      compiled torch operator libraries to load before `setup`
      slow_ms:         requests slower than this are logged as warnings
      batching:        how `submit` batches concurrent requests (default: the model's own settings)
    """

    def __init__(
        self,
        model: Any,
        *,
        version: str = DEFAULT_VERSION,
        device: str | None = None,
        warmup: bool = True,
        convert: str | None = None,
        add_batch_dim: bool = False,
        mixed_precision: bool = False,
        inference_mode: bool = True,
        custom_ops: Sequence[str] = (),
        slow_ms: float = 1000.0,
        batching: BatchConfig | None = None,
        **model_options: Any,
    ) -> None:
        self.model: Model = as_model(model, version, **model_options)
        self._inputs = InputPreparer(self.model, convert=convert, add_batch_dim=add_batch_dim)
        self._calls = ModelCalls(self.model, self._inputs, mixed_precision, inference_mode)
        self._log = CallLog(self.model, slow_ms)
        warm_up = self._run_one if warmup else None
        self._loading = Loading(self.model, self._inputs, device, custom_ops, warm_up)
        self.batching = batching or self.model.batch_config()
        self._batchers = Batchers()  # the one batcher of `submit`, made on first use

    @property
    def mixed_precision(self) -> bool:
        return self._calls.mixed_precision

    @property
    def inference_mode(self) -> bool:
        return self._calls.inference_mode

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loading.loaded

    def load(self) -> None:
        """Load custom operators, choose the device, run `setup`, then warm up. Idempotent."""
        self._loading.load()

    def close(self) -> None:
        """Finish submitted requests, then tear the model down; the next request loads it again."""
        self._batchers.close()
        self._loading.unload()

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- processors -------------------------------------------------------------------------

    def register_preprocessor(
        self, function: Preprocessor, priority: int = 0, name: str | None = None
    ) -> None:
        """Add a function `inputs dict -> inputs dict`; lower priority runs first."""
        self._calls.add_preprocessor(function, priority, name)

    def register_postprocessor(
        self, function: Postprocessor, priority: int = 0, name: str | None = None
    ) -> None:
        """Add a function `output -> output`; lower priority runs first."""
        self._calls.add_postprocessor(function, priority, name)

    # -- the model's methods ----------------------------------------------------------------

    def predict(self, *args: Any, **inputs: Any) -> Any:
        """One request. Keyword arguments are its fields; one positional argument is the first field."""
        inputs = self._inputs.merge_positional(args, inputs)
        self.load()
        started = time.perf_counter()
        ok = False
        try:
            result = self._run_one(inputs)
            ok = True
            return result
        finally:
            self._log.record(started, ok, "predict")

    async def predict_async(self, **inputs: Any) -> Any:
        """One request to a loaded model whose `predict` is `async def`, awaited on this event loop
        (`predict` runs it on a private loop instead). Raises ModelLoadError if not loaded yet."""
        if not self._loading.loaded:
            raise ModelLoadError(f"model {self._label} is not loaded: load() it first, off the event loop")
        started = time.perf_counter()
        ok = False
        try:
            result = await self._calls.run_one_async(inputs)
            ok = True
            return result
        finally:
            self._log.record(started, ok, "predict")

    def predict_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        max_batch_size: int | None = None,
        skip_errors: bool = False,
        rows: Sequence[int] | None = None,
    ) -> list[Any]:
        """Many requests, in chunks of `max_batch_size`, results in the same order.

        With `skip_errors`, a failing item's place holds its error (a `ModelpodError`) and the
        others still get results; without it, the first failure is raised. `rows` are the items'
        row counts where the caller has them (a batcher counts each request once, when submitted).
        """
        if max_batch_size is not None and max_batch_size < 1:
            raise InvalidInput(f"max_batch_size must be at least 1, not {max_batch_size}")
        if not isinstance(items, Sequence) or isinstance(items, str | bytes | bytearray):
            raise InvalidInput(f"predict_batch needs a list of requests, got {type(items).__name__}")
        self.load()
        size = max_batch_size or max(len(items), 1)
        results: list[Any] = []
        for start in range(0, len(items), size):
            counted = None if rows is None else rows[start : start + size]
            results.extend(self._run_chunk(items[start : start + size], start, skip_errors, counted))
        return results

    def submit(self, priority: int = 0, deadline: float | None = None, **inputs: Any) -> Future[Any]:
        """Queue one request for dynamic batching; the future holds its result.

        Concurrent submitters are batched together by `self.batching`. `deadline` is a
        `time.monotonic()` instant after which the request is dropped before compute.
        """

        def run(items: list[Any], rows: list[int]) -> list[Any]:
            return self.predict_batch(items, skip_errors=True, rows=rows)

        batcher = self._batchers.batcher((self.model.model_name, self.model.version), self.batching, run)
        rows = rows_of(inputs) if self.model.is_tensor_model() else 1
        return batcher.submit(inputs, rows=rows, priority=priority, deadline=deadline)

    # -- streaming: a predict that yields ----------------------------------------------------------

    def predict_stream(self, *args: Any, **inputs: Any) -> Iterator[Any]:
        """One request's items as the model yields them, each post-processed; a model whose `predict`
        does not yield gives its result as the only item. Closing the iterator (or leaving a loop over
        it) closes the model's generator, so its `finally` runs. (`predict` gathers them in a list.)

        An async generator model runs on a private event loop here; on an event loop, use `stream`.
        A stream counts once in `stats()`, its latency the time to its first item."""
        items = self.stream(self._inputs.merge_positional(args, inputs))
        return iterate_async(items) if isinstance(items, AsyncGenerator) else items

    def stream(self, inputs: dict[str, Any]) -> Generator[Any, None, None] | AsyncGenerator[Any, None]:
        """`predict_stream` for a caller on an event loop (the server): an async generator model's
        items come as an async generator, to be iterated there; anything else as a generator."""
        self.load()
        return item_streams.open_stream(self._calls, inputs, self._log.stats)

    def stream_batch(self, items: Sequence[Mapping[str, Any]]) -> Generator[tuple[int, Any], None, None]:
        """Requests run as one batch, their items as `(request index, item)` as the model yields them:
        an item (post-processed), a `ModelpodError` that ends that request's stream, or STREAM_END."""
        self.load()
        yield from item_streams.stream_batch(self._calls, items)

    def initialize(self, **config: Any) -> dict[str, Any]:
        """Record a new config for this instance; it is set up again with it on next use."""
        info = self.model.initialize(**config)
        self.close()
        return info

    def train(self, **options: Any) -> Any:
        """Run the model's `train`; its progress is in `log()`."""
        check_train_options(self.model, options)
        self.load()
        train: Callable[..., Any] = self.model.train  # type: ignore[attr-defined]
        return self._calls.call_model(train, (), options)

    def log(self) -> list[dict[str, Any]]:
        return self.model.log()

    def stats(self) -> StatsSnapshot:
        """Counts, latency percentiles and histogram of the requests this runner ran."""
        return self._log.stats.snapshot()

    # -- checks -----------------------------------------------------------------------------

    def check_nan(self, **inputs: Any) -> checks.NanReport:
        self.load()
        return checks.check_nan(self.model, lambda: self._run_one(dict(inputs)))

    def check_memory_leak(self, iterations: int = 100, **inputs: Any) -> leaks.LeakReport:
        self.load()
        return leaks.check_memory_leak(lambda: self._run_one(dict(inputs)), iterations=iterations)

    def profile(self, iterations: int = 10, **inputs: Any) -> profiling.ProfileReport:
        self.load()
        return profiling.profile(lambda: self._run_one(dict(inputs)), iterations=iterations)

    # -- execution --------------------------------------------------------------------------

    def _run_one(self, inputs: dict[str, Any]) -> Any:
        return self._calls.run_one(inputs)

    def _run_chunk(
        self, chunk: Sequence[Mapping[str, Any]], offset: int, skip_errors: bool, rows: Sequence[int] | None
    ) -> list[Any]:
        started = time.perf_counter()
        results: list[Any] = []
        try:
            results = batch_calls.chunk_results(self._calls, chunk, offset, skip_errors, rows)
            return results
        finally:
            # every item is a request: a chunk that raised counts all its items as failed
            failed = [isinstance(r, ModelpodError) for r in results] if results else [True] * len(chunk)
            self._log.record_many(started, failed, f"predict_batch of {len(chunk)}")

    @property
    def _label(self) -> str:
        return f"{self.model.model_name}:{self.model.version}"

    def __repr__(self) -> str:
        state = "loaded" if self._loading.loaded else "not loaded"
        return f"<Runner {self.model!r} on {self.model.device} ({state})>"
