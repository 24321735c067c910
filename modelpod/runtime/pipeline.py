"""Chain models: each step's output is the next step's input. A pipeline is itself a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelpod.errors import ModelpodError
from modelpod.runtime.model import Model
from modelpod.runtime.runner import Runner
from modelpod.types import TensorSpec


class Pipeline(Model):
    """`Pipeline([a, b, c])` runs a, then b on a's output, then c on b's.

    A step's output that is a mapping becomes the next step's keyword arguments; anything else
    is passed as its one positional input. Steps may be runners, models, predictor classes or
    functions. An error in a step names the step.
    """

    def __init__(self, steps: Sequence[Any], version: str = "1", **kwargs: Any) -> None:
        if not steps:
            raise ValueError("a pipeline needs at least one step")
        # steps given as classes or functions keep their files beside the pipeline's
        data_path = kwargs.get("data_path")
        self.steps = [
            step if isinstance(step, Runner) else Runner(step, data_path=data_path) for step in steps
        ]
        super().__init__(version, **kwargs)

    def setup(self) -> None:
        for step in self.steps:
            step.load()

    def predict(self, *args: Any, **inputs: Any) -> Any:
        value: Any = None
        for index, step in enumerate(self.steps):
            try:
                if index == 0:
                    value = step.predict(*args, **inputs)
                elif isinstance(value, Mapping):
                    value = step.predict(**value)
                else:
                    value = step.predict(value)
            except ModelpodError as error:
                error.message = f"pipeline step {index} ({step.model.model_name}): {error.message}"
                error.args = (error.message,)
                raise
        return value

    def teardown(self) -> None:
        for step in self.steps:
            step.close()

    def signature_target(self) -> Any:
        return self.steps[0].model.signature_target()

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.steps[0].model.input_specs()

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.steps[-1].model.output_specs()
