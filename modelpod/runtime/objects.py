"""Import what a reference names: `path/to/file.py:Name` (the file loaded as a module) or
`package.module:Name`. A leaf module, so that `formats.py` can load a model file's processing class
(and `loader.py` the command line's classes) without importing each other."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_object(reference: str) -> Any:
    module_part, sep, attribute = reference.rpartition(":")
    if not sep or not module_part or not attribute:
        raise ValueError(f"{reference!r}: expected FILE.py:NAME or package.module:NAME")
    module = _load_module(module_part)
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{reference!r}: {module.__name__} has no {attribute!r}") from None
    return target


def _load_module(module_part: str) -> Any:
    if module_part.endswith(".py") or "/" in module_part:
        return _load_file(Path(module_part))
    try:
        return importlib.import_module(module_part)
    except ImportError as error:
        raise ValueError(f"cannot import {module_part!r}: {error}") from error


def _load_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None:
        if Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
            return existing
        # Replacing it would hand every later `import <name>` the user's file instead.
        raise ValueError(
            f"cannot load {path} as module {name!r}: a module of that name is already imported "
            f"({getattr(existing, '__file__', None) or 'built in'}); rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent.resolve())
    added = folder not in sys.path
    sys.modules[name] = module  # so the classes it defines can be found again by module name
    if added:
        sys.path.insert(0, folder)  # so its sibling modules import as they would when run as a script
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        if added:
            sys.path.remove(folder)
        raise
    return module
