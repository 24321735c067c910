"""`modelpod serve -c modelpod.yaml`: the models and settings of a server in one YAML file.

    settings:                      # any setting of `modelpod serve --help`, by its field name
      http_port: 8080
      allow_pickle: true
      repository: models/          # a model repository too (see serving/repository_watch.py)
      repository_poll: 5
    models:
      - path: models/mlp.onnx      # a model file or folder ...
        name: mlp
        options: {intra_op_threads: 2}
        batching: {max_batch_size: 16, max_batch_delay_ms: 2}
      - path: models/scorer.pt
        runtime: torchscript
        options: {inputs: "x:FP32[-1,8]"}
        workers: 2
      - class: examples/iris.py:Iris   # ... or a class, as on the command line
    pipelines:
      - both=mlp,scorer

Paths are relative to the file's folder. Precedence: a flag wins over the environment, which wins
over the file (`modelpod serve -c modelpod.yaml --http-port 9000`); the models of the command line
are served besides the file's. A mistake is one line naming the file and the field.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpod.extras import needs_extra
from modelpod.runtime.file_settings import FILE_FIELDS, file_settings

MODEL_FIELDS = ("path", "class", "name", *FILE_FIELDS)
TOP_FIELDS = ("settings", "models", "pipelines")
RELATIVE_SETTINGS = ("data_path", "repository", "api_key_file", "tls_cert", "tls_key")


@dataclass
class ConfigFile:
    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)  # name and path (runtime, options) or class
    pipelines: list[str] = field(default_factory=list)


def _fail(path: Path, where: str, message: str) -> ValueError:
    return ValueError(f"{path}: {where}: {message}")


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, where, f"expected a mapping, not {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def read(path: Path) -> ConfigFile:
    """The file, checked: ValueError naming the file and field for anything it cannot use."""
    with needs_extra("server", "modelpod serve -c FILE"):
        import yaml

    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ValueError(f"cannot read the config file {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not YAML: {error}".replace("\n", " ")) from None
    document = _mapping(path, "the file", document)
    unknown = sorted(set(document) - set(TOP_FIELDS))
    if unknown:
        raise _fail(path, "the file", f"unknown field(s) {unknown}; known: {', '.join(TOP_FIELDS)}")
    folder = path.parent
    config = ConfigFile(path, settings=_settings(path, folder, document.get("settings") or {}))
    models = document.get("models") or []
    if not isinstance(models, list):
        raise _fail(path, "models", "expected a list of models")
    config.models = [_model(path, folder, f"models[{i}]", entry) for i, entry in enumerate(models)]
    pipelines = document.get("pipelines") or []
    if not isinstance(pipelines, list) or not all(isinstance(p, str) for p in pipelines):
        raise _fail(path, "pipelines", "expected a list of NAME=MODEL,MODEL,... texts")
    config.pipelines = pipelines
    return config


def _settings(path: Path, folder: Path, value: Any) -> dict[str, Any]:
    from modelpod.server.settings import Settings

    settings = _mapping(path, "settings", value)
    unknown = sorted(set(settings) - set(Settings.model_fields))
    if unknown:
        raise _fail(path, "settings", f"unknown setting(s) {unknown}; see modelpod serve --help")
    for key in RELATIVE_SETTINGS:
        if isinstance(settings.get(key), str):
            settings[key] = str(folder / settings[key])
    return settings


def _model(path: Path, folder: Path, where: str, value: Any) -> dict[str, Any]:
    entry = _mapping(path, where, value)
    unknown = sorted(set(entry) - set(MODEL_FIELDS))
    if unknown:
        raise _fail(path, where, f"unknown field(s) {unknown}; known: {', '.join(MODEL_FIELDS)}")
    if ("path" in entry) == ("class" in entry):
        raise _fail(path, where, "give path (a model file or folder) or class (FILE.py:Class), one of them")
    name = str(entry["name"]) if "name" in entry else None
    served = {key: value for key, value in entry.items() if key in FILE_FIELDS}
    if "path" in entry:
        try:
            runtime, options = file_settings(served, where, folder)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        return {"name": name, "path": folder / str(entry["path"]), "runtime": runtime, "options": options}
    if served:
        raise _fail(path, where, "options, batching, workers, runtime and processing are for model files; "
                    "a class says its own as class attributes")  # fmt: skip
    file_part, sep, attribute = str(entry["class"]).rpartition(":")
    is_file = file_part.endswith(".py") or "/" in file_part
    return {
        "name": name,
        "class": f"{folder / file_part}{sep}{attribute}" if is_file else str(entry["class"]),
    }


def settings_below_flags(
    config: ConfigFile, flags: Mapping[str, Any], environment: Mapping[str, str]
) -> dict[str, Any]:
    """The file's settings that neither a flag nor a MODELPOD_* variable sets, then the flags."""
    variables = {name.upper() for name in environment}
    chosen = {
        key: value
        for key, value in config.settings.items()
        if key not in flags and f"MODELPOD_{key.upper()}" not in variables
    }
    return {**chosen, **flags}


def targets(config: ConfigFile, allow_pickle: bool) -> list[Any]:
    """What the file's models and pipelines serve, as `modelpod serve` takes them."""
    from modelpod.runtime.formats import model_file
    from modelpod.runtime.objects import load_object
    from modelpod.serving.served_pipeline import parse_pipeline

    found: list[Any] = []
    for index, model in enumerate(config.models):
        try:
            if "path" in model:
                target = model_file(model["path"], model["runtime"], allow_pickle, **model["options"])
            else:
                target = load_object(model["class"])
        except (ValueError, PermissionError) as error:
            raise _fail(config.path, f"models[{index}]", str(error)) from None
        found.append(target if model["name"] is None else (model["name"], target))
    return found + [parse_pipeline(text) for text in config.pipelines]


def print_settings(arguments: Any) -> int:
    """`modelpod config --print`: the effective settings, as YAML (secrets masked)."""
    with needs_extra("server", "modelpod config"):
        import yaml
        from pydantic import ValidationError

        from modelpod.server.settings import Settings

    flags = {k: v for k, v in vars(arguments).items() if k in Settings.model_fields and v is not None}
    try:
        file = read(Path(arguments.config)) if arguments.config else None
        settings = Settings(**(settings_below_flags(file, flags, os.environ) if file is not None else flags))
    except (ValidationError, ValueError) as error:
        print(f"modelpod: {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
    return 0
