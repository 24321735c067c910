"""What a server hosts: model classes by name, their versions on disk, and each one's default."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpod.errors import InvalidInput, ModelLoadError, ModelpodError, NotFound
from modelpod.runtime.adapters import as_model
from modelpod.runtime.model import DEFAULT_VERSION, Model, check_name
from modelpod.runtime.runner import Runner
from modelpod.runtime.state_files import DamagedState, read_json, remove_stale_temporaries, write_json
from modelpod.types import BatchConfig
from modelpod.workers.process_runner import ProcessRunner

logger = logging.getLogger("modelpod.serving.repository")

DEFAULT_FILE = "default.json"  # in the model's folder: the default version a server switched to


@dataclass
class HostedModel:
    """One served model: what to instantiate, how to run it, and which version unversioned calls use."""

    name: str
    target: Any
    probe: Model  # an unloaded instance: what every version shares (specs, signature, batching)
    runner_options: dict[str, Any] = field(default_factory=dict)
    default_version: str = DEFAULT_VERSION
    configured_default: str = DEFAULT_VERSION  # the one it was added with: a version even without a folder
    default_error: str | None = None  # why the saved default could not be restored, if it could not
    unloaded: bool = False
    batching: BatchConfig = field(default_factory=BatchConfig)
    workers: int = 0  # worker processes per loaded version; 0 runs the model on this process's threads
    query_params: bool = False  # whether its predict takes the request's query string
    awaits: bool = False  # whether its predict is `async def` (awaited on the event loop)
    inlines: bool = False  # whether a lone request may be computed on the event loop (serving/inline.py)
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
        named = {"name": name} if name else {}  # the probe reads the served name's default version
        probe = as_model(target, default_version, data_path=self.data_path, **named)
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
            awaits=probe.awaits(),
            inlines=not (probe.awaits() or probe.is_streaming()),
            memory_budget=getattr(probe, "memory_budget", None),
        )
        hosted.configured_default = hosted.default_version
        with self._lock:
            if hosted.name in self._models:
                raise ValueError(f"a model named {hosted.name!r} is already served; give one a name=")
            self._models[hosted.name] = hosted
        remove_stale_temporaries(self.data_path / hosted.name)
        self._restore_default(hosted)
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
        """The default version, the one the model was added with, and every version initialized on
        disk, in a natural order. Switching the default removes none of them."""
        hosted = self.get(name)
        folder = self.data_path / hosted.name
        on_disk = set()
        if folder.is_dir():
            on_disk = {p.parent.name for p in folder.glob("*/model_info.json") if _is_name(p.parent.name)}
        return sorted(on_disk | {hosted.default_version, hosted.configured_default}, key=_natural)

    def resolve(self, name: str, version: str | None) -> tuple[HostedModel, str]:
        """The hosted model and the concrete version a request means; NotFound if there is none."""
        hosted = self.get(name)
        if version is None or version == "":
            return hosted, hosted.default_version
        check_name("version", version)
        if version in (hosted.default_version, hosted.configured_default):
            return hosted, version
        if (self.folder(name, version) / "model_info.json").exists():
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
        check_name("model name", name)  # before any filesystem call: a NUL or a '..' goes no further
        check_name("version", version)
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
        if instance.info_error is not None:  # never serve it with a config other than the one recorded
            raise ModelLoadError(
                f"version {version!r} of model {hosted.name!r} cannot be loaded: {instance.info_error}; "
                "initialize it again to rewrite it"
            )
        if hosted.workers > 0:
            return ProcessRunner(instance, hosted.target, workers=hosted.workers, timeout=self.model_timeout,
                                 runner_options=hosted.runner_options)  # fmt: skip
        return Runner(instance, **hosted.runner_options)

    def version_error(self, name: str, version: str) -> str | None:
        """Why a listed version cannot be used (a link out of the data path, a damaged
        model_info.json); None when nothing is known to be wrong with it."""
        try:
            info_file = self.folder(name, version) / "model_info.json"
            if not isinstance(read_json(info_file), dict | None):
                raise DamagedState(f"{info_file} is damaged: it holds no JSON object")
        except ModelpodError as error:
            return str(error)
        return None

    def set_default(self, name: str, version: str) -> None:
        """Make `version` the default, and save the choice beside the model's versions: a restarted
        server (or another replica sharing the data path) starts with it."""
        hosted = self.get(name)
        check_name("version", version)
        saved = {"version": version, "configured": hosted.configured_default}
        write_json(self.data_path / hosted.name / DEFAULT_FILE, saved)
        hosted.default_version, hosted.default_error = version, None

    def _restore_default(self, hosted: HostedModel) -> None:
        """The default saved by `set_default`, unless the server now starts with another configured
        default (someone chose again since) or the saved one is unreadable (then: logged, and listed
        with the model as `default_error`)."""
        path = self.data_path / hosted.name / DEFAULT_FILE
        try:
            saved = read_json(path)
            if saved is None:
                return
            if not isinstance(saved, dict) or not isinstance(saved.get("version"), str):
                raise DamagedState(f"{path} is damaged: it holds no version")
            version = check_name("version", saved["version"])
        except ModelpodError as error:
            hosted.default_error = f"the saved default version was not restored: {error}"
            logger.warning("%s: %s", hosted.name, hosted.default_error)
            return
        if saved.get("configured", hosted.configured_default) == hosted.configured_default:
            hosted.default_version = version


def _is_name(text: str) -> bool:
    try:
        check_name("version", text)
    except InvalidInput:
        return False
    return True


def _natural(version: str) -> tuple[int, int | str]:
    """Numeric versions in numeric order, then the rest alphabetically."""
    return (0, int(version)) if version.isdigit() else (1, version)
