"""`modelpod models list|show|remove` against a real store (`modelpod serve` is in test_server_lifecycle)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from modelpod.registry.store import Store

from conftest import ROOT
from servable import Echo


def modelpod(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpod", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


def test_models_list_show_and_remove(tmp_path: Path) -> None:
    store = Store(data_path=tmp_path)
    first = store.apply(Echo(data_path=tmp_path / "work"))
    store.apply(Echo(data_path=tmp_path / "work", colour="blue"))
    where = ("--data-path", str(tmp_path))

    listing = modelpod("models", *where, "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["IDENTIFIER", "VERSION", "UUID", "CLASS", "APPLIED"]
    assert [line.split()[:2] for line in lines[1:]] == [["echo", "1"], ["echo", "2"]]

    shown = json.loads(modelpod("models", *where, "--json", "show", "echo").stdout)
    assert [(r["version"], r["config"]) for r in shown] == [("1", {}), ("2", {"colour": "blue"})]
    assert shown[0]["reference"] == first.reference

    removed = modelpod("models", *where, "remove", "echo", "1")
    assert removed.stdout.strip() == "removed 1 version of echo"
    assert [r.version for r in store.show("echo")] == ["2"]

    missing = modelpod("models", *where, "show", "nothing")
    assert missing.returncode == 1
    assert "the store has no model 'nothing'" in missing.stderr


def test_models_uses_the_store_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    Store(url, data_path=tmp_path).apply(Echo(data_path=tmp_path / "work"))
    assert "echo" in modelpod("models", "--store", url, "list").stdout
    assert modelpod("models", "--data-path", str(tmp_path), "list").stdout.splitlines()[1:] == []
