"""What a server hosts: model classes by name, their versions on disk, and each one's default."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpod.errors import InvalidInput, NotFound
from modelpod.runtime.adapters import as_model
from modelpod.runtime.model import DEFAULT_VERSION, Model, check_name
from modelpod.runtime.runner import Runner
from modelpod.types import BatchConfig
from modelpod.workers.process_runner import ProcessRunner


@dataclass
class HostedModel:
    """One served model: what to instantiate, how to run it, and which version unversioned calls use."""

    name: str
    target: Any
    probe: Model  # an unloaded instance: what every version shares (specs, signature, batching)
    runner_options: dict[str, Any] = field(default_factory=dict)
    default_version: str = DEFAULT_VERSION
    unloaded: bool = False
    batching: BatchConfig = field(default_factory=BatchConfig)
    workers: int = 0  # worker processes per loaded version; 0 runs the model on this process's threads
    query_params: bool = False  # whether its predict takes the request's query string
    memory_budget: int | None = None  # bytes its loaded versions may take together (None: no bound)


class Repository:
    """Model names -> hosted models; versions are folders under `data_path/<name>/`."""

    def __init__(
        self,
        data_path: Path | str,
        runner_options: Mapping[str, Any] | None = None,
        batching: Mapping[str, Any] | None = None,
        workers: int | None = None,
        model_timeout: float | None = None,
    ) -> None:
        self.data_path = Path(data_path)
        self.workers = workers
        self.model_timeout = model_timeout
        self.runner_options = dict(runner_options or {})
        self.batching_overrides = {k: v for k, v in (batching or {}).items() if v is not None}
        self._models: dict[str, HostedModel] = {}
        self._lock = threading.Lock()

    def add(
        self,
        target: Any,
        name: str | None = None,
        default_version: str = DEFAULT_VERSION,
        **runner_options: Any,
    ) -> HostedModel:
        """Host a Model class, a predictor class or a function under `name` (default: its own)."""
        probe = as_model(target, default_version, data_path=self.data_path)
        batching = dataclasses.replace(probe.batch_config(), **self.batching_overrides)
        hosted = HostedModel(
            name=check_name("model name", name or probe.model_name),
            target=target,
            probe=probe,
            runner_options={**self.runner_options, **runner_options, "batching": batching},
            default_version=check_name("version", default_version),
            batching=batching,
            workers=self.workers if self.workers is not None else probe.worker_processes(),
            query_params=probe.accepts_query_params(),
            memory_budget=getattr(probe, "memory_budget", None),
        )
        with self._lock:
            if hosted.name in self._models:
                raise ValueError(f"a model named {hosted.name!r} is already served; give one a name=")
            self._models[hosted.name] = hosted
        return hosted

    def names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, name: str) -> HostedModel:
        with self._lock:
            hosted = self._models.get(name)
        if hosted is None:
            served = ", ".join(self.names()) or "none"
            raise NotFound(f"model {name!r} is not served here (models: {served})")
        return hosted

    def versions(self, name: str) -> list[str]:
        """The default version, and every version initialized on disk, in a natural order."""
        hosted = self.get(name)
        folder = self.data_path / hosted.name
        on_disk = {p.parent.name for p in folder.glob("*/model_info.json")} if folder.is_dir() else set()
        return sorted(on_disk | {hosted.default_version}, key=_natural)

    def resolve(self, name: str, version: str | None) -> tuple[HostedModel, str]:
        """The hosted model and the concrete version a request means; NotFound if there is none."""
        hosted = self.get(name)
        if version is None or version == "":
            return hosted, hosted.default_version
        check_name("version", version)
        if version == hosted.default_version or (self.folder(name, version) / "model_info.json").exists():
            return hosted, version
        known = ", ".join(self.versions(name))
        raise NotFound(
            f"model {name!r} has no version {version!r} (versions: {known}); create it with initialize"
        )

    def folder(self, name: str, version: str) -> Path:
        """Where a version's files live (its model_dir), whether or not it exists yet.

        Versions come from requests: one whose folder is a symbolic link out of the model's folder
        is refused (`InvalidInput`), so that no request reads or writes outside the data path.
        """
        folder = self.data_path / name / version
        if not folder.resolve().is_relative_to((self.data_path / name).resolve()):
            raise InvalidInput(
                f"version {version!r} of model {name!r} is a link out of the model's folder; refused"
            )
        return folder

    def instance(self, hosted: HostedModel, version: str) -> Model:
        """A fresh, unloaded instance: enough to read its info and log, or to initialize it."""
        self.folder(hosted.name, version)  # refuses a version that links out of the data path
        return as_model(hosted.target, version, name=hosted.name, data_path=self.data_path)

    def runner(self, hosted: HostedModel, version: str) -> Runner | ProcessRunner:
        """A new runner for one version (the pool calls this to load it): in this process, or in workers."""
        instance = self.instance(hosted, version)
        if hosted.workers > 0:
            return ProcessRunner(instance, hosted.target, workers=hosted.workers, timeout=self.model_timeout,
                                 runner_options=hosted.runner_options)  # fmt: skip
        return Runner(instance, **hosted.runner_options)

    def set_default(self, name: str, version: str) -> None:
        self.get(name).default_version = version


def _natural(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order, then the rest alphabetically."""
    return (0, int(version)) if version.isdigit() else (1, version)
