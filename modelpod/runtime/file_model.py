"""The base of every runtime that serves a model file: a tensor model whose inputs and outputs come
from the file, not from a class someone wrote.

A runtime (ONNX, scikit-learn, ...) says what the file takes and answers (`describe`) and runs it
(`setup`, `run`). A user adds pre- or post-processing by subclassing the runtime:

    class Iris(SklearnModel):
        model_file = "iris.joblib"          # or give path= when creating it

        def postprocess(self, outputs):
            outputs["predict"] = outputs["predict"] + 1
            return outputs

and serves it like any class (`modelpod serve iris.py:Iris --allow-pickle`). A subclass whose
processing changes the tensors overrides `input_specs` / `output_specs` as well, so that the
metadata stays exact.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelpod.errors import ModelLoadError
from modelpod.runtime.model import DEFAULT_VERSION, Model
from modelpod.types import BatchConfig, TensorSpec

Arrays = dict[str, np.ndarray[Any, Any]]
STORED_FILE = "model_file"  # the config key naming a Store version's file (registry/file_artifacts.py)
BATCH_OPTIONS: dict[str, type[int] | type[float]] = {"max_batch_size": int, "max_batch_delay_ms": float,
                                                     "max_queue_size": int}  # fmt: skip


@dataclass(frozen=True)
class Description:
    """What a model file takes and answers, and whether requests can be stacked into one call."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batchable: bool


def name_of_file(path: Path) -> str:
    """The model name a file is served under by default: its stem, made a valid name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip("-.") or "model"
    return name[:128]


class FileModel(Model):
    """A model served from a file. Subclasses implement `describe`, `setup` and `run`."""

    runtime_name: ClassVar[str] = "file"
    platform: ClassVar[str] = (
        "modelpod"  # what V2 metadata calls the runtime (Triton's names where it has one)
    )
    model_file: ClassVar[str | None] = None  # the file, for a subclass that always serves the same one
    default_max_batch_size: ClassVar[int] = 32  # when the file allows stacking requests
    default_batch_delay_ms: ClassVar[float] = 2.0

    def __init__(
        self,
        version: str = DEFAULT_VERSION,
        *,
        path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        chosen = path if path is not None else self.model_file
        if chosen is not None:
            kwargs.setdefault("name", self.name or name_of_file(Path(chosen)))
        super().__init__(version, **kwargs)
        stored = self.config.get(STORED_FILE)  # a version the Store laid out: the file is in its folder
        if chosen is None and stored is None:
            raise ValueError(f"{type(self).__name__} needs a model file: pass path=, or set model_file")
        folder = self.data_path / self.model_name / self.version
        self.path = Path(chosen) if chosen is not None else folder / str(stored)
        if not self.path.exists():
            raise ModelLoadError(f"no such model file: {self.path}")
        self.description = self.describe()

    # -- what a runtime implements ----------------------------------------------------------------

    def describe(self) -> Description:
        """The file's inputs and outputs; called once per instance, before `setup`."""
        raise NotImplementedError

    def run(self, inputs: Arrays) -> Arrays:
        """Run the loaded file on a batch of inputs (batch first) -> its outputs by name."""
        raise NotImplementedError

    # -- what a user may override ------------------------------------------------------------------

    def preprocess(self, inputs: Arrays) -> Arrays:
        """The request's tensors -> the file's inputs. Unchanged by default."""
        return inputs

    def postprocess(self, outputs: Arrays) -> Arrays:
        """The file's outputs -> the answer's tensors. Unchanged by default."""
        return outputs

    # -- the model contract --------------------------------------------------------------------------

    def predict(self, **inputs: Any) -> Arrays:
        return self.postprocess(self.run(self.preprocess(inputs)))

    def input_specs(self) -> tuple[TensorSpec, ...]:
        return self.description.inputs

    def output_specs(self) -> tuple[TensorSpec, ...]:
        return self.description.outputs

    def is_tensor_model(self) -> bool:
        return True

    def batch_config(self) -> BatchConfig:
        """Batching on when every input and output is batch first with a free first dimension; the
        options `max_batch_size`, `max_batch_delay_ms`, `max_queue_size` (a config file's
        `batching:`, or runtime options) choose otherwise."""
        chosen: dict[str, Any] = {
            key: kind(self.config[key]) for key, kind in BATCH_OPTIONS.items() if key in self.config
        }
        if not self.description.batchable or self.max_batch_size > 1:
            config = super().batch_config()  # a subclass's own max_batch_size wins
        else:
            config = BatchConfig(
                max_batch_size=self.default_max_batch_size,
                max_batch_delay_ms=self.default_batch_delay_ms,
                max_queue_size=self.max_queue_size,
            )
        if chosen.get("max_batch_size", 1) > 1 and not (self.description.batchable or self.has_batch()):
            raise ModelLoadError(
                f"{self.path}: its inputs and outputs have no free first dimension to batch on"
            )
        return dataclasses.replace(config, **chosen)

    def worker_processes(self) -> int:
        """The option `workers` (worker processes for this file), else the class's."""
        return int(self.config["workers"]) if "workers" in self.config else super().worker_processes()

    def source(self) -> Any:
        return type(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.model_name}:{self.version} {self.path.name}>"


def batch_first(specs: tuple[TensorSpec, ...]) -> bool:
    """Whether every spec has a first dimension of any size, which stacking requests fills."""
    return all(len(spec.shape) >= 1 and spec.shape[0] < 0 for spec in specs)


class Handoff:
    """What describing a file loaded, handed to the first `setup` of the same file, so that a file
    is read once for its metadata and its load: one object at a time, for `seconds` at most (then
    dropped, so that a server whose models run in worker processes does not keep it)."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds
        self._lock = threading.Lock()
        self._key: Any = None
        self._value: Any = None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._key, self._value = key, value
        timer = threading.Timer(self.seconds, self._drop, args=(key,))
        timer.daemon = True
        timer.start()

    def take(self, key: Any) -> Any:
        """The object put under `key`, once; None when there is none (load it then)."""
        with self._lock:
            if self._key != key:
                return None
            value, self._key, self._value = self._value, None, None
            return value

    def _drop(self, key: Any) -> None:
        with self._lock:
            if self._key == key:
                self._key = self._value = None


HANDOFF = Handoff()


def file_key(path: Path) -> tuple[str, tuple[int, int]]:
    """A file (or a folder's marker file) as it is now: its path and (mtime, size)."""
    status = path.stat()
    return str(path.resolve()), (status.st_mtime_ns, status.st_size)
