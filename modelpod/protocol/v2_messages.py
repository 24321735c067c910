"""Open Inference Protocol messages: the decoded request and response, whatever the transport."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import InvalidInput
from modelpod.protocol.v2_tensors import Array

ParameterValue = bool | int | float | str


@dataclass
class RequestedOutput:
    """An output the client asked for; `binary_data` None means "whatever the request says"."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


@dataclass
class InferRequest:
    """A decoded inference request; `outputs` empty means every output the model has."""

    inputs: dict[str, Array]
    id: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)


@dataclass
class InferResponse:
    """What a model answered; outputs are arrays (or anything `np.asarray` accepts)."""

    model_name: str
    outputs: dict[str, Any]
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, ParameterValue] = field(default_factory=dict)


def select_outputs(outputs: Mapping[str, Any], requested: Sequence[RequestedOutput]) -> dict[str, Any]:
    """The outputs a request asked for, in the order asked; all of them when none were named."""
    if not requested:
        return dict(outputs)
    unknown = [output.name for output in requested if output.name not in outputs]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0]!r}; the model produces {sorted(outputs)}")
    return {output.name: outputs[output.name] for output in requested}


def _refuse_duplicates(kind: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"{kind} {name!r} appears more than once")
        seen.add(name)
