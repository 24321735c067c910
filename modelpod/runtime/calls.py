"""One call into a model, and what surrounds it: preprocessors, input preparation and the check of
its fields against `predict`'s signature, torch's inference mode and autocast, the model's own
exceptions turned into `ModelError`s with an error id, and postprocessors on the way out. The
`Runner` makes every call through one `ModelCalls`, alone, in batches, or as a stream."""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import InvalidInput, ModelError, ModelpodError, ProcessorError
from modelpod.runtime.inputs import InputPreparer, Prepared
from modelpod.runtime.items import (
    Collected,
    SyncCallInLoop,
    iterate_async,
    model_aitems,
    model_items,
    run_coroutine,
)
from modelpod.runtime.keywords import KeywordCheck
from modelpod.runtime.model import Model

logger = logging.getLogger("modelpod.runtime.runner")

Preprocessor = Callable[[dict[str, Any]], dict[str, Any]]
Postprocessor = Callable[[Any], Any]


@dataclass(frozen=True)
class _Processor:
    function: Callable[[Any], Any]
    priority: int
    name: str


@dataclass
class ModelCalls:
    """How one model instance is called; the runner's settings for it."""

    model: Model
    inputs: InputPreparer
    mixed_precision: bool = False
    inference_mode: bool = True
    preprocessors: list[_Processor] = field(default_factory=list)
    postprocessors: list[_Processor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keywords = KeywordCheck(_signature_of(self.model.signature_target()))  # read once: it is slow

    @property
    def label(self) -> str:
        return f"{self.model.model_name}:{self.model.version}"

    def add_preprocessor(self, function: Preprocessor, priority: int, name: str | None) -> None:
        self.preprocessors = _insert(self.preprocessors, function, priority, name)

    def add_postprocessor(self, function: Postprocessor, priority: int, name: str | None) -> None:
        self.postprocessors = _insert(self.postprocessors, function, priority, name)

    def run_one(self, inputs: dict[str, Any]) -> Any:
        """One request, prepared, called and finished."""
        prepared = self.prepare(inputs, "")
        return self.finish(prepared, self.call_predict(prepared.values))

    def isolated(self, item: dict[str, Any]) -> Any:
        """`predict` on one prepared item; its error in its place rather than raised."""
        try:
            return self.call_predict(item)
        except ModelpodError as error:
            return error

    def prepare(self, inputs: Mapping[str, Any], where: str) -> Prepared:
        if self.preprocessors:
            inputs = dict(inputs)  # a copy for them to change, which is no longer a server's checked tensors
        for processor in self.preprocessors:
            inputs = _run_processor(processor, "preprocessor", inputs)
            if not isinstance(inputs, Mapping):
                raise ProcessorError(
                    processor.name,
                    f"preprocessor {processor.name!r} returned {type(inputs).__name__}, "
                    "not a mapping of input names to values",
                )
        prepared = self.inputs.prepare(inputs, where)
        self.keywords.check(prepared.values, f"{where}{self.model.model_name}")
        return prepared

    def postprocess(self, output: Any) -> Any:
        for processor in self.postprocessors:
            output = _run_processor(processor, "postprocessor", output)
        return output

    def finish(self, prepared: Prepared, output: Any) -> Any:
        """A result as the caller gets it: restored and post-processed (a gathered stream item by item)."""
        if isinstance(output, Collected):
            return [self.postprocess(prepared.restore(item)) for item in output]
        return self.postprocess(prepared.restore(output))

    def safe_finish(self, prepared: Prepared, output: Any, skip_errors: bool) -> Any:
        try:
            return self.finish(prepared, output)
        except ModelpodError as error:
            if not skip_errors:
                raise
            return error

    def call_predict(self, values: dict[str, Any]) -> Any:
        """`predict`'s result; the items of a `predict` that yields, gathered into a `Collected` list."""
        output = self.call_model(self.model.predict, (), values)
        if isinstance(output, Generator):
            return Collected(model_items(output, self.call_model, self.label))
        if isinstance(output, AsyncGenerator):
            return Collected(iterate_async(model_aitems(output, self.failure, self.label)))
        return output

    def call_model(self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Any:
        try:
            if "torch" not in sys.modules and not self.mixed_precision:
                return _answer(method(*args, **kwargs))  # the common path needs no context at all
            with self._torch_context():
                return _answer(method(*args, **kwargs))
        except (ModelpodError, SyncCallInLoop):
            raise
        except Exception as error:
            raise self.failure(error) from error

    async def run_one_async(self, inputs: Mapping[str, Any]) -> Any:
        """One request to an `async def predict`, awaited on the caller's event loop (no torch
        context: it would hold for every task the loop runs while this one waits)."""
        prepared = self.prepare(inputs, "")
        try:
            output = await self.model.predict(**prepared.values)
        except ModelpodError:
            raise
        except Exception as error:
            raise self.failure(error) from error
        return self.finish(prepared, output)

    def failure(self, error: Exception) -> ModelError:
        """The client sees the exception's type and an id; the details stay in the log."""
        failure = ModelError(f"model {self.label} raised {type(error).__name__}")
        logger.error("error id %s: %r failed", failure.error_id, self.model, exc_info=error)
        return failure

    def _torch_context(self) -> contextlib.AbstractContextManager[Any]:
        """Around a call when torch is loaded: inference mode (the usual case, entered as it is:
        a generator or an exit stack around it costs as much again), and autocast if asked for."""
        torch = sys.modules.get("torch")  # only models that imported torch pay for it
        if torch is None:
            if self.mixed_precision:
                raise ModelError("mixed_precision needs torch, and this model does not use it")
            return _NO_CONTEXT
        if not self.mixed_precision:
            if not self.inference_mode:
                return _NO_CONTEXT
            mode: contextlib.AbstractContextManager[Any] = torch.inference_mode()
            return mode
        with contextlib.ExitStack() as stack:  # (left again if autocast cannot be entered)
            if self.inference_mode:
                stack.enter_context(torch.inference_mode())
            device_type = self.model.device.split(":")[0]
            dtype = torch.float16 if device_type == "cuda" else torch.bfloat16
            stack.enter_context(torch.autocast(device_type=device_type, dtype=dtype))
            return stack.pop_all()


_NO_CONTEXT = contextlib.nullcontext()


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
            describe_error(error),
        )
        raise failure from error


def check_train_options(model: Model, options: Mapping[str, Any]) -> None:
    """Refuse a train request before it starts: no `train`, or options it does not take."""
    if not model.has_train():
        raise InvalidInput(f"model {model.model_name!r} has no train() method")
    train: Callable[..., Any] = model.train  # type: ignore[attr-defined]
    KeywordCheck(_signature_of(train)).check(options, f"{model.model_name}.train")


def _signature_of(target: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: the call itself decides
        return None


def as_item_error(output: Any) -> Any:
    """A model reports a per-item failure by returning an exception in that item's place."""
    if isinstance(output, ModelpodError) or not isinstance(output, BaseException):
        return output
    failure = ModelError(f"the model failed this item with {type(output).__name__}")
    logger.error("error id %s: item failed: %s", failure.error_id, describe_error(output))
    return failure


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _answer(output: Any) -> Any:
    """A method's answer: an `async def` method's coroutine is run to its end (see `run_coroutine`)."""
    return run_coroutine(output) if inspect.iscoroutine(output) else output
