"""The model contract: what a user writes, and adapters that give plain classes and functions its shape.

A model is a class with `predict`. Everything else is optional:

    class Sentiment(Model):
        def setup(self): ...                  # load weights; self.config holds the initialize() arguments
        def predict(self, text: str): ...     # one request; keyword arguments are the request's fields
        def predict_batch(self, items): ...   # a list of requests -> a list of results, same order
        def train(self, **options): ...       # report progress with self.report(step=, total=, **metrics)
        def teardown(self): ...               # free what setup took

A `predict` that yields (a generator, sync or async) streams: each item reaches the client as it is
produced. A streaming `predict_batch` yields `(request index, item)` pairs for a whole batch.

An *instance* is the class plus a version: its own `config`, `model_dir` and `model_info`, found
again on disk when the same name and version are created later.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import threading
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import InvalidInput
from modelpod.runtime.state_files import DamagedState, read_json, write_json
from modelpod.runtime.storable import check_arguments
from modelpod.types import BatchConfig, TensorSpec, tensor_specs

DATA_PATH_ENV = "MODELPOD_DATA_PATH"
DEFAULT_DATA_PATH = "appdata"
DEFAULT_VERSION = "1"
RESERVED_BYTES_ARGUMENT = "binary_data"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


ServeHook = Callable[[type, tuple[Any, ...], dict[str, Any]], Any]


def _no_registry(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    raise RuntimeError("serve=True needs modelpod's registry, which `import modelpod` installs")


_serve_hook: ServeHook = _no_registry


def install_serve_hook(hook: ServeHook) -> None:
    """What `MyModel(..., serve=True)` returns is made by `hook`: the registry's `RemoteModel`, installed
    by the package face, so that the contract itself never imports the registry above it."""
    global _serve_hook
    _serve_hook = hook


class _StreamEnd:
    def __repr__(self) -> str:
        return "modelpod.STREAM_END"


STREAM_END: Any = _StreamEnd()
"""What a streaming `predict_batch` yields as `(index, STREAM_END)` when request `index` has all its
items: that request's stream ends there, while the others go on."""


def check_name(kind: str, value: str) -> str:
    """Names become folder names: refuse anything that could escape the data path."""
    if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value) or ".." in value:
        raise InvalidInput(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def default_data_path() -> Path:
    return Path(os.environ.get(DATA_PATH_ENV, DEFAULT_DATA_PATH))


class Model:
    """Base class of a modelpod model. Subclass it and write `predict`.

    Class attributes a model may set:
      name:    the name it is served under (default: the class name)
      inputs:  tensor inputs for the Open Inference Protocol (derived from `predict` when empty)
      outputs: tensor outputs (one output named "output" when empty)
      example: keyword arguments of a typical request, used to warm the model up
      max_batch_size, max_batch_delay_ms, max_queue_size, preferred_batch_sizes:
               dynamic batching (see modelpod.runtime.batching); max_batch_size 1, the default, is none
      isolation, workers: "process" runs a server's copies of the model in `workers` processes
      memory_budget: bytes a server's loaded versions of the model may take together; before a
               load would pass it, the least recently used versions are evicted (see modelpod.serving.pool)
    """

    name: ClassVar[str | None] = None
    inputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = ()
    outputs: ClassVar[Sequence[TensorSpec | Mapping[str, Any]]] = ()
    example: ClassVar[Mapping[str, Any] | None] = None
    max_batch_size: ClassVar[int] = 1
    max_batch_delay_ms: ClassVar[float] = 0.0
    max_queue_size: ClassVar[int] = 1024
    preferred_batch_sizes: ClassVar[Sequence[int]] = ()
    isolation: ClassVar[str] = "thread"  # or "process": run in `workers` processes of their own
    workers: ClassVar[int] = 1
    memory_budget: ClassVar[int | None] = None

    def __new__(cls, *args: Any, serve: bool = False, **kwargs: Any) -> Any:
        """`MyModel(k=3, serve=True)` gives a `RemoteModel` standing for the model, not the model."""
        if serve:
            return _serve_hook(cls, args, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        *,
        name: str | None = None,
        data_path: str | os.PathLike[str] | None = None,
        serve: bool = False,
        **config: Any,
    ) -> None:
        self.model_name = check_name("model name", name or self.default_name())
        self.version = check_name("version", str(version))
        self.data_path = Path(data_path) if data_path is not None else default_data_path()
        self.device = "cpu"
        self._log_lock = threading.Lock()
        self._log: list[dict[str, Any]] | None = None
        self.info_error: str | None = None  # why model_info.json could not be read, if it could not
        try:
            stored = self.model_info.get("config", {})
        except DamagedState as error:  # the instance still exists: initialize() can rewrite the file
            self.info_error, stored = str(error), {}
        self.config: dict[str, Any] = {**stored, **config}

    @classmethod
    def default_name(cls) -> str:
        return cls.name or cls.__name__

    # -- the methods a user overrides ------------------------------------------------------

    def setup(self) -> None:
        """Load what `predict` needs (weights from `model_dir`, say). Called once before use."""

    def predict(self, *args: Any, **inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define predict()")

    def teardown(self) -> None:
        """Free what `setup` took. Called when the instance is unloaded."""

    # -- what the framework provides ------------------------------------------------------

    @property
    def model_dir(self) -> Path:
        """This instance's own folder, under the data path, per model name and version."""
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    @property
    def _folder(self) -> Path:
        """Where this instance's files live, whether or not the folder exists yet."""
        return self.data_path / self.model_name / self.version

    @property
    def _info_file(self) -> Path:
        return self._folder / "model_info.json"

    @property
    def model_info(self) -> dict[str, Any]:
        """What `initialize` recorded: the config, the class, and when; {} before the first call."""
        info = read_json(self._info_file)
        if info is None:
            return {}
        if not isinstance(info, dict):
            raise DamagedState(f"{self._info_file} is damaged: it holds no JSON object")
        return info

    def initialize(self, **config: Any) -> dict[str, Any]:
        """Record `config` as this instance's configuration, on disk, and return the model info."""
        check_arguments(config, "initialize() arguments")
        now = time.time()
        try:
            created = self.model_info.get("created_at", now)
        except DamagedState:  # initialize is how a damaged file is mended
            created = now
        info = {
            "name": self.model_name,
            "version": self.version,
            "class": class_path(self.source()),
            "config": config,
            "created_at": created,
            "updated_at": now,
        }
        write_json(self._info_file, info)
        self.config, self.info_error = dict(config), None
        return info

    def report(
        self,
        step: int | None = None,
        total: int | None = None,
        message: str | None = None,
        **metrics: Any,
    ) -> None:
        """Record training progress; `log()` returns what was reported, in order."""
        entry: dict[str, Any] = {"time": time.time(), "step": step, "total": total}
        if message is not None:
            entry["message"] = message
        entry["metrics"] = {k: _plain(v) for k, v in metrics.items()}
        line = json.dumps(entry)
        with self._log_lock:
            self._entries().append(entry)
            with (self.model_dir / "log.jsonl").open("a") as file:
                file.write(line + "\n")

    def log(self) -> list[dict[str, Any]]:
        """Everything `report` recorded for this instance, across restarts, oldest first."""
        with self._log_lock:
            return list(self._entries())

    def _entries(self) -> list[dict[str, Any]]:
        if self._log is None:
            path = self._folder / "log.jsonl"
            lines = path.read_text().splitlines() if path.exists() else []
            self._log = [entry for entry in map(_log_entry, lines) if entry is not None]
        return self._log

    # -- introspection the runner and the server use -------------------------------------------

    def signature_target(self) -> Callable[..., Any]:
        """The callable whose parameters define the request fields."""
        return self.predict

    def source(self) -> Any:
        """What the user wrote: the class or function this instance runs."""
        return type(self)

    def batch_config(self) -> BatchConfig:
        """How this model wants requests batched, from its class attributes."""
        return BatchConfig(
            max_batch_size=self.max_batch_size,
            max_batch_delay_ms=self.max_batch_delay_ms,
            max_queue_size=self.max_queue_size,
            preferred_batch_sizes=tuple(self.preferred_batch_sizes),
        )

    def worker_processes(self) -> int:
        """How many worker processes a server runs this model in; 0 for its own threads."""
        if self.isolation not in ("thread", "process"):
            raise ValueError(
                f"{type(self).__name__}.isolation must be 'thread' or 'process', not {self.isolation!r}"
            )
        return max(self.workers, 1) if self.isolation == "process" else 0

    def has_batch(self) -> bool:
        return callable(getattr(self, "predict_batch", None))

    def has_train(self) -> bool:
        return callable(getattr(self, "train", None))

    def is_streaming(self) -> bool:
        """Whether `predict` yields its answer item by item (a generator, sync or async)."""
        return yields(self.signature_target())

    def awaits(self) -> bool:
        """Whether `predict` is a coroutine (`async def`, not a generator). A server awaits it on its
        event loop, with no thread in between: for cheap or waiting code, never for long compute."""
        return inspect.iscoroutinefunction(self.signature_target())

    def streams_batches(self) -> bool:
        """Whether `predict_batch` is a generator of `(request index, item)` pairs (see STREAM_END)."""
        return self.has_batch() and inspect.isgeneratorfunction(getattr(self, "predict_batch"))  # noqa: B009

    def accepts_query_params(self) -> bool:
        """Whether `predict` takes the request's query string (as `query_params`)."""
        return "query_params" in inspect.signature(self.signature_target()).parameters

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return tensor_specs(self.inputs) or derive_input_specs(self.signature_target())

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return tensor_specs(self.outputs) or (TensorSpec("output", "BYTES", (-1,)),)

    def is_tensor_model(self) -> bool:
        """True when the model declared tensors: it then receives numpy arrays, batch first."""
        return bool(self.inputs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_name}:{self.version}>"


# -- adapters: plain predictor classes and functions --------------------------------------------


# -- helpers ------------------------------------------------------------------------------------

_HINT_DATATYPES: dict[Any, str] = {
    str: "BYTES",
    bytes: "BYTES",
    bool: "BOOL",
    int: "INT64",
    float: "FP64",
    np.ndarray: "FP32",
}


def derive_input_specs(target: Callable[..., Any]) -> tuple[TensorSpec, ...]:
    """Tensor specs from a callable's parameters and type hints (BYTES where nothing fits)."""
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to no hints
        hints = {}
    specs = []
    for param in inspect.signature(target).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name == "self":
            continue
        hint = hints.get(param.name)
        origin = typing.get_origin(hint) or hint
        datatype = _HINT_DATATYPES.get(origin, "BYTES")
        shape: tuple[int, ...] = (-1,)  # one value per request, a batch of them
        if origin in (list, tuple, Sequence, np.ndarray):
            args = typing.get_args(hint)
            datatype = _HINT_DATATYPES.get(args[0], "FP64") if args else datatype
            shape = (-1, -1)  # one sequence per request
        specs.append(TensorSpec(param.name, datatype, shape))
    return tuple(specs)


def class_path(target: Any) -> str:
    """`module:QualifiedName` of a class or function, the form `modelpod serve` accepts."""
    return f"{target.__module__}:{target.__qualname__}"


def yields(function: Any) -> bool:
    """Whether calling `function` gives a generator (sync or async): its answer is a stream."""
    return inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)


def _log_entry(line: str) -> dict[str, Any] | None:
    """One line of log.jsonl; None for a blank one, or one a killed process left half-written
    (the entries before and after it are still the log)."""
    try:
        entry = json.loads(line) if line.strip() else None
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _plain(value: Any) -> Any:
    """Metrics reach JSON: numpy scalars become Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    return value
