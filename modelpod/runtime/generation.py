"""What a model offers OpenAI's routes, read from its `predict` alone: the generation contract.

- **Embeddings**: a `predict` that does not yield, takes one text argument (the only one without a
  default) and is annotated to return a vector (`-> list[float]` or `-> np.ndarray`). Given a
  `dimensions` keyword, it serves OpenAI's `dimensions`. Or a tensor model (a model file) of one
  BYTES input of text rows and one float output of a vector per row.
- **Generation**: a `predict` that yields text pieces (each piece one token) for a `prompt`:

      class Echo(Model):
          def predict(self, prompt: str, max_tokens: int = 16, seed: int | None = None):
              yield from prompt.split()[:max_tokens]

  OpenAI's sampling parameters reach `predict` under their own names (`max_tokens`, `temperature`,
  `top_p`, `seed`), or `max_tokens` as `max_new_tokens` or `length`; one it does not take is refused.
  A `predict` that takes `messages` gets a chat's messages as they are; otherwise they become a prompt
  through the model's `chat_template(messages)`, or the plain one below.

A generation model may also offer the step contract (`modelpod.runtime.steps`: `start_sequence`,
`step_sequences`): its requests then run in one running batch per version (token-level batching).

Optional, on the model, callable before `setup` (on the unloaded instance the server holds):
`count_tokens(text) -> int`, so that answers carry `usage`; `chat_template(messages) -> str`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelpod.errors import ModelpodError
from modelpod.runtime.model import Model
from modelpod.types import TensorSpec

EMBEDDINGS = "embeddings"
GENERATION = "generation"

_VECTOR_ANNOTATIONS = {
    "list[float]",
    "List[float]",
    "Sequence[float]",
    "np.ndarray",
    "numpy.ndarray",
    "ndarray",
}
_VECTOR_DATATYPES = {"FP16", "FP32", "FP64"}
_ALIASES = {
    "max_tokens": ("max_tokens", "max_new_tokens", "length"),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "seed": ("seed",),
    "dimensions": ("dimensions",),
}

Messages = Sequence[Mapping[str, str]]


def plain_chat_template(messages: Messages) -> str:
    """`role: content` lines, then `assistant: ` for the model to go on from."""
    lines = "".join(f"{message['role']}: {message['content']}\n" for message in messages)
    return lines + "assistant: "


@dataclass(frozen=True)
class OpenAIFace:
    """How one model answers OpenAI's routes; `task` None when it answers none of them."""

    task: str | None = None
    text_argument: str = "prompt"  # the keyword that receives the text (or the prompt)
    takes_messages: bool = False
    takes_prompt: bool = True
    parameters: Mapping[str, str] = field(default_factory=dict)  # OpenAI name -> predict's keyword
    count_tokens: Callable[[str], int] | None = None
    chat_template: Callable[[Messages], str] = plain_chat_template
    output: str | None = None  # a tensor model's vector output: it takes `text_argument` as BYTES rows

    def unsupported(self, given: Mapping[str, Any]) -> list[str]:
        """The OpenAI parameters among `given` that this model does not take."""
        return [name for name in given if name not in self.parameters]

    def arguments(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` (OpenAI names, all supported) under predict's own keywords."""
        return {self.parameters[name]: value for name, value in given.items()}


def openai_face(model: Model) -> OpenAIFace:
    """Read from the model's `predict`; never raises (a model it cannot read answers no route)."""
    try:
        if model.is_tensor_model():
            return _tensor_face(model.input_specs(), model.output_specs())
        target = model.signature_target()
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError, ModelpodError):  # a model it cannot read answers no /v1 route
        return OpenAIFace()
    counting = getattr(model, "count_tokens", None)
    template = getattr(model, "chat_template", None)
    offered = _offered(parameters)
    count = counting if callable(counting) else None
    if model.is_streaming() and ("prompt" in parameters or "messages" in parameters):
        return OpenAIFace(
            GENERATION,
            "prompt",
            takes_messages="messages" in parameters,
            takes_prompt="prompt" in parameters,
            parameters=offered,
            count_tokens=count,
            chat_template=template if callable(template) else plain_chat_template,
        )
    text = _only_required(parameters)
    if text is not None and not model.is_streaming() and _returns_vector(target):
        return OpenAIFace(EMBEDDINGS, text, parameters=offered, count_tokens=count)
    return OpenAIFace()


def _tensor_face(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> OpenAIFace:
    """Embeddings from a tensor model of one text row in, one float vector row out (a
    sentence-transformers folder, a transformers feature extractor)."""
    if len(inputs) != 1 or len(outputs) != 1:
        return OpenAIFace()
    (text,), (vector,) = inputs, outputs
    if text.datatype != "BYTES" or len(text.shape) != 1:
        return OpenAIFace()
    if vector.datatype not in _VECTOR_DATATYPES or len(vector.shape) != 2:
        return OpenAIFace()
    return OpenAIFace(EMBEDDINGS, text.name, output=vector.name)


def _offered(parameters: Mapping[str, inspect.Parameter]) -> dict[str, str]:
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    offered = {}
    for name, aliases in _ALIASES.items():
        keyword = next((alias for alias in aliases if alias in parameters), name if any_keyword else None)
        if keyword is not None:
            offered[name] = keyword
    return offered


def _only_required(parameters: Mapping[str, inspect.Parameter]) -> str | None:
    required = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    return required[0] if len(required) == 1 else None


def _returns_vector(target: Callable[..., Any]) -> bool:
    annotation = inspect.signature(target).return_annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    if not isinstance(annotation, str) and repr(annotation) in ("list[float]", "typing.List[float]"):
        return True
    return text.replace("typing.", "") in _VECTOR_ANNOTATIONS
