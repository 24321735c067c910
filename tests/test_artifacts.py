"""A model's files: a checksum over paths and bytes, and a copy that replaces a folder whole."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelpod.registry import artifacts


def write(folder: Path, files: dict[str, bytes]) -> Path:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


FILES = {"weights.bin": bytes(range(256)) * 10, "config/tokenizer.json": b'{"lower": true}', "README": b""}


def test_files_are_relative_sorted_and_skip_bookkeeping(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", {**FILES, "model_info.json": b"{}"})
    (folder / "link").symlink_to(folder / "README")
    assert artifacts.files(folder) == [Path("README"), Path("config/tokenizer.json"), Path("weights.bin")]
    assert artifacts.files(tmp_path / "absent") == []


def test_checksum_is_stable(tmp_path: Path) -> None:
    one = write(tmp_path / "one", FILES)
    two = write(tmp_path / "two", dict(reversed(FILES.items())))  # written in another order
    assert artifacts.checksum(one) == artifacts.checksum(one) == artifacts.checksum(two)
    assert len(artifacts.checksum(one)) == 64


def test_checksum_of_nothing(tmp_path: Path) -> None:
    empty = hashlib.sha256().hexdigest()
    assert artifacts.checksum(tmp_path / "absent") == empty
    assert artifacts.checksum(write(tmp_path / "info", {"model_info.json": b"{}"})) == empty


def test_checksum_sees_content(tmp_path: Path) -> None:
    before = artifacts.checksum(write(tmp_path, FILES))
    data = bytearray(FILES["weights.bin"])
    data[1000] ^= 1
    (tmp_path / "weights.bin").write_bytes(bytes(data))
    assert artifacts.checksum(tmp_path) != before
    (tmp_path / "README").write_bytes(b"\0")  # an empty file and a NUL byte differ
    assert artifacts.checksum(write(tmp_path / "x", {"README": b""})) != artifacts.checksum(
        write(tmp_path / "y", {"README": b"\0"})
    )


def test_checksum_sees_paths(tmp_path: Path) -> None:
    base = artifacts.checksum(write(tmp_path / "a", {"w.bin": b"data"}))
    assert artifacts.checksum(write(tmp_path / "b", {"v.bin": b"data"})) != base
    assert artifacts.checksum(write(tmp_path / "c", {"sub/w.bin": b"data"})) != base
    # where one name ends and its bytes begin is part of what is hashed
    assert artifacts.checksum(write(tmp_path / "d", {"ab": b"c"})) != artifacts.checksum(
        write(tmp_path / "e", {"a": b"bc"})
    )


def test_checksum_ignores_model_info(tmp_path: Path) -> None:
    folder = write(tmp_path, FILES)
    before = artifacts.checksum(folder)
    (folder / "model_info.json").write_text('{"config": {"k": 3}}')
    assert artifacts.checksum(folder) == before
    (folder / "model_info.json").write_text('{"config": {"k": 4}}')
    assert artifacts.checksum(folder) == before


def test_copy_into_a_new_folder(tmp_path: Path) -> None:
    source = write(tmp_path / "source", {**FILES, "model_info.json": b"{}"})
    target = tmp_path / "store" / "m" / "1"
    artifacts.copy(source, target)
    assert artifacts.files(target) == artifacts.files(source)
    assert not (target / "model_info.json").exists()
    assert (target / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert artifacts.checksum(target) == artifacts.checksum(source)
    assert sorted(p.name for p in target.parent.iterdir()) == ["1"]  # no staging folder left


def test_copy_replaces_the_whole_target(tmp_path: Path) -> None:
    source = write(tmp_path / "source", {"weights.bin": b"new"})
    target = write(tmp_path / "target", {"weights.bin": b"old", "stale/extra.bin": b"gone"})
    artifacts.copy(source, target)
    assert artifacts.files(target) == [Path("weights.bin")]
    assert (target / "weights.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "target"]
    assert artifacts.files(source) == [Path("weights.bin")]  # the source is left as it was


def test_copy_of_nothing_leaves_an_empty_folder(tmp_path: Path) -> None:
    target = write(tmp_path / "target", {"old.bin": b"x"})
    artifacts.copy(tmp_path / "absent", target)
    assert target.is_dir()
    assert list(target.iterdir()) == []


def test_remove(tmp_path: Path) -> None:
    folder = write(tmp_path / "m", FILES)
    artifacts.remove(folder)
    assert not folder.exists()
    artifacts.remove(folder)  # removing what is gone is no error
