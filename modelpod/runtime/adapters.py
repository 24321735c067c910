"""Adapters that give the model contract's shape to what users already have: a Cortex-style
predictor class (`PredictorAdapter`) and a plain function (`FunctionModel`); `as_model` picks one."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from modelpod.runtime.formats import ModelFile, model_file
from modelpod.runtime.model import DEFAULT_VERSION, RESERVED_BYTES_ARGUMENT, Model, yields
from modelpod.types import TensorSpec


class PredictorAdapter(Model):
    """A Cortex-style predictor: `__init__(self, config)` and `predict(self, payload, query_params)`.

    The request body is the payload; the query string, where the transport has one, is
    `query_params`.
    """

    def __init__(self, predictor_class: type, version: str = DEFAULT_VERSION, **kwargs: Any) -> None:
        self.predictor_class = predictor_class
        self.predictor: Any = None
        kwargs.setdefault("name", predictor_class.__name__)
        super().__init__(version, **kwargs)
        params = inspect.signature(getattr(predictor_class, "predict")).parameters  # noqa: B009
        self._takes_query_params = "query_params" in params

    def setup(self) -> None:
        self.predictor = self.predictor_class(self.config)

    def predict(
        self, payload: Any = None, query_params: Mapping[str, str] | None = None, **fields: Any
    ) -> Any:
        if payload is None:
            # raw bytes (the reserved `binary_data` field) are the payload itself, as in Cortex
            only_bytes = set(fields) == {RESERVED_BYTES_ARGUMENT}
            payload = fields[RESERVED_BYTES_ARGUMENT] if only_bytes else fields
        if self._takes_query_params:
            return self.predictor.predict(payload=payload, query_params=dict(query_params or {}))
        return self.predictor.predict(payload=payload)

    def teardown(self) -> None:
        for method in ("teardown", "close"):
            if callable(getattr(self.predictor, method, None)):
                getattr(self.predictor, method)()
                break
        self.predictor = None

    def source(self) -> Any:
        return self.predictor_class

    def accepts_query_params(self) -> bool:
        return True

    def is_streaming(self) -> bool:
        return yields(getattr(self.predictor_class, "predict"))  # noqa: B009

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return (TensorSpec("payload", "BYTES", (-1,)),)


class FunctionModel(Model):
    """A plain function served as a model: its parameters are the request fields."""

    def __init__(self, function: Callable[..., Any], version: str = DEFAULT_VERSION, **kwargs: Any) -> None:
        self.function = function
        kwargs.setdefault("name", re.sub(r"[^A-Za-z0-9._-]", "", function.__name__) or "function")
        super().__init__(version, **kwargs)

    def predict(self, *args: Any, **inputs: Any) -> Any:
        return self.function(*args, **inputs)

    def signature_target(self) -> Callable[..., Any]:
        return self.function

    def source(self) -> Any:
        return self.function


def is_predictor_class(target: object) -> bool:
    """A class shaped like a Cortex predictor: not a Model, with a `predict` taking `payload`."""
    if not inspect.isclass(target) or issubclass(target, Model):
        return False
    predict = getattr(target, "predict", None)
    return callable(predict) and "payload" in inspect.signature(predict).parameters


def as_model(target: Any, version: str = DEFAULT_VERSION, **kwargs: Any) -> Model:
    """Give anything servable the one interface the rest of modelpod uses.

    Accepts a `Model` instance (returned as it is), a `Model` subclass, a Cortex-style predictor
    class, a function, or a model file (a path, or a `ModelFile`; `runtime=` forces its runtime,
    `allow_pickle=True` lets a pickle load).
    """
    if isinstance(target, Model):
        return target
    if isinstance(target, str | os.PathLike):
        runtime, allow_pickle = kwargs.pop("runtime", None), kwargs.pop("allow_pickle", False)
        target = model_file(target, runtime, allow_pickle)
    if isinstance(target, ModelFile):
        return target.instantiate(version, **kwargs)
    if inspect.isclass(target) and issubclass(target, Model):
        return target(version, **kwargs)
    if is_predictor_class(target):
        return PredictorAdapter(target, version, **kwargs)
    if inspect.isclass(target):
        raise TypeError(
            f"{target.__name__} is not a model: subclass modelpod.Model, or give it "
            "__init__(self, config) and predict(self, payload, query_params=None)"
        )
    if callable(target):
        return FunctionModel(target, version, **kwargs)
    raise TypeError(f"cannot serve {target!r}: expected a Model, a predictor class or a function")
