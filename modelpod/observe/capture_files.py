"""Captured requests on disk: JSON lines, one folder per model, files rotated by size.

`<capture path>/<model>/capture-<UTC start, to the microsecond>-<n>.jsonl`; a file past `max_bytes`
is closed and a new one begun, and only the newest `max_files` of a model are kept. Written by one
thread (the capture's writer), read by `modelpod capture` and `modelpod replay`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

PATTERN = "capture-*.jsonl"
CAPTURE_FOLDER = "_capture"  # under the data path, by default: no model's name starts with "_"


class CaptureFiles:
    """Appends records to the current file of each model; not thread-safe (one writer thread)."""

    def __init__(self, directory: Path, max_bytes: int | None = 64 * 1024**2, max_files: int = 10) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_files = max(max_files, 1)
        self._open: dict[str, tuple[IO[bytes], int]] = {}  # model -> (file, bytes written)
        self._made = 0

    def write(self, entries: Sequence[tuple[Mapping[str, Any], bytes]]) -> None:
        """A writer round's records, each model's lines that fit its current file in one write."""
        lines: dict[str, list[bytes]] = {}
        for record, line in entries:
            lines.setdefault(str(record["model"]), []).append(line)
        for model, model_lines in lines.items():
            file, size = self._open.get(model) or self._new(model)
            held: list[bytes] = []
            for line in model_lines:
                if self.max_bytes is not None and size and size + len(line) + 1 > self.max_bytes:
                    file = self._rotated(model, file, held)
                    size, held = 0, []
                held.append(line)
                size += len(line) + 1
            file.write(_joined(held))
            self._open[model] = (file, size)

    def _rotated(self, model: str, full: IO[bytes], held: list[bytes]) -> IO[bytes]:
        """`held` written to the file that is now full, and a new file begun."""
        if held:
            full.write(_joined(held))
        full.close()
        return self._new(model)[0]

    def _new(self, model: str) -> tuple[IO[bytes], int]:
        folder = self.directory / model
        folder.mkdir(parents=True, exist_ok=True)
        self._made += 1
        # Named by when it began, to the microsecond: names sort as files were begun, across restarts.
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
        file = (folder / f"capture-{stamp}-{self._made:06d}.jsonl").open("ab")  # UTF-8 lines, as made
        self._prune(folder)
        self._open[model] = (file, 0)
        return file, 0

    def _prune(self, folder: Path) -> None:
        """Keep the newest `max_files` (the one just begun among them)."""
        for old in sorted(folder.glob(PATTERN))[: -self.max_files]:
            old.unlink(missing_ok=True)

    def flush(self) -> None:
        for file, _ in self._open.values():
            file.flush()

    def close(self) -> None:
        for file, _ in self._open.values():
            file.close()
        self._open.clear()


def _joined(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def models(directory: Path) -> list[str]:
    """The models that have captured requests under `directory`."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and any(p.glob(PATTERN)))


def records(directory: Path, model: str, since: float | None = None) -> Iterator[dict[str, Any]]:
    """A model's captured records, oldest first (from `since`, a Unix time, if given). A line that
    does not parse (the last one of a server that died while writing it) is skipped."""
    for path in sorted((directory / model).glob(PATTERN)):
        with path.open(encoding="utf-8") as file:
            for line in file:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and (since is None or record.get("time", 0) >= since):
                    yield record
