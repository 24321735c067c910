"""NaN/Inf check: which output of a model holds NaN or Inf, and which torch module made it first.

    check_nan(model, call) -> NanReport

The other checks are `modelpod.runtime.leaks.check_memory_leak` and
`modelpod.runtime.profiling.profile`. Each runs a zero-argument `call` (typically
`lambda: model.predict(**example)`) and returns a frozen report whose `str()` reads as a sentence
or a table. torch is never imported here unless the model already did.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelpod.runtime.model import Model

_MAX_DEPTH = 32
DEFAULT_TOLERANCE_BYTES = 1024
"""Growth per iteration (bytes) that `check_memory_leak` accepts as noise by default."""
RSS_SLACK_BYTES = 1 << 20
"""RSS growth (bytes, in total) ignored as allocator noise: malloc grows its arenas in steps."""
TOP_N = 10


def _loaded_torch() -> Any | None:
    """The torch module when something in this process already imported it, else None."""
    return sys.modules.get("torch")


@dataclass(frozen=True)
class NanReport:
    """What `check_nan` found.

    has_nan / has_inf:  whether any output holds NaN / ±Inf.
    first_module:       the qualified name (`net.2`) of the first torch module, in execution
                        order, whose output held NaN or Inf; None when none did or none was found.
    outputs_with_nan:   paths of the outputs holding NaN or Inf: "output", "output[0]",
                        "output['logits']".
    modules_hooked:     how many torch modules were watched (0 for a model without torch).
    """

    has_nan: bool
    has_inf: bool
    first_module: str | None
    outputs_with_nan: list[str] = field(default_factory=list)
    modules_hooked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.has_nan or self.has_inf or self.first_module)

    def __str__(self) -> str:
        kinds = " and ".join(k for k, found in (("NaN", self.has_nan), ("Inf", self.has_inf)) if found)
        text = f"{kinds} in {', '.join(self.outputs_with_nan)}" if kinds else "no NaN/Inf in the output"
        if self.first_module is not None and kinds:
            text += f"; first produced by torch module {self.first_module!r}"
        elif self.first_module is not None:
            text += f"; but torch module {self.first_module!r} produced NaN/Inf on the way"
        elif self.modules_hooked:
            text += f"; none of {self.modules_hooked} torch modules produced NaN/Inf"
        return text


def _nonfinite_flags(value: Any) -> tuple[bool, bool] | None:
    """(has NaN, has Inf) for a tensor, array or number; None for anything else (a container)."""
    torch = _loaded_torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.is_complex()):
            return False, False
        data = value.detach()
        return bool(torch.isnan(data).any()), bool(torch.isinf(data).any())
    if isinstance(value, np.ndarray | np.generic | float | complex):
        array = np.asarray(value)
        if array.dtype.kind not in "fc":
            return False, False
        return bool(np.isnan(array).any()), bool(np.isinf(array).any())
    return None


def _walk_nonfinite(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, bool, bool]]:
    """(path, has NaN, has Inf) for each tensor, array or number below `value` not all finite."""
    flags = _nonfinite_flags(value)
    if flags is not None:
        if flags[0] or flags[1]:
            yield path, flags[0], flags[1]
        return
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk_nonfinite(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk_nonfinite(item, f"{path}[{index}]", depth + 1)


def _has_nonfinite(value: Any) -> bool:
    return next(_walk_nonfinite(value, ""), None) is not None


def _torch_modules(model: object) -> list[tuple[str, Any]]:
    """The torch modules a model holds, each with its attribute name, outermost first.

    Looked for in the model's own attributes, directly or inside a list, tuple or dict, and one
    attribute further down (`self.predictor.net` for a wrapped predictor class). Submodules are
    reached from these with `named_modules()`, so the depth of the network itself is unlimited.
    """
    torch = _loaded_torch()
    if torch is None:
        return []
    module_type = torch.nn.Module
    if isinstance(model, module_type):
        return [("", model)]
    roots: list[tuple[str, Any]] = []
    for name, value in _attributes(model):
        if isinstance(value, module_type):
            roots.append((name, value))
        elif isinstance(value, list | tuple | dict):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            roots.extend((f"{name}.{k}", v) for k, v in items if isinstance(v, module_type))
        elif not isinstance(value, type):
            roots.extend(
                (f"{name}.{inner}", v) for inner, v in _attributes(value) if isinstance(v, module_type)
            )
    return roots


def _attributes(obj: object) -> list[tuple[str, Any]]:
    try:
        return list(vars(obj).items())
    except TypeError:
        return []


def check_nan(model: Model, call: Callable[[], Any]) -> NanReport:
    """Run `call()` once and report NaN/Inf in its output, and the torch module that made it first.

    Forward hooks are put on every torch module the model holds (see `_torch_modules`) and are
    removed afterwards, also when `call` raises (the exception then propagates). Modules run
    through TorchScript or `torch.compile` may not call hooks.
    """
    first: list[str] = []
    handles: list[Any] = []
    seen: set[int] = set()

    def hook_for(name: str) -> Callable[[Any, Any, Any], None]:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            if not first and _has_nonfinite(output):
                first.append(name)

        return hook

    try:
        for root_name, root in _torch_modules(model):
            for sub_name, module in root.named_modules():
                if id(module) not in seen:
                    seen.add(id(module))
                    qualified = ".".join(part for part in (root_name, sub_name) if part)
                    handles.append(module.register_forward_hook(hook_for(qualified or "model")))
        output = call()
    finally:
        for handle in handles:
            handle.remove()
    found = list(_walk_nonfinite(output, "output"))
    return NanReport(
        has_nan=any(nan for _, nan, _ in found),
        has_inf=any(inf for _, _, inf in found),
        first_module=first[0] if first else None,
        outputs_with_nan=[path for path, _, _ in found],
        modules_hooked=len(handles),
    )
