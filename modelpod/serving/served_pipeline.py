"""A pipeline of served models: one served name whose steps are other models of the same server.

    class Review(ServedPipeline):
        steps = ["clean", {"en": "sentiment-en", "fr": "sentiment-fr"}, "label"]

        def choose(self, step, inputs, query_params):   # a branching step: which branch runs
            return "fr" if inputs["text"].startswith("le ") else "en"

A server runs each step as a request to that model (through its batcher, counted in its metrics)
and hands the step's Python result to the next step, with no encoding in between: a mapping
becomes the next step's keyword arguments, anything else its one input. The command line declares
a pipeline without a class: `modelpod serve ... --pipeline review=clean,sentiment-en|sentiment-fr,label`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import InvalidInput, ModelError, ModelpodError
from modelpod.runtime.model import Model, check_name
from modelpod.serving.router import Router
from modelpod.serving.tensors import Arrays, stack_rows, tensor_outputs
from modelpod.types import TensorSpec

logger = logging.getLogger("modelpod.runtime.pipeline")

Step = str | Mapping[str, str]  # a served model's name, or branches: branch name -> served model


class ServedPipeline(Model):
    """Serve it beside the models it names; `modelpod serve` runs them in order for each request."""

    steps: ClassVar[Sequence[Step]] = ()
    branch_param: ClassVar[str] = "branch"  # the query parameter the default `choose` reads

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inputs: tuple[TensorSpec, ...] = ()
        self._outputs: tuple[TensorSpec, ...] = ()

    @classmethod
    def of(cls, name: str, steps: Sequence[Step]) -> type[ServedPipeline]:
        """A pipeline class for steps given as data, as `--pipeline` does."""
        attributes = {
            "name": check_name("pipeline name", name),
            "steps": tuple(steps),
            "__module__": __name__,
        }
        return type(f"{cls.__name__}[{name}]", (cls,), attributes)

    def choose(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
        """Which branch of the branching step `steps[step]` runs this request, given that step's inputs.

        By default the `?branch=` query parameter names it, and the first branch runs without one.
        """
        branches = self.steps[step]
        choice = query_params.get(self.branch_param)
        if choice is None:
            return next(iter(branches))
        if choice not in branches:
            raise InvalidInput(f"unknown {self.branch_param} {choice!r}; choose one of {', '.join(branches)}")
        return choice

    def predict(self, **inputs: Any) -> Any:
        raise InvalidInput(f"{self.model_name} is a pipeline of served models; serve it beside them")

    # -- what the server asks of it ------------------------------------------------------------

    def bind(self, served: Mapping[str, Model]) -> None:
        """Check every step names a served model (at start-up), and take the tensors of the ends."""
        if not self.steps:
            raise ValueError(f"pipeline {self.model_name!r} has no steps")
        for index, step in enumerate(self.steps):
            for model in _models_of(self.model_name, index, step):
                _check_step(self.model_name, index, model, served)
        self._inputs = served[self.first_models()[0]].input_specs()
        self._outputs = served[self.last_models()[0]].output_specs()

    def models(self) -> list[str]:
        """Every served model a request may pass through, in step order."""
        return [m for index, step in enumerate(self.steps) for m in _models_of(self.model_name, index, step)]

    def first_models(self) -> list[str]:
        return _models_of(self.model_name, 0, self.steps[0])

    def last_models(self) -> list[str]:
        return _models_of(self.model_name, len(self.steps) - 1, self.steps[-1])

    def branches(self, step: int) -> Mapping[str, str] | None:
        """The branches of a branching step; None for a step that always runs one model."""
        chosen = self.steps[step]
        return None if isinstance(chosen, str) else chosen

    def branch(self, step: int, inputs: Any, query_params: Mapping[str, str]) -> str:
        """The served model that runs a branching step for this request."""
        branches = self.branches(step)
        assert branches is not None
        try:
            choice = self.choose(step, inputs, query_params)
        except ModelpodError:
            raise
        except Exception as error:
            failure = ModelError(f"{type(self).__name__}.choose raised {type(error).__name__}")
            logger.exception("error id %s: %r failed to choose", failure.error_id, self)
            raise failure from error
        if choice not in branches:
            raise ModelError(f"choose returned {choice!r}, not one of its branches {', '.join(branches)}")
        return branches[choice]

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self._inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self._outputs


def step_input(value: Any, model: Model) -> dict[str, Any]:
    """The keyword arguments of a step, from the previous step's result: a mapping is them, anything
    else is the step's one input."""
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise ModelError("the previous step returned a mapping whose keys are not all strings")
        return dict(value)
    names = [spec.name for spec in model.input_specs() if spec.name != "query_params"]
    if len(names) != 1:
        raise ModelError(
            f"the previous step returned a {type(value).__name__}, but {model.model_name} takes "
            f"{', '.join(names) or 'no named inputs'}: return a mapping of them"
        )
    return {names[0]: value}


def name_step(error: ModelpodError, pipeline: str, step: int, model: str) -> ModelpodError:
    """The same error, its message naming the pipeline step it came from (its type and status unchanged)."""
    error.message = f"pipeline {pipeline!r} step {step} ({model}): {error.message}"
    error.args = (error.message,)
    return error


def pipeline_outputs(last: Model, results: Sequence[Any]) -> Arrays:
    """Output tensors for the results of a pipeline's requests (one per tensor request, or one per row)."""
    if not last.is_tensor_model():
        return stack_rows(results, last.output_specs())
    parts = [tensor_outputs(result, last.output_specs()) for result in results]
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def parse_pipeline(text: str) -> tuple[str, type[ServedPipeline]]:
    """`name=a,b|c,d` -> a pipeline class: steps a, then b or c (`?branch=`), then d."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ValueError(f"--pipeline {text!r}: expected NAME=MODEL,MODEL,... (MODEL|MODEL to branch)")
    steps: list[Step] = []
    for part in spec.split(","):
        models = part.split("|")
        try:
            for model in [name, *models]:
                check_name("model name", model)
        except InvalidInput as error:
            raise ValueError(f"--pipeline {text!r}: {error}") from None
        steps.append(models[0] if len(models) == 1 else {model: model for model in models})
    return name, ServedPipeline.of(name, steps)


def _models_of(pipeline: str, index: int, step: Any) -> list[str]:
    if isinstance(step, str):
        return [step]
    if isinstance(step, Mapping) and step and all(isinstance(m, str) for m in step.values()):
        return list(step.values())
    raise ValueError(
        f"pipeline {pipeline!r} step {index} must be a served model's name, or a mapping of branch "
        f"names to them, not {step!r}"
    )


def _check_step(pipeline: str, index: int, model: str, served: Mapping[str, Model]) -> None:
    where = f"pipeline {pipeline!r} step {index}"
    if model not in served:
        known = ", ".join(name for name in served if name != pipeline) or "none"
        raise ValueError(f"{where} names model {model!r}, which is not served here (models: {known})")
    if isinstance(served[model], ServedPipeline | Router):
        kind = "pipeline" if isinstance(served[model], ServedPipeline) else "router"
        raise ValueError(f"{where} names the {kind} {model!r}; name the models it runs instead")
