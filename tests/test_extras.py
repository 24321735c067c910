"""Optional extras: a server without the store serves; a feature whose extra is missing stops with one
line naming the extra (exit code 2, no traceback); `modelpod --version` and `modelpod doctor`.

An extra is made missing in a child process by a sitecustomize that sets its modules to None in
`sys.modules`, so that importing them raises ModuleNotFoundError as in an environment without them.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelpod import __version__
from modelpod.cli import doctor
from modelpod.extras import MissingExtra, needs_extra

from conftest import ROOT, launch, servable

BLOCKER = """import os, sys
sys.modules.update(dict.fromkeys(filter(None, os.environ.get("MODELPOD_TEST_MISSING", "").split(","))))
"""


def without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """The environment of a child process in which `modules` cannot be imported."""
    folder = tmp_path / "blocker"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "MODELPOD_TEST_MISSING": ",".join(modules)}


def modelpod(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "modelpod", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})  # fmt: skip


def test_the_server_serves_without_the_store(tmp_path: Path) -> None:
    server = launch(
        (servable("Echo"),), tmp_path / "data", env=without(tmp_path, "sqlalchemy", "cloudpickle")
    )
    try:
        assert httpx.get(server.http_url + "/v2/health/ready", timeout=5).status_code == 200
        answer = httpx.post(server.http_url + "/models/echo/predict", json={"text": "hi"}, timeout=10)
        assert answer.json()["text"] == "hi"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("missing", "args", "feature", "extra"),
    [
        ("sqlalchemy", ("serve", "--store", "sqlite:///{tmp}/s.db", "--model", "echo"), "--store", "store"),
        ("ray", ("serve", "--backend", "ray", servable("Echo")), "--backend ray", "ray"),
        ("opentelemetry", ("serve", servable("Echo"), "--otel"), "--otel", "otel"),
        ("rich", ("train", "http://127.0.0.1:9", "echo", "--follow"), "modelpod train --follow", "client"),
        ("httpx", ("train", "http://127.0.0.1:9", "echo"), "modelpod train", "client"),
        ("sqlalchemy", ("models", "list"), "modelpod models", "store"),
        ("pydantic", ("serve", servable("Echo")), "modelpod serve", "server"),
        ("pydantic", ("serve", servable("Echo"), "--http-port", "0"), "modelpod serve", "server"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    tmp_path: Path, missing: str, args: tuple[str, ...], feature: str, extra: str
) -> None:
    args = tuple(arg.replace("{tmp}", str(tmp_path)) for arg in args)
    result = modelpod(*args, env=without(tmp_path, missing))  # each stops before it touches any data
    assert result.returncode == 2, result
    hint = f'pip install "modelpod[{extra}]" (no module named {missing!r})'
    assert result.stderr.splitlines() == [f"modelpod: {feature} needs the {extra} extra: {hint}"]


def test_needs_extra_keeps_a_broken_modelpod_module_as_it_is() -> None:
    with pytest.raises(ModuleNotFoundError) as raised, needs_extra("store", "x"):
        import modelpod.no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(raised.value, MissingExtra)
    wanted = r'^x needs the store extra: pip install "modelpod\[store\]"'
    with pytest.raises(MissingExtra, match=wanted), needs_extra("store", "x"):
        import no_such_distribution_anywhere  # type: ignore[import-not-found]  # noqa: F401


def test_the_lazy_public_names_say_which_extra_they_need(tmp_path: Path) -> None:
    code = "import modelpod\ntry:\n    modelpod.Store\nexcept ImportError as e:\n    print(e)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **without(tmp_path, "sqlalchemy")}, check=True)  # fmt: skip
    assert result.stdout.startswith('modelpod.Store needs the store extra: pip install "modelpod[store]"')


def test_version() -> None:
    result = modelpod("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"modelpod {__version__}"


def test_doctor_names_python_each_extra_and_what_is_available() -> None:
    result = modelpod("doctor")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"modelpod {__version__}" in text
    assert f"Python {platform.python_version()} ({sys.executable})" in text
    extras = {
        line.split()[0]: line.split()[1]
        for line in text.split("extras:\n")[1].split("\ntorch")[0].splitlines()
    }
    assert {"server", "client", "store", "postgres", "ray", "examples", "embeddings"} <= set(extras)
    assert extras["server"] == "yes"  # this environment has every extra but torch, which may be there or not
    server_line = next(line for line in text.splitlines() if line.strip().startswith("server "))
    assert "starlette " in server_line
    assert "(missing)" not in server_line
    assert "torch" in text
    assert "features:" in text


def test_doctor_shows_a_missing_extra_and_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda d: None if d == "sqlalchemy" else real(d))
    text = doctor.report()
    store_line = next(line for line in text.splitlines() if line.strip().startswith("store "))
    assert store_line.split()[1] == "no"
    assert "sqlalchemy (missing)" in store_line
    assert (
        'modelpod models, modelpod serve --store URL --model NAME: no: pip install "modelpod[store]"' in text
    )
