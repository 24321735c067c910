"""Run a model in-process: load it on a device, prepare inputs, run processors, keep statistics.

The runner is what the server uses, and what a user uses without a server:

    runner = Runner(Sentiment)
    runner.predict(text="great")
    runner.predict_batch([{"text": "great"}, {"text": "awful"}], max_batch_size=32)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from modelpod import checks
from modelpod.batching import BatchConfig, Batcher
from modelpod.devices import select_device
from modelpod.errors import InvalidInput, ModelError, ModelLoadError, ModelpodError, ProcessorError
from modelpod.inputs import InputPreparer, Prepared
from modelpod.model import DEFAULT_VERSION, STREAM_END, Model, as_model
from modelpod.stacking import rows_of, split, stack
from modelpod.stats import LatencyStats, StatsSnapshot
from modelpod.streaming import (
    Collected,
    checked_pair,
    collect_batch,
    iterate_async,
    model_aitems,
    model_items,
)

logger = logging.getLogger("modelpod.runner")

Preprocessor = Callable[[dict[str, Any]], dict[str, Any]]
Postprocessor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Processor:
    function: Callable[[Any], Any]
    priority: int
    name: str


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
        self.requested_device = device
        self.warmup = warmup
        self.mixed_precision = mixed_precision
        self.inference_mode = inference_mode
        self.custom_ops = tuple(custom_ops)
        self.slow_ms = slow_ms
        self._preprocessors: list[_Processor] = []
        self._postprocessors: list[_Processor] = []
        self._inputs = InputPreparer(self.model, convert=convert, add_batch_dim=add_batch_dim)
        self._stats = LatencyStats()
        self._load_lock = threading.Lock()
        self._loaded = False
        self.batching = batching or self.model.batch_config()
        self._signature = _signature_of(self.model.signature_target())  # computed once: it is slow
        self._batcher: Batcher | None = None

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Load custom operators, choose the device, run `setup`, then warm up. Idempotent."""
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            self._load_custom_ops()
            try:
                self.model.device = select_device(self.requested_device)
            except ValueError as error:
                raise ModelLoadError(f"model {self._label} cannot be loaded: {error}") from error
            self._inputs.device = self.model.device
            try:
                self.model.setup()
            except Exception as error:
                raise ModelLoadError(f"model {self._label} failed to load: {_describe(error)}") from error
            self._warm_up()
            self._loaded = True
            logger.info("loaded %r on %s", self.model, self.model.device)

    def close(self) -> None:
        """Finish submitted requests, then tear the model down; the next request loads it again."""
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        with self._load_lock:
            if self._loaded:
                self._loaded = False
                self.model.teardown()
                logger.info("unloaded %r", self.model)

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _load_custom_ops(self) -> None:
        if not self.custom_ops:
            return
        try:
            import torch
        except ImportError as error:
            raise ModelLoadError("custom_ops need torch: pip install 'modelpod[torch]'") from error
        for path in self.custom_ops:
            try:
                torch.ops.load_library(path)
            except (OSError, RuntimeError) as error:
                raise ModelLoadError(f"cannot load custom operator library {path!r}: {error}") from error

    def _warm_up(self) -> None:
        example = self.model.example
        if not self.warmup or example is None:
            return
        try:
            self._run_one(dict(example))
        except ModelpodError as error:
            # not loaded, so close() will not tear it down: free what setup took now
            with contextlib.suppress(Exception):
                self.model.teardown()
            raise ModelLoadError(f"model {self._label} failed its warm-up request: {error}") from error

    # -- processors -------------------------------------------------------------------------

    def register_preprocessor(
        self, function: Preprocessor, priority: int = 0, name: str | None = None
    ) -> None:
        """Add a function `inputs dict -> inputs dict`; lower priority runs first."""
        self._preprocessors = _insert(self._preprocessors, function, priority, name)

    def register_postprocessor(
        self, function: Postprocessor, priority: int = 0, name: str | None = None
    ) -> None:
        """Add a function `output -> output`; lower priority runs first."""
        self._postprocessors = _insert(self._postprocessors, function, priority, name)

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
            self._record(started, ok, "predict")

    def predict_batch(
        self,
        items: Sequence[Mapping[str, Any]],
        max_batch_size: int | None = None,
        skip_errors: bool = False,
    ) -> list[Any]:
        """Many requests, in chunks of `max_batch_size`, results in the same order.

        With `skip_errors`, a failing item's place holds its error (a `ModelpodError`) and the
        others still get results; without it, the first failure is raised.
        """
        if max_batch_size is not None and max_batch_size < 1:
            raise InvalidInput(f"max_batch_size must be at least 1, not {max_batch_size}")
        if not isinstance(items, Sequence) or isinstance(items, str | bytes | bytearray):
            raise InvalidInput(f"predict_batch needs a list of requests, got {type(items).__name__}")
        self.load()
        size = max_batch_size or max(len(items), 1)
        results: list[Any] = []
        for start in range(0, len(items), size):
            results.extend(self._run_chunk(items[start : start + size], start, skip_errors))
        return results

    def submit(self, priority: int = 0, deadline: float | None = None, **inputs: Any) -> Future[Any]:
        """Queue one request for dynamic batching; the future holds its result.

        Concurrent submitters are batched together by `self.batching`. `deadline` is a
        `time.monotonic()` instant after which the request is dropped before compute.
        """
        with self._load_lock:
            if self._batcher is None:
                run = functools.partial(self.predict_batch, skip_errors=True)
                self._batcher = Batcher(run, self.batching, name=self._label)
        rows = rows_of(inputs) if self.model.is_tensor_model() else 1
        return self._batcher.submit(inputs, rows=rows, priority=priority, deadline=deadline)

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
        started = time.perf_counter()
        try:
            prepared = self._prepare(inputs, "")
            output = self._call_model(self.model.predict, (), prepared.values)
        except ModelpodError:
            self._stats.record(time.perf_counter() - started, False)
            raise
        if isinstance(output, AsyncGenerator):
            return self._afinished(model_aitems(output, self._failure, self._label), prepared, started)
        if isinstance(output, Generator):
            return self._finished(model_items(output, self._call_model, self._label), prepared, started)
        return self._finished(iter([output]), prepared, started)

    def stream_batch(self, items: Sequence[Mapping[str, Any]]) -> Generator[tuple[int, Any], None, None]:
        """Requests run as one batch, their items as `(request index, item)` as the model yields them:
        an item (post-processed), a `ModelpodError` that ends that request's stream, or STREAM_END.
        A streaming `predict_batch` yields per request; any other model gives each request one item."""
        self.load()
        prepared: dict[int, Prepared] = {}
        for index, item in enumerate(items):
            try:
                if not isinstance(item, Mapping):
                    raise InvalidInput(f"item {index}: expected a mapping of input names to values")
                prepared[index] = self._prepare(dict(item), f"item {index}: ")
            except ModelpodError as error:
                yield index, error
        order = list(prepared)  # the model sees the good requests only: positions map back to indexes
        values = [prepared[index].values for index in order]
        if not values:
            return
        if not self.model.streams_batches():
            for index, output in zip(order, self._batch_outputs(values, skip_errors=True), strict=True):
                if not isinstance(output, ModelpodError):
                    output = self._safe_finish(prepared[index], output, skip_errors=True)
                yield index, output
            return
        batch: Callable[..., Any] = self.model.predict_batch  # type: ignore[attr-defined]
        for pair in model_items(self._call_model(batch, (values,), {}), self._call_model, self._label):
            position, item = checked_pair(pair, len(order), self._label)
            index = order[position]
            if item is STREAM_END or isinstance(item, BaseException):
                yield index, _as_item_error(item)
            else:
                yield index, self._safe_finish(prepared[index], item, skip_errors=True)

    def _finished(
        self, items: Generator[Any, None, None] | Iterator[Any], prepared: Prepared, started: float
    ) -> Generator[Any, None, None]:
        ok, first = True, None  # a stream its caller closes early did not fail
        try:
            for item in items:
                first = first or time.perf_counter()
                yield self._postprocess(prepared.restore(item))
        except Exception:
            ok = False
            raise
        finally:
            if isinstance(items, Generator):
                items.close()
            self._stats.record((first or time.perf_counter()) - started, ok)

    async def _afinished(
        self, items: AsyncGenerator[Any, None], prepared: Prepared, started: float
    ) -> AsyncGenerator[Any, None]:
        ok, first = True, None
        try:
            async for item in items:
                first = first or time.perf_counter()
                yield self._postprocess(prepared.restore(item))
        except Exception:
            ok = False
            raise
        finally:
            await items.aclose()
            self._stats.record((first or time.perf_counter()) - started, ok)

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
        return self._call_model(train, (), options)

    def log(self) -> list[dict[str, Any]]:
        return self.model.log()

    def stats(self) -> StatsSnapshot:
        """Counts, latency percentiles and histogram of the requests this runner ran."""
        return self._stats.snapshot()

    # -- checks -----------------------------------------------------------------------------

    def check_nan(self, **inputs: Any) -> checks.NanReport:
        self.load()
        return checks.check_nan(self.model, lambda: self._run_one(dict(inputs)))

    def check_memory_leak(self, iterations: int = 100, **inputs: Any) -> checks.LeakReport:
        self.load()
        return checks.check_memory_leak(lambda: self._run_one(dict(inputs)), iterations=iterations)

    def profile(self, iterations: int = 10, **inputs: Any) -> checks.ProfileReport:
        self.load()
        return checks.profile(lambda: self._run_one(dict(inputs)), iterations=iterations)

    # -- execution --------------------------------------------------------------------------

    def _run_one(self, inputs: dict[str, Any]) -> Any:
        prepared = self._prepare(inputs, "")
        return self._finish(prepared, self._call_predict(prepared.values))

    def _run_chunk(self, chunk: Sequence[Mapping[str, Any]], offset: int, skip_errors: bool) -> list[Any]:
        started = time.perf_counter()
        results: list[Any] = []
        try:
            results = self._chunk_results(chunk, offset, skip_errors)
            return results
        finally:
            # every item is a request: a chunk that raised counts all its items as failed
            failed = [isinstance(r, ModelpodError) for r in results] if results else [True] * len(chunk)
            self._record_many(started, failed, f"predict_batch of {len(chunk)}")

    def _chunk_results(self, chunk: Sequence[Mapping[str, Any]], offset: int, skip_errors: bool) -> list[Any]:
        prepared, failures = [], {}
        for index, item in enumerate(chunk):
            where = f"item {offset + index}: "
            try:
                if not isinstance(item, Mapping):
                    raise InvalidInput(
                        f"{where}expected a mapping of input names to values, got {type(item).__name__}"
                    )
                prepared.append(self._prepare(dict(item), where))
            except ModelpodError as error:
                if not skip_errors:
                    raise
                failures[index] = error
        outputs = self._batch_outputs([p.values for p in prepared], skip_errors)
        results: list[Any] = []
        good = iter(zip(prepared, outputs, strict=True))
        for index in range(len(chunk)):
            if index in failures:
                results.append(failures[index])
                continue
            item, output = next(good)
            if isinstance(output, ModelpodError):
                if not skip_errors:
                    raise output
                results.append(output)
            else:
                results.append(self._safe_finish(item, output, skip_errors))
        return results

    def _batch_outputs(self, items: list[dict[str, Any]], skip_errors: bool) -> list[Any]:
        if not items:
            return []
        if self.model.has_batch():
            batch: Callable[..., Any] = self.model.predict_batch  # type: ignore[attr-defined]
            try:
                outputs = self._call_model(batch, (items,), {})
            except ModelpodError:
                if not skip_errors:
                    raise
                return [self._isolated(item) for item in items]  # find the failing items one by one
            if isinstance(outputs, Generator):  # a streaming batch, gathered per request
                pairs = model_items(outputs, self._call_model, self._label)
                outputs = collect_batch(pairs, len(items), self._label)
            if not isinstance(outputs, Sequence) or len(outputs) != len(items):
                count = len(outputs) if isinstance(outputs, Sequence) else type(outputs).__name__
                raise ModelError(
                    f"{self.model!r}.predict_batch returned {count} results for {len(items)} requests"
                )
            return [_as_item_error(o) for o in outputs]
        if self.model.is_tensor_model() and len(items) > 1 and not self.model.is_streaming():
            stacked = stack(items)
            if stacked is not None:
                return self._stacked_outputs(*stacked, items, skip_errors)
        if skip_errors:
            return [self._isolated(item) for item in items]
        return [self._call_predict(item) for item in items]

    def _stacked_outputs(
        self, joined: dict[str, Any], rows: list[int], items: list[dict[str, Any]], skip_errors: bool
    ) -> list[Any]:
        """One call for every request of a tensor model, its output cut back per request."""
        try:
            output = self._call_model(self.model.predict, (), joined)
        except ModelpodError:
            if not skip_errors:
                raise
            return [self._isolated(item) for item in items]  # find the failing items one by one
        try:
            return split(output, rows)
        except ValueError as error:
            raise ModelError(f"model {self._label} cannot be batched: {error}") from None

    def _isolated(self, item: dict[str, Any]) -> Any:
        try:
            return self._call_predict(item)
        except ModelpodError as error:
            return error

    def _prepare(self, inputs: dict[str, Any], where: str) -> Any:
        for processor in self._preprocessors:
            inputs = _run_processor(processor, "preprocessor", inputs)
            if not isinstance(inputs, Mapping):
                raise ProcessorError(
                    processor.name,
                    f"preprocessor {processor.name!r} returned {type(inputs).__name__}, "
                    "not a mapping of input names to values",
                )
        prepared = self._inputs.prepare(inputs, where)
        _bind(self._signature, prepared.values, f"{where}{self.model.model_name}")
        return prepared

    def _postprocess(self, output: Any) -> Any:
        for processor in self._postprocessors:
            output = _run_processor(processor, "postprocessor", output)
        return output

    def _finish(self, prepared: Prepared, output: Any) -> Any:
        """A result as the caller gets it: restored and post-processed (a gathered stream item by item)."""
        if isinstance(output, Collected):
            return [self._postprocess(prepared.restore(item)) for item in output]
        return self._postprocess(prepared.restore(output))

    def _safe_finish(self, prepared: Prepared, output: Any, skip_errors: bool) -> Any:
        try:
            return self._finish(prepared, output)
        except ModelpodError as error:
            if not skip_errors:
                raise
            return error

    def _call_predict(self, values: dict[str, Any]) -> Any:
        """`predict`'s result; the items of a `predict` that yields, gathered into a `Collected` list."""
        output = self._call_model(self.model.predict, (), values)
        if isinstance(output, Generator):
            return Collected(model_items(output, self._call_model, self._label))
        if isinstance(output, AsyncGenerator):
            return Collected(iterate_async(model_aitems(output, self._failure, self._label)))
        return output

    def _call_model(
        self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Any:
        try:
            if "torch" not in sys.modules and not self.mixed_precision:
                return method(*args, **kwargs)  # the common path needs no context at all
            with self._torch_context():
                return method(*args, **kwargs)
        except ModelpodError:
            raise
        except Exception as error:
            raise self._failure(error) from error

    def _failure(self, error: Exception) -> ModelError:
        """The client sees the exception's type and an id; the details stay in the log."""
        failure = ModelError(f"model {self._label} raised {type(error).__name__}")
        logger.error("error id %s: %r failed", failure.error_id, self.model, exc_info=error)
        return failure

    @contextlib.contextmanager
    def _torch_context(self) -> Iterator[None]:
        torch = sys.modules.get("torch")  # only models that imported torch pay for it
        if torch is None:
            if self.mixed_precision:
                raise ModelError("mixed_precision needs torch, and this model does not use it")
            yield
            return
        with contextlib.ExitStack() as stack:
            if self.inference_mode:
                stack.enter_context(torch.inference_mode())
            if self.mixed_precision:
                device_type = self.model.device.split(":")[0]
                dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
                stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
            yield

    def _record(self, started: float, ok: bool, what: str) -> None:
        self._record_many(started, [not ok], what)

    def _record_many(self, started: float, failed: Sequence[bool], what: str) -> None:
        elapsed = time.perf_counter() - started
        for item_failed in failed:
            self._stats.record(elapsed, not item_failed)
        if failed and elapsed * 1000 > self.slow_ms:
            logger.warning(
                "slow %s on %r: %.1f ms (threshold %.0f ms)",
                what,
                self.model,
                elapsed * 1000,
                self.slow_ms,
            )

    @property
    def _label(self) -> str:
        return f"{self.model.model_name}:{self.model.version}"

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return f"<Runner {self.model!r} on {self.model.device} ({state})>"


def _insert(
    chain: list[_Processor], function: Callable[[Any], Any], priority: int, name: str | None
) -> list[_Processor]:
    label = name or getattr(function, "__qualname__", None) or repr(function)
    # sorted() is stable: equal priorities keep their registration order
    return sorted([*chain, _Processor(function, priority, label)], key=lambda p: p.priority)


def _run_processor(processor: _Processor, kind: str, value: Any) -> Any:
    try:
        return processor.function(value)
    except InvalidInput as error:
        raise InvalidInput(f"{kind} {processor.name!r}: {error.message}") from error
    except Exception as error:
        failure = ProcessorError(processor.name, f"{kind} {processor.name!r} raised {type(error).__name__}")
        logger.error(
            "error id %s: %s %r failed: %s",
            failure.error_id,
            kind,
            processor.name,
            _describe(error),
        )
        raise failure from error


def check_train_options(model: Model, options: Mapping[str, Any]) -> None:
    """Refuse a train request before it starts: no `train`, or options it does not take."""
    if not model.has_train():
        raise InvalidInput(f"model {model.model_name!r} has no train() method")
    train: Callable[..., Any] = model.train  # type: ignore[attr-defined]
    _bind(_signature_of(train), options, f"{model.model_name}.train")


def _signature_of(target: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: the call itself decides
        return None


def _bind(signature: inspect.Signature | None, kwargs: Mapping[str, Any], label: str) -> None:
    """Reject missing and unknown fields before calling the model, naming them."""
    if signature is None:
        return
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise InvalidInput(f"{label}: {error}") from None


def _as_item_error(output: Any) -> Any:
    """A model reports a per-item failure by returning an exception in that item's place."""
    if isinstance(output, ModelpodError) or not isinstance(output, BaseException):
        return output
    failure = ModelError(f"the model failed this item with {type(output).__name__}")
    logger.error("error id %s: item failed: %s", failure.error_id, _describe(output))
    return failure


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
