"""A model's files: copied between its `model_dir` and the store, and fingerprinted to catch tampering."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

# Instance bookkeeping, not artifacts: the store keeps the config itself.
EXCLUDED = frozenset({"model_info.json"})


def files(folder: Path) -> list[Path]:
    """The artifact files under `folder`, relative, in a stable order."""
    if not folder.is_dir():
        return []
    found = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return sorted(p for p in found if str(p) not in EXCLUDED)


def checksum(folder: Path) -> str:
    """sha256 over every artifact's path and bytes; equal folders give equal checksums."""
    digest = hashlib.sha256()
    for relative in files(folder):
        digest.update(str(relative).encode() + b"\0")
        with (folder / relative).open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def copy(source: Path, target: Path) -> None:
    """Replace `target` with the artifacts of `source`, never leaving a half-copied folder."""
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        for relative in files(source):
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, staging / relative)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        retired = target.with_name(f".{target.name}.old.{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        shutil.rmtree(retired)
    os.replace(staging, target)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
