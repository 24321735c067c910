"""The small JSON files kept beside a model's versions: `model_info.json`, `training.json`, `default.json`.

Written atomically: the new content goes to a hidden temporary file in the same folder, then
replaces the old file in one rename, so that a reader (or a server restarted after `kill -9`)
finds the old file or the new one. Temporary files are hidden (`.name.<random>.partial`) so that
nothing that lists a folder takes one for data; one left behind by a killed process is removed
when a server next starts. A damaged file is read as `DamagedState`, naming the file, never as a
crash of whoever happened to read it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelpod.errors import ModelLoadError

logger = logging.getLogger("modelpod.state")

TEMPORARY_SUFFIX = ".partial"
STALE_AFTER = 60.0  # seconds: a temporary file older than this belongs to no write still going on


class DamagedState(ModelLoadError):
    """A state file exists but cannot be read as what was written (truncated, edited, not JSON)."""


def write_json(path: Path, value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Replace `path` with `value` as JSON in one step; raises TypeError for what JSON cannot hold."""
    # the standard library's json: these files are written by the core package, which needs numpy alone
    try:
        data = json.dumps(value, default=default, indent=2, allow_nan=False).encode()
    except ValueError as error:  # NaN or infinity: not JSON
        raise TypeError(str(error)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}"
    try:
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the rename must never publish a file whose bytes are not there
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    """What `write_json` wrote; None when there is no such file; `DamagedState` when it is unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise DamagedState(f"{path} cannot be read: {error.strerror or error}") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedState(f"{path} is damaged (not JSON: {error})") from None


def is_temporary(name: str) -> bool:
    """A temporary file of an atomic write: ours, or one of the names older releases used."""
    return (
        (name.startswith(".") and name.endswith(TEMPORARY_SUFFIX))
        or name.startswith("model_info.tmp")
        or name.startswith(".training.json.")
    )


def remove_stale_temporaries(folder: Path, depth: int = 2) -> int:
    """Delete temporary files left by killed writers in `folder` and its subfolders down to `depth`
    levels; only old ones, since another process sharing the folder may be writing right now."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False) and depth > 0:
                removed += remove_stale_temporaries(Path(entry.path), depth - 1)
            elif entry.is_file(follow_symlinks=False) and _stale(entry):
                os.unlink(entry.path)
                logger.info("removed %s, left by an interrupted write", entry.path)
                removed += 1
        except OSError:
            continue  # gone already, or not ours to remove: harmless either way
    return removed


def _stale(entry: os.DirEntry[str]) -> bool:
    return is_temporary(entry.name) and time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER
