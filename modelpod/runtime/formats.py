"""Which runtime serves a model file: recognised from the file itself, or forced by name.

    model_file("iris.joblib", allow_pickle=True)   # -> ModelFile(path, "sklearn", ...)
    model_file("mlp.onnx")                         # -> ModelFile(path, "onnx")
    model_file("weights.bin", runtime="onnx")      # forced

A `ModelFile` is what a server hosts for a file: like a class, it makes one instance per version
(`instantiate`), and it pickles, so worker processes can make theirs.

Each format is a `Format`: a name, the extra its runtime needs, a test of the file (`sniff`), and
where its runtime class lives. A new format is one more entry in `FORMATS`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelpod.errors import ModelLoadError
from modelpod.runtime.model import DEFAULT_VERSION, Model
from modelpod.runtime.objects import load_object

_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# Compressed joblib files start with one of these (zlib, gzip, bz2, xz, lz4).
_COMPRESSED = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x04\x22\x4d\x18")
# The top-level fields of an ONNX ModelProto (onnx.proto): a file whose first fields are these is one.
_ONNX_FIELDS = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 14, 20, 25})
REFERENCE_PREFIX = "modelpod-file:"  # a ModelFile as a worker process receives it (see `reference`)


@dataclass(frozen=True)
class Format:
    name: str
    extra: str
    describes: str
    sniff: Callable[[Path], bool]
    runtime: str | None  # "module:Class"; None for a format recognised but not served yet
    executes_code: bool = False  # loading it runs code from the file: needs allow_pickle

    def runtime_class(self) -> type[Model]:
        if self.runtime is None:
            raise ValueError(f"{self.describes} cannot be served by this modelpod yet")
        module, _, attribute = self.runtime.partition(":")
        cls: type[Model] = getattr(importlib.import_module(module), attribute)
        return cls


def _head(path: Path, size: int = 64) -> bytes:
    if not path.is_file():
        return b""
    with path.open("rb") as file:
        return file.read(size)


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at
    raise ValueError("truncated varint")


def is_onnx(path: Path) -> bool:
    """An ONNX file is a protobuf ModelProto with no magic number: its first field is `ir_version`
    (a small varint), followed by other ModelProto fields. The suffix `.onnx` is taken as it is."""
    if path.suffix.lower() == ".onnx":
        return path.is_file()
    data = _head(path)
    try:
        tag, at = _varint(data, 0)
        if tag != 0x08:  # field 1, varint
            return False
        ir_version, at = _varint(data, at)
        if not 1 <= ir_version <= 100:
            return False
        tag, at = _varint(data, at)
    except ValueError:
        return False
    return (tag >> 3) in _ONNX_FIELDS and (tag & 7) in (0, 2)


def is_pickle(path: Path) -> bool:
    """A pickle (protocol 2 or later, as joblib and pickle write) or a file named like one."""
    data = _head(path, 8)
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    named = path.suffix.lower() in _PICKLE_SUFFIXES
    return named and path.is_file() and (data.startswith(_COMPRESSED) or path.suffix.lower() == ".joblib")


def _zip_names(path: Path) -> list[str]:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def is_torchscript(path: Path) -> bool:
    """`torch.jit.save` writes a zip holding the module's code and its constants."""
    names = _zip_names(path)
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def is_torch_export(path: Path) -> bool:
    """`torch.export.save` writes a zip (`.pt2`) that names its archive format."""
    names = _zip_names(path)
    return any(n.endswith("archive_format") for n in names) or (path.suffix == ".pt2" and bool(names))


def _has_file(name: str) -> Callable[[Path], bool]:
    return lambda path: (path / name).is_file()


def is_transformers(path: Path) -> bool:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "architectures" in config


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("onnx", "onnx", "an ONNX graph (.onnx)", is_onnx, "modelpod.runtime.onnx_runtime:OnnxModel"),
        Format(
            "sklearn",
            "sklearn",
            "a scikit-learn estimator saved with joblib or pickle (needs --allow-pickle)",
            is_pickle,
            "modelpod.runtime.sklearn_runtime:SklearnModel",
            executes_code=True,
        ),
        Format(
            "mlflow",
            "mlflow",
            "an MLflow model folder (MLmodel; needs --allow-pickle)",
            _has_file("MLmodel"),
            "modelpod.runtime.mlflow_runtime:MlflowModel",
            executes_code=True,
        ),
        Format(
            "sentence-transformers",
            "embeddings",
            "a sentence-transformers folder (modules.json)",
            _has_file("modules.json"),
            "modelpod.runtime.sentence_transformers_runtime:SentenceTransformersModel",
        ),
        Format(
            "transformers-generate",
            "transformers",
            "a transformers text-generation folder, streamed (chosen with --runtime)",
            lambda path: False,  # chosen, never recognised: the folder is also a transformers one
            "modelpod.runtime.transformers_stream:TransformersGenerator",
        ),
        Format(
            "transformers",
            "transformers",
            "a Hugging Face transformers folder (config.json)",
            is_transformers,
            "modelpod.runtime.transformers_runtime:TransformersModel",
        ),
        Format(
            "torchscript",
            "torch",
            "a TorchScript archive (torch.jit.save)",
            is_torchscript,
            "modelpod.runtime.torchscript_runtime:TorchScriptModel",
        ),
        Format(
            "torch-export",
            "torch",
            "a torch.export archive (.pt2)",
            is_torch_export,
            "modelpod.runtime.torch_export_runtime:TorchExportModel",
        ),
    )
}


def known_formats() -> str:
    """The formats served, with the extra each needs, for messages."""
    return "; ".join(f"{f.name}: {f.describes}, extra {f.extra}" for f in FORMATS.values() if f.runtime)


def _not_served(path: Path, found: Format) -> ValueError:
    return ValueError(
        f"{path} is {found.describes}, which this modelpod cannot serve yet "
        f"(formats served: {known_formats()})"
    )


def detect(path: Path) -> Format:
    """The format of the file at `path`; ValueError, in one line naming the formats known, if none."""
    if not path.exists():
        raise ValueError(f"no such model file: {path}")
    for candidate in FORMATS.values():
        if candidate.sniff(path):
            if candidate.runtime is None:
                raise _not_served(path, candidate)
            return candidate
    raise ValueError(
        f"{path}: not a model file modelpod recognises (known formats: {known_formats()}); "
        "force one with --runtime NAME"
    )


def check_pickle_allowed(path: Path, chosen: Format, allow_pickle: bool) -> None:
    if chosen.executes_code and not allow_pickle:
        raise PermissionError(
            f"{path} is served by the {chosen.name} runtime, and loading it runs code from the file: "
            "pass --allow-pickle (allow_pickle=True) if you trust it"
        )


def processing_class(reference: str, chosen: Format) -> type[Model]:
    """The class `reference` names (`package.module:Class`, `file.py:Class`), checked to be a subclass
    of the class of `chosen`'s runtime, which it adds pre- or post-processing to; ValueError otherwise.
    Importing it runs its module's code."""
    try:
        found = load_object(reference)
    except Exception as error:  # a module missing, or one that fails while it is imported
        raise ValueError(f"cannot load {reference!r}: {error}") from None
    base = chosen.runtime_class()
    if not inspect.isclass(found):
        raise ValueError(f"{reference!r} is not a class but {type(found).__name__}; expected a subclass of "
                         f"{base.__name__}")  # fmt: skip
    if not issubclass(found, base):
        raise ValueError(
            f"{reference!r} ({found.__name__}) is not a subclass of {base.__module__}.{base.__name__}, "
            f"the class of the {chosen.name} runtime that serves the file"
        )
    return found


@dataclass(frozen=True)
class ModelFile:
    """A model file as a server hosts it: the runtime that serves it and the options it gets, and
    the subclass of the runtime's class that serves it instead when one adds processing."""

    path: Path
    runtime: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # `module:Class` or `/abs/file.py:Class` (see `processing_class`); keyword-only, so that a
    # subclass's fields (VersionedFiles.files) keep their places
    processing: str | None = field(default=None, kw_only=True)

    @property
    def format(self) -> Format:
        return FORMATS[self.runtime]

    def runtime_class(self) -> type[Model]:
        if self.processing is None:
            return self.format.runtime_class()
        return processing_class(self.processing, self.format)

    def instantiate(self, version: str = DEFAULT_VERSION, **kwargs: Any) -> Model:
        return self.runtime_class()(version, path=self.path, **{**self.options, **kwargs})

    def reference(self) -> str:
        """This model file as text, which `from_reference` reads back (in a worker process)."""
        fields = {"path": str(self.path.resolve()), "runtime": self.runtime, "options": dict(self.options),
                  "processing": self.processing}  # fmt: skip
        return REFERENCE_PREFIX + json.dumps(fields)


@dataclass(frozen=True)
class VersionedFiles(ModelFile):
    """One model whose versions are files of their own (a model repository's `NAME/VERSION/file`):
    version -> its `ModelFile`. `path` is the model's folder; `files` changes as versions come
    and go (a repository's poller updates it)."""

    files: dict[str, ModelFile] = field(default_factory=dict)

    def instantiate(self, version: str = DEFAULT_VERSION, **kwargs: Any) -> Model:
        chosen = self.files.get(version)
        if chosen is None:
            known = ", ".join(self.files) or "none"
            raise ModelLoadError(f"{self.path} has no file for version {version!r} (versions: {known})")
        return chosen.instantiate(version, **kwargs)

    def reference(self) -> str:
        files = {
            version: json.loads(f.reference().removeprefix(REFERENCE_PREFIX))
            for version, f in self.files.items()
        }
        fields = {"path": str(self.path.resolve()), "runtime": self.runtime, "options": {}, "versions": files}
        return REFERENCE_PREFIX + json.dumps(fields)


def from_reference(reference: str) -> ModelFile:
    """The `ModelFile` (or `VersionedFiles`) that `reference` wrote."""
    fields = json.loads(reference.removeprefix(REFERENCE_PREFIX))
    if "versions" in fields:
        files = {version: _file_of(each) for version, each in fields["versions"].items()}
        return VersionedFiles(Path(fields["path"]), fields["runtime"], files=files)
    return _file_of(fields)


def _file_of(fields: Mapping[str, Any]) -> ModelFile:
    return ModelFile(
        Path(fields["path"]), fields["runtime"], fields["options"], processing=fields.get("processing")
    )


def model_file(
    path: str | os.PathLike[str],
    runtime: str | None = None,
    allow_pickle: bool = False,
    processing: str | None = None,
    **options: Any,
) -> ModelFile:
    """The `ModelFile` for `path`: its format recognised, or `runtime` when given, served by the class
    `processing` names when given (a subclass of the runtime's). Raises ValueError for an unknown
    format or runtime or a wrong processing class, PermissionError for a pickle that was not allowed."""
    where = Path(path)
    if runtime is None:
        chosen = detect(where)
    elif runtime in FORMATS:
        chosen = FORMATS[runtime]
        if not where.exists():
            raise ValueError(f"no such model file: {where}")
        if chosen.runtime is None:
            raise _not_served(where, chosen)
    else:
        raise ValueError(f"unknown runtime {runtime!r} (known formats: {known_formats()})")
    check_pickle_allowed(where, chosen, allow_pickle)
    if chosen.executes_code:
        options = {**options, "allow_pickle": allow_pickle}
    if processing is not None:
        try:
            processing_class(processing, chosen)  # checked now, so that a mistake stops the start
        except ValueError as error:
            raise ValueError(f"processing: {error}") from None
    return ModelFile(where, chosen.name, options, processing=processing)
