"""A model repository: a folder of model files served by name and version, polled for changes.

    models/
      iris/1/model.onnx          NAME/VERSION/<file or folder>  (Triton's layout; VERSION a number)
      iris/2/model.onnx
      minilm/                    NAME/<model folder>            (one version, 1)
      scorer.pt2                 <file>                         (named by its stem, version 1)

A version folder holds one model: the folder itself when it is a model folder (transformers,
MLflow, sentence-transformers), else the first file in it (by name) whose format modelpod knows;
declarations (`*.json` sidecars), settings and hidden files are not models. The highest version
is the default. `NAME/modelpod.yaml`, when there, says how the model's files are served (runtime,
options, batching, workers, a processing class: see `runtime/file_settings.py`); a mistake in it
stops the server from starting, or, while polling, leaves the model as it was (logged). Batching
and workers are read when the model is added. The server's `--runtime` and `--runtime-option`
apply to every model; its settings file's `runtime` and `options` win over them. A processing
class is code the repository brings (`NAME/scaling.py:Scaled`) or names: importing it runs it, so,
like a pickle, it is refused unless the server trusts the repository (`--allow-pickle`).

Each model is hosted as a `VersionedFiles` target; its versions are laid out under the data path
(`model_info.json`, as the Store's versions are), so versions, listings and the repository
extension work as for any model. Polling (`--repository-poll SECONDS`) compares the folder with
what it last saw and goes through the service's own paths: a new model is added and loaded; a new
version is loaded and, when higher, becomes the default (requests in flight finish on the old one);
a removed version stops being listed and is unloaded after its requests in flight; a changed file
is reloaded; a removed model is unloaded (requests get 503) until it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelpod.runtime.file_model import name_of_file
from modelpod.runtime.file_settings import file_settings, mapping
from modelpod.runtime.formats import ModelFile, VersionedFiles, detect, model_file
from modelpod.runtime.state_files import write_json
from modelpod.serving.repository import Repository

logger = logging.getLogger("modelpod.serving.repository_watch")

SETTINGS_FILE = "modelpod.yaml"  # NAME/modelpod.yaml: how the model's files are served
_NOT_MODELS = (".json", ".yaml", ".yml")  # declarations and settings beside the models
Stamp = tuple[int, int]  # the newest mtime and total size of a file or of a folder's files
REMOVAL_GRACE_SECONDS = 0.5  # between a removed version's last listing and its unloading


@dataclass(frozen=True)
class Seen:
    file: ModelFile
    stamp: Stamp


def stamp_of(path: Path) -> Stamp:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    stats = [f.stat() for f in files]
    return max((s.st_mtime_ns for s in stats), default=0), sum(s.st_size for s in stats)


def _model_in(folder: Path) -> Path | None:
    """The model a version folder holds: itself, when a format recognises it, else its first file
    (by name) that one does."""
    if _recognised(folder):
        return folder
    for entry in sorted(folder.iterdir()):
        if not entry.name.startswith(".") and entry.suffix not in _NOT_MODELS and _recognised(entry):
            return entry
    return None


def _recognised(path: Path) -> bool:
    try:
        detect(path)
    except ValueError:
        return False
    return True


def scan(root: Path) -> dict[str, dict[str, Path]]:
    """Model name -> version -> the model file or folder, as the repository holds them now."""
    found: dict[str, dict[str, Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.suffix in _NOT_MODELS:
            continue
        if entry.is_dir() and not _recognised(entry):
            versions = {v.name: _model_in(v) for v in entry.iterdir() if v.is_dir() and v.name.isdigit()}
            chosen = {version: path for version, path in versions.items() if path is not None}
            if chosen:
                found[_name(entry)] = chosen
        elif _recognised(entry):
            found[_name(entry)] = {"1": entry}
    return found


def _name(entry: Path) -> str:
    """A file is named by its stem; a folder by its whole name (`bert.v2` stays `bert.v2`)."""
    return name_of_file(entry if entry.is_file() else entry.with_name(entry.name + ".dir"))


def latest(versions: dict[str, Any]) -> str:
    return max(versions, key=int)


class RepositoryWatch:
    """Serves a model repository's folder, and follows its changes while polling."""

    def __init__(
        self,
        root: Path,
        repository: Repository,
        allow_pickle: bool,
        options: dict[str, Any],
        runtime: str | None = None,
    ) -> None:
        if not root.is_dir():
            raise ValueError(f"--repository {root}: no such folder")
        self.root = root
        self.repository = repository
        self.allow_pickle = allow_pickle
        self.options = options  # the server's --runtime-option, below a settings file's
        self.runtime = runtime  # the server's --runtime, below a settings file's
        self.seen: dict[str, dict[str, Seen]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- what is there -----------------------------------------------------------------------------

    def settings(self, name: str) -> tuple[str | None, dict[str, Any]]:
        """The model's settings file (runtime, options, batching, workers, processing) over the
        server's; ValueError naming the file and the field for a mistake."""
        path = self.root / name / SETTINGS_FILE
        if not path.is_file():
            return self.runtime, dict(self.options)
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not YAML: {error}".replace("\n", " ")) from None
        runtime, options = file_settings(mapping(str(path), document), str(path), path.parent)
        if "processing" in options and not self.allow_pickle:
            raise ValueError(
                f"{path}.processing: importing {options['processing']} runs code the repository names: "
                "pass --allow-pickle if you trust the repository"
            )
        return runtime or self.runtime, {**self.options, **options}

    def _files(self, name: str, versions: dict[str, Path]) -> dict[str, Seen]:
        """The versions whose files can be served; one that cannot is logged and left out."""
        files = {}
        runtime, options = self.settings(name)
        for version, path in versions.items():
            try:
                files[version] = Seen(model_file(path, runtime, self.allow_pickle, **options), stamp_of(path))
            except ValueError as error:
                if str(error).startswith("processing:"):  # the settings file's mistake, not the file's
                    raise ValueError(f"{self.root / name / SETTINGS_FILE}.{error}") from None
                logger.error("repository %s: %s/%s not served: %s", self.root, name, version, error)
            except (PermissionError, OSError) as error:
                logger.error(
                    "repository %s: %s/%s not served: %s", self.root, path.parent.name, version, error
                )
        return files

    def add_all(self) -> None:
        """Host every model the folder holds now (before the server starts)."""
        for name, versions in scan(self.root).items():
            self._add(name, self._files(name, versions))

    def _add(self, name: str, files: dict[str, Seen]) -> bool:
        if not files:
            return False
        for version, seen in files.items():
            self._lay_out(name, version, seen.file)
        target = VersionedFiles(self.root / name, "versions", files={v: s.file for v, s in files.items()})
        try:
            self.repository.add(target, name=name, default_version=latest(files))
        except Exception as error:  # a file that cannot be described must not stop the others
            logger.error("repository %s: model %s not served: %s", self.root, name, error)
            return False
        self.seen[name] = files
        return True

    def _lay_out(self, name: str, version: str, file: ModelFile) -> None:
        """Record the version under the data path, as the Store does, so that it is listed."""
        info = self.repository.folder(name, version) / "model_info.json"
        if not info.exists():
            now = time.time()
            write_json(info, {"name": name, "version": version, "class": f"{file.runtime} file {file.path}",
                              "config": {}, "created_at": now, "updated_at": now})  # fmt: skip

    def _remove_layout(self, name: str, version: str) -> None:
        (self.repository.folder(name, version) / "model_info.json").unlink(missing_ok=True)

    # -- following changes ---------------------------------------------------------------------------

    async def start(self, service: Any, seconds: float) -> None:
        """Poll every `seconds` (on the server's event loop) through `service`'s load and unload."""
        self._task = asyncio.create_task(self._poll(service, seconds))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _poll(self, service: Any, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.poll_once(service)
            except Exception:  # the poller goes on: the next pass may find the folder repaired
                logger.exception("repository %s: polling failed", self.root)

    async def poll_once(self, service: Any) -> None:
        now = await asyncio.to_thread(scan, self.root)
        for name in sorted(set(self.seen) | set(now)):
            try:
                files = await asyncio.to_thread(self._files, name, now.get(name, {}))
            except ValueError as error:  # a mistake in its settings file: it stays as it was
                logger.error("repository: %s", error)
                continue
            try:
                await self._follow(service, name, self.seen.get(name, {}), files)
            except Exception as error:  # one model's broken file must not stop the others' changes
                logger.error("repository: %s: %s", name, error)

    async def _follow(self, service: Any, name: str, before: dict[str, Seen], after: dict[str, Seen]) -> None:
        if before == after:
            return
        if name not in self.repository.names():
            if await asyncio.to_thread(self._add, name, after):  # describing a file may take a while
                logger.info("repository: added %s (versions %s)", name, ", ".join(after))
                await service.load_model(name)
            return
        hosted = self.repository.get(name)
        target: VersionedFiles = hosted.target
        self.seen[name] = after
        if not after:
            logger.info("repository: %s removed; unloading it", name)
            await service.unload_model(name)
            for version in before:  # when it comes back, it has the versions it comes back with
                target.files.pop(version, None)
                self._remove_layout(name, version)
            return
        for version in after.keys() - before.keys():
            self._lay_out(name, version, after[version].file)
        target.files.update({v: s.file for v, s in after.items()})
        changed = [v for v in after.keys() & before.keys() if after[v] != before[v]]
        pool = service.execution.pool
        for version in changed:  # the next use (or the switch below) loads the new file
            await asyncio.to_thread(pool.evict, (name, version), "its file changed")
        if hosted.unloaded or not before:
            await service.load_model(name)
        newest = latest(after)
        if newest != hosted.default_version or hosted.default_version in changed:
            await service.set_default(name, newest)
            # the metadata of the new default
            hosted.probe = await asyncio.to_thread(self.repository.instance, hosted, newest)
        removed = before.keys() - after.keys()
        for version in removed:  # no longer listed: new requests for it are 404s
            logger.info("repository: %s version %s removed; unloading it", name, version)
            self._remove_layout(name, version)
        if removed:  # requests that resolved it a moment ago may still wait in its batcher
            await asyncio.sleep(REMOVAL_GRACE_SECONDS)
        for version in removed:
            target.files.pop(version, None)
            await asyncio.to_thread(pool.evict, (name, version), "its file was removed")
