"""The install matrix: every install the README and pyproject promise, each in a fresh virtual
environment built from the wheel (not an editable install, so that missing package data shows),
checked by tests/install/check.py. `.ci/run` runs it; by hand:

    python scripts/install_matrix.py                 # every environment but the heavy ones (CI's)
    python scripts/install_matrix.py --all           # and ray and embeddings
    python scripts/install_matrix.py core server     # some (server also builds client)

Heavy: ray (Ray's wheels, then a local Ray cluster to deploy to) and embeddings (torch, transformers,
scipy, scikit-learn...) take 3 to 4 minutes each on 2 cores: more than CI's budget allows. Their
imports are still checked against their extras on every run, statically, by tests/test_dependencies.py.

Environments live in a temporary folder and are removed afterwards; pip's cache (PIP_CACHE_DIR,
default ~/.cache/pip) is kept, so a rerun installs from it. Exits 1 when any check fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECK = Path("tests/install/check.py")
TORCH = "torch==2.13.0"  # unpinned, torch (and sentence-transformers') pull a multi-GB CUDA build


@dataclass
class Environment:
    name: str
    extras: str  # what goes in the brackets: modelpod[extras]
    pins: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # environments the check uses as well
    checked_by: str | None = None  # another environment's check uses this one
    heavy: bool = False  # left out unless asked for: see the docstring
    seconds: dict[str, float] = field(default_factory=dict)


ENVIRONMENTS = [
    Environment("core", ""),
    Environment("client", "client", checked_by="server"),
    Environment("server", "server,examples", needs=("client",)),
    Environment("store", "store"),
    Environment("postgres", "postgres"),
    Environment("ray", "ray", heavy=True),
    Environment("torch", "torch", pins=(TORCH,)),
    Environment("embeddings", "embeddings", pins=(TORCH,), heavy=True),
]


def run(command: list[str], cwd: Path | None = None) -> None:
    subprocess.run(command, cwd=cwd, check=True)


def fresh_clone(into: Path) -> Path:
    """The checkout's files as a fresh clone has them: tracked and new, none that git ignores."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def build_wheel(clone: Path, into: Path) -> Path:
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(into), str(clone)])
    (wheel,) = into.glob("modelpod-*.whl")
    return wheel


def check_wheel_contents(clone: Path, wheel: Path) -> None:
    """Every file of the package in the checkout is in the wheel: .proto, static files, py.typed."""
    packaged = set(zipfile.ZipFile(wheel).namelist())
    wanted = {p.relative_to(clone).as_posix() for p in (clone / "modelpod").rglob("*") if p.is_file()}
    missing = sorted(wanted - packaged)
    if missing:
        raise SystemExit(f"the wheel lacks {len(missing)} files of the package: {missing}")
    print(f"the wheel has all {len(wanted)} files of the package")


def create(environment: Environment, wheel: Path, base: Path) -> Path:
    started = time.perf_counter()
    folder = base / environment.name
    run([sys.executable, "-m", "venv", str(folder)])
    python = folder / "bin" / "python"
    requirement = f"{wheel}[{environment.extras}]" if environment.extras else str(wheel)
    # --no-compile: byte-compiling every installed file (scipy, torch...) is most of an install's CPU
    # time on 2 cores; Python compiles what a check imports, on import.
    run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", requirement, *environment.pins])
    environment.seconds["install"] = time.perf_counter() - started
    return python


def check(environment: Environment, python: Path, clone: Path, pythons: dict[str, Path]) -> None:
    if environment.checked_by is not None:
        return
    started = time.perf_counter()
    arguments = [str(pythons[name]) for name in environment.needs]
    scratch = clone.parent / "scratch"  # the checks' data folders, removed with the rest
    scratch.mkdir(exist_ok=True)
    # Not for Ray: its socket paths under a long temporary folder would pass the 107-byte limit.
    env = None if environment.name == "ray" else dict(os.environ, TMPDIR=str(scratch))
    subprocess.run([str(python), str(CHECK), environment.name, *arguments], cwd=clone, env=env, check=True)
    environment.seconds["check"] = time.perf_counter() - started


def chosen(names: list[str]) -> list[Environment]:
    if "--all" in names:
        return ENVIRONMENTS
    if not names:
        return [e for e in ENVIRONMENTS if not e.heavy]
    unknown = set(names) - {e.name for e in ENVIRONMENTS}
    if unknown:
        raise SystemExit(f"no environment {sorted(unknown)}: choose from {[e.name for e in ENVIRONMENTS]}")
    wanted = set(names) | {needed for e in ENVIRONMENTS if e.name in names for needed in e.needs}
    wanted |= {e.checked_by for e in ENVIRONMENTS if e.name in names and e.checked_by}
    return [e for e in ENVIRONMENTS if e.name in wanted]


def main(names: list[str]) -> int:
    environments = chosen(names)
    os.environ.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    print(f"python {sys.version.split()[0]} ({sys.executable}); pip cache {os.environ['PIP_CACHE_DIR']}")
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="modelpod-matrix-") as temporary:
        base = Path(temporary)
        clone = fresh_clone(base / "clone")
        wheel = build_wheel(clone, base / "dist")
        check_wheel_contents(clone, wheel)
        pythons: dict[str, Path] = {}
        for environment in environments:
            print(f"--- {environment.name}: modelpod[{environment.extras}] {' '.join(environment.pins)}",
                  flush=True)  # fmt: skip
            try:
                pythons[environment.name] = create(environment, wheel, base)
                check(environment, pythons[environment.name], clone, pythons)
            except subprocess.CalledProcessError as error:
                print(f"FAILED {environment.name}: {error}", flush=True)
                failed.append(environment.name)
    print("environment   install s   check s")
    for environment in environments:
        install, checked = (environment.seconds.get(k) for k in ("install", "check"))
        by = f"  (checked by {environment.checked_by})" if environment.checked_by else ""
        print(f"{environment.name:<13} {_seconds(install):>9} {_seconds(checked):>9}{by}")
    if failed:
        print(f"the install matrix failed: {', '.join(failed)}")
        return 1
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
