"""A model file as the Store records it: the file (or the model folder, and a declaration beside
it) is the version's artifact, and its config names it (`model_file`), so that a server that lays
the version out (`Store.materialize`) finds it in the version's folder and serves it with the
runtime the record names. An ONNX graph, a torch archive, a Hugging Face or MLflow folder are
recorded like any model: checksummed, versioned, and applied again only when they changed.

A pickled file (scikit-learn's joblib, an MLflow folder) runs code when it is described and when it
is loaded: a store records one only when it allows pickles (`Store(allow_pickle=True)`), and lays
one out as trusted only for a server that allows them (`--allow-pickle`); a record never carries
that trust (`laid_out_config`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from modelpod.runtime.declared_specs import sidecar
from modelpod.runtime.file_model import STORED_FILE, FileModel
from modelpod.runtime.model import Model
from modelpod.runtime.pickled_files import TRUSTED


def model_options(model: Any, allow_pickle: bool) -> dict[str, Any]:
    """What `as_model` takes besides `model`: a model file's path gets the store's `allow_pickle`."""
    return {"allow_pickle": allow_pickle} if isinstance(model, str | os.PathLike) else {}


def laid_out_config(config: dict[str, Any], allow_pickle: bool) -> dict[str, Any]:
    """A version's config as the store lays it out for a server: trusted with pickles only when
    the store allows them, whatever the record says."""
    kept = {key: value for key, value in config.items() if key != TRUSTED}
    return {**kept, TRUSTED: True} if allow_pickle and STORED_FILE in config else kept


@contextmanager
def staged(instance: Model, model_dir: Path, config: dict[str, Any]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(the folder whose files are the version's artifacts, its config): for a model file, a
    temporary folder holding a copy of it; for any other model, its own model_dir and config."""
    if not isinstance(instance, FileModel):
        yield model_dir, config
        return
    with tempfile.TemporaryDirectory(prefix="modelpod-file-") as folder:
        source = instance.path
        if source.is_dir():
            shutil.copytree(source, Path(folder) / source.name)
        else:
            shutil.copy2(source, Path(folder) / source.name)
        if sidecar(source).is_file():
            shutil.copy2(sidecar(source), Path(folder) / sidecar(source).name)
        kept = {key: value for key, value in config.items() if key != TRUSTED}  # never recorded
        yield Path(folder), {**kept, STORED_FILE: source.name}
