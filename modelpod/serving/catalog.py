"""What the server says about what it serves: its own facts, each model's metadata and Triton-shaped
config, readiness, the repository index and the native listing. Read-only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from modelpod._version import __version__
from modelpod.errors import NotFound, Unavailable
from modelpod.observe.statistics import Statistics
from modelpod.runtime.batchers import Batchers
from modelpod.serving.execution import Execution
from modelpod.serving.served_pipeline import ServedPipeline
from modelpod.serving.tensors import advertised_specs
from modelpod.serving.trainer import Trainer
from modelpod.types import TensorSpec

PLATFORM = "modelpod"
EXTENSIONS = ("binary_tensor_data", "model_repository", "modelpod_native")


def platform_of(probe: object) -> str:
    """The runtime a model file is served by (`onnxruntime_onnx`, ...), else modelpod's own."""
    platform = getattr(probe, "platform", PLATFORM)
    return platform if isinstance(platform, str) else PLATFORM


class ServerFacts(NamedTuple):
    name: str
    version: str
    extensions: Sequence[str]


class ModelFacts(NamedTuple):
    name: str
    versions: Sequence[str]
    platform: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]


class Catalog:
    """Facts about the models of one repository, and their state in its pool."""

    def __init__(
        self, name: str, execution: Execution, batchers: Batchers, trainer: Trainer, statistics: Statistics
    ) -> None:
        self.name = name
        self.execution = execution
        self.repository = execution.repository
        self.pool = execution.pool
        self.batchers = batchers
        self.trainer = trainer
        self.statistics = statistics

    def server_facts(self) -> ServerFacts:
        """What the server says of itself; the edges give it the protocol's shape."""
        return ServerFacts(self.name, __version__, EXTENSIONS)

    def model_facts(self, name: str, version: str | None = None) -> ModelFacts:
        """What a model (one version, or all of them) says of itself, for the metadata calls."""
        hosted, resolved = self.repository.resolve(name, version)
        versions = [resolved] if version else self.repository.versions(name)
        return ModelFacts(hosted.name, versions, platform_of(hosted.probe), *advertised_specs(hosted.probe))

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The model's configuration in Triton's shape (what `tritonclient`'s get_model_config reads)."""
        hosted, _ = self.repository.resolve(name, version)
        batching = hosted.batching
        inputs, outputs = advertised_specs(hosted.probe)
        config: dict[str, Any] = {
            "name": hosted.name,
            "platform": platform_of(hosted.probe),
            "backend": "python",
            "max_batch_size": batching.max_batch_size if batching.enabled else 0,
            "input": [_config_tensor(spec) for spec in inputs],
            "output": [_config_tensor(spec) for spec in outputs],
        }
        if batching.enabled:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": round(batching.max_batch_delay_ms * 1000),
                "preferred_batch_size": list(batching.preferred_batch_sizes),
                "default_queue_policy": {"max_queue_size": batching.max_queue_size},
            }
        return config

    def model_statistics(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The statistics extension's document for one version, or every version of a model."""
        hosted, resolved = self.repository.resolve(name, version)
        versions = [resolved] if version else self.repository.versions(name)
        return self.statistics.document(hosted.name, versions)

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Loaded without error (or not tried yet); a pipeline when every model of its steps is ready."""
        try:
            hosted, resolved = self.execution.available(name, version)
        except (NotFound, Unavailable):
            return False
        if isinstance(hosted.probe, ServedPipeline):
            return all(self.model_ready(step) for step in hosted.probe.models())
        return (hosted.name, resolved) not in self.pool.load_errors

    def load_error(self, name: str, version: str | None = None) -> str | None:
        """Why a version failed to load, while it stays unloaded; None when it loaded (or was never tried)."""
        hosted, resolved = self.repository.resolve(name, version)
        return self.pool.load_errors.get((hosted.name, resolved))

    def repository_index(self) -> list[dict[str, Any]]:
        index = []
        for name in self.repository.names():
            hosted = self.repository.get(name)
            for version in self.repository.versions(name):
                key = (name, version)
                broken = self.pool.load_errors.get(key) or self.repository.version_error(name, version)
                state = "UNAVAILABLE" if hosted.unloaded or broken else "READY"
                reason = "unloaded" if hosted.unloaded else broken or ""
                index.append({"name": name, "version": version, "state": state, "reason": reason})
        return index

    def models(self) -> list[dict[str, Any]]:
        """Every served model with its versions, default and what is loaded (the native listing)."""
        return [self.describe(name) for name in self.repository.names()]

    def describe(self, name: str) -> dict[str, Any]:
        hosted = self.repository.get(name)
        loaded = set(self.pool.loaded())
        document = {
            "name": name,
            "default_version": hosted.default_version,
            "versions": [self._describe_version(name, v, loaded) for v in self.repository.versions(name)],
            "available": not hosted.unloaded,
            "batching": hosted.batching.as_dict(),
        }
        if hosted.default_error is not None:
            document["default_error"] = hosted.default_error
        return document

    def _describe_version(self, name: str, version: str, loaded: set[tuple[str, str]]) -> dict[str, Any]:
        """One version's entry in a listing. What is wrong with its files (a damaged file, a link out
        of the data path) is its `error`: one bad version never fails the listing of the others."""
        entry: dict[str, Any] = {
            "version": version,
            "loaded": (name, version) in loaded,
            "batch_sizes": self.batchers.batch_sizes((name, version)),
            "training": None,
            "load_error": self.pool.load_errors.get((name, version)),
        }
        error = self.repository.version_error(name, version)
        if error is None:
            entry["training"] = self.trainer.job(name, version)
            if entry["training"] is None:
                error = self.trainer.problem(name, version)
        if error is not None:
            entry["error"] = error
        return entry


def _config_tensor(spec: TensorSpec) -> dict[str, Any]:
    datatype = "STRING" if spec.datatype == "BYTES" else spec.datatype
    return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": list(spec.shape)}
