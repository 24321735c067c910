"""modelpod: turn a plain Python model class into a production model service."""

from modelpod.errors import (
    Conflict,
    InvalidInput,
    ModelError,
    ModelLoadError,
    ModelpodError,
    NotFound,
    ProcessorError,
    Timeout,
    Unavailable,
)
from modelpod.model import Model, as_model
from modelpod.pipeline import Pipeline
from modelpod.runner import Runner
from modelpod.types import Response, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "Conflict",
    "InvalidInput",
    "Model",
    "ModelError",
    "ModelLoadError",
    "ModelpodError",
    "NotFound",
    "Pipeline",
    "ProcessorError",
    "Response",
    "Runner",
    "TensorSpec",
    "Timeout",
    "Unavailable",
    "__version__",
    "as_model",
]

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = "modelpod"  # reprs and tracebacks show modelpod.Model, the public path
