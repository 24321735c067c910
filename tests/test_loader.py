"""References to what `modelpod serve` serves: files, importable modules, names, nested attributes."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelpod import errors
from modelpod.runtime.loader import parse_reference
from modelpod.runtime.objects import load_object

SOURCE = """
VALUE = 42

class Outer:
    class Inner:
        answer = "inner"

def add(a: int, b: int) -> int:
    return a + b
"""


@pytest.fixture(autouse=True)
def restore_import_state() -> Iterator[None]:
    """Loading a file registers it in sys.modules and puts its folder on sys.path: undo both."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path


@pytest.fixture
def module_file(tmp_path: Path) -> Path:
    path = tmp_path / f"loader_case_{uuid.uuid4().hex[:8]}.py"  # a stem no other test uses
    path.write_text(SOURCE)
    return path


def test_file_reference(module_file: Path) -> None:
    outer = load_object(f"{module_file}:Outer")
    assert outer.__name__ == "Outer"
    assert outer.__module__ == module_file.stem
    assert sys.modules[module_file.stem].VALUE == 42  # findable again by module name
    assert load_object(f"{module_file}:add")(2, 3) == 5


def test_the_same_file_is_loaded_once(module_file: Path) -> None:
    assert load_object(f"{module_file}:Outer") is load_object(f"{module_file}:Outer")


def test_relative_file_reference(module_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(module_file.parent)
    assert load_object(f"{module_file.name}:VALUE") == 42


def test_module_reference() -> None:
    assert load_object("modelpod.errors:NotFound") is errors.NotFound
    assert load_object("modelpod.errors:ModelError.__str__") is errors.ModelError.__str__


def test_nested_attribute(module_file: Path) -> None:
    assert load_object(f"{module_file}:Outer.Inner.answer") == "inner"


def test_names() -> None:
    assert parse_reference("modelpod.errors:Timeout") == (None, errors.Timeout)
    assert parse_reference("slow-one=modelpod.errors:Timeout") == ("slow-one", errors.Timeout)
    assert parse_reference("v2.b_c=modelpod.errors:Timeout") == ("v2.b_c", errors.Timeout)


def test_named_file_reference(module_file: Path) -> None:
    name, target = parse_reference(f"adder={module_file}:add")
    assert name == "adder"
    assert target(1, 1) == 2


@pytest.mark.parametrize("reference", ["modelpod.errors", "modelpod.errors:", ":NotFound", "x.py", ""])
def test_reference_without_module_or_name(reference: str) -> None:
    with pytest.raises(ValueError, match=r"expected FILE\.py:NAME or package.module:NAME"):
        load_object(reference)


def test_missing_attribute_in_a_module() -> None:
    with pytest.raises(ValueError, match=r"'modelpod.errors:Nope': modelpod.errors has no 'Nope'"):
        load_object("modelpod.errors:Nope")


def test_missing_nested_attribute_in_a_file(module_file: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{module_file.stem} has no 'Outer.Missing'")):
        load_object(f"{module_file}:Outer.Missing")


def test_module_that_cannot_be_imported() -> None:
    with pytest.raises(ValueError, match=r"cannot import 'modelpod\.no_such_module'"):
        load_object("modelpod.no_such_module:X")


def test_name_prefix_is_not_part_of_the_module() -> None:
    with pytest.raises(ValueError, match=r"cannot import 'no_such_package\.mod'"):
        parse_reference("ok=no_such_package.mod:X")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"no such file: {tmp_path / 'absent.py'}")):
        load_object(f"{tmp_path / 'absent.py'}:X")
    with pytest.raises(ValueError, match="no such file"):
        load_object(f"{tmp_path}:X")  # a folder is not a file


def test_file_that_is_not_python(tmp_path: Path) -> None:
    path = tmp_path / "weights.txt"
    path.write_text("VALUE = 1\n")
    with pytest.raises(ValueError, match=re.escape(f"cannot load {path} as a Python module")):
        load_object(f"{path}:VALUE")


def test_file_that_raises_is_not_left_half_imported(tmp_path: Path) -> None:
    path = tmp_path / f"loader_broken_{uuid.uuid4().hex[:8]}.py"
    path.write_text("raise RuntimeError('no weights here')\n")
    with pytest.raises(RuntimeError, match="no weights here"):
        load_object(f"{path}:X")
    assert path.stem not in sys.modules
    path.write_text("X = 'fixed'\n")
    assert load_object(f"{path}:X") == "fixed"


def test_a_file_named_like_an_imported_module_is_refused(tmp_path: Path) -> None:
    shadow = tmp_path / "json.py"
    shadow.write_text("class M:\n    pass\n")
    with pytest.raises(ValueError, match=r"a module of that name is already imported .*; rename the file"):
        load_object(f"{shadow}:M")
    import json

    assert hasattr(json, "dumps")  # the standard module is untouched


def test_a_file_that_fails_to_import_leaves_sys_path_as_it_was(tmp_path: Path) -> None:
    broken = tmp_path / "broken_model_file.py"
    broken.write_text("raise RuntimeError('import-time failure')\n")
    before = list(sys.path)
    with pytest.raises(RuntimeError, match="import-time failure"):
        load_object(f"{broken}:X")
    assert sys.path == before
    assert "broken_model_file" not in sys.modules
