"""modelpod: turn a plain Python model class into a production model service."""

from typing import TYPE_CHECKING, Any

from modelpod._version import __version__
from modelpod.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    ModelError,
    ModelLoadError,
    ModelpodError,
    NotFound,
    ProcessorError,
    RateLimited,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from modelpod.runtime.adapters import as_model
from modelpod.runtime.model import STREAM_END, Model, install_serve_hook
from modelpod.runtime.onnx_runtime import OnnxModel
from modelpod.runtime.pipeline import Pipeline
from modelpod.runtime.runner import Runner
from modelpod.runtime.sklearn_runtime import SklearnModel
from modelpod.serving.router import Router
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.types import Response, TensorSpec

if TYPE_CHECKING:
    from modelpod.client import AsyncClient, Client
    from modelpod.registry.remote import RemoteModel
    from modelpod.registry.store import Store

# Parts that need an extra are imported on first use: `import modelpod` needs numpy alone.
_LAZY = {  # name: (module, the extra it needs)
    "Client": ("modelpod.client", "client"),
    "AsyncClient": ("modelpod.client", "client"),
    "Store": ("modelpod.registry.store", "store"),
    "RemoteModel": ("modelpod.registry.remote", "client"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        from modelpod.extras import needs_extra

        module, extra = _LAZY[name]
        with needs_extra(extra, f"modelpod.{name}"):
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'modelpod' has no attribute {name!r}")


def _serve_remotely(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    from modelpod.registry.remote import RemoteModel

    return RemoteModel.from_constructor(cls, args, kwargs)


install_serve_hook(_serve_remotely)


def serve(*targets: Any, **settings: Any) -> None:
    """Serve models over HTTP and gRPC until SIGINT or SIGTERM: `modelpod.serve(MyModel, http_port=8080)`.

    Needs the server extra: `pip install "modelpod[server]"`. Settings are those of `modelpod serve`.
    """
    from modelpod.extras import needs_extra

    with needs_extra("server", "modelpod.serve()"):
        from modelpod.server.app import serve as serve_forever

    serve_forever(*targets, **settings)


__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidInput",
    "Model",
    "ModelError",
    "ModelLoadError",
    "ModelpodError",
    "NotFound",
    "OnnxModel",
    "Pipeline",
    "ProcessorError",
    "RateLimited",
    "RemoteModel",
    "Response",
    "Router",
    "Runner",
    "STREAM_END",
    "ServedPipeline",
    "SklearnModel",
    "Store",
    "TensorSpec",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "__version__",
    "as_model",
    "serve",
]

for _name in __all__:
    if _name in _LAZY:
        continue
    _obj = globals()[_name]
    if hasattr(_obj, "__module__") and not isinstance(_obj, str):
        _obj.__module__ = "modelpod"  # reprs and tracebacks show modelpod.Model, the public path
