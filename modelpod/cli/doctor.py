"""`modelpod doctor`: what this installation has, in a form to paste into a bug report."""

from __future__ import annotations

import importlib.metadata
import platform
import re
import sys

from modelpod._version import __version__
from modelpod.extras import FEATURES, install_hint

_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w-]+)["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SELF = re.compile(r"modelpod\[([^\]]+)\]")


def extra_requirements() -> dict[str, list[str]]:
    """Each extra's distributions, read from modelpod's installed metadata; `modelpod[x]` expanded."""
    direct: dict[str, list[str]] = {}
    for requirement in importlib.metadata.requires("modelpod") or []:
        spec, _, marker = requirement.partition(";")
        extra = _EXTRA_MARKER.search(marker)
        if extra is not None:
            direct.setdefault(extra.group(1), []).append(spec.strip())
    return {extra: _expand(extra, direct, set()) for extra in direct}


def _expand(extra: str, direct: dict[str, list[str]], seen: set[str]) -> list[str]:
    names: list[str] = []
    seen.add(extra)
    for spec in direct.get(extra, []):
        included = _SELF.match(spec)
        if included is None:
            match = _NAME.match(spec)
            names += [match.group(0)] if match else []
            continue
        for other in included.group(1).split(","):
            if other.strip() not in seen:
                names += _expand(other.strip(), direct, seen)
    return list(dict.fromkeys(names))


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def report() -> str:
    lines = [
        f"modelpod {__version__}",
        f"Python {platform.python_version()} ({sys.executable})",
        f"platform {platform.platform()}",
    ]
    try:
        extras = extra_requirements()
    except importlib.metadata.PackageNotFoundError:
        extras = {}
        lines.append("modelpod's package metadata is missing: is it installed (pip install .)?")
    installed = {extra: all(installed_version(d) for d in names) for extra, names in extras.items()}
    lines.append("extras:")
    for extra, names in extras.items():
        if extra == "dev":  # the test tools: every extra again, and long
            continue
        versions = ", ".join(f"{d} {installed_version(d) or '(missing)'}" for d in names)
        lines.append(f"  {extra:<11} {'yes' if installed[extra] else 'no ':<4} {versions}")
    lines += _torch_lines()
    lines.append("features:")
    for extra, feature in FEATURES.items():
        state = "yes" if installed.get(extra) else f"no: {install_hint(extra)}"
        lines.append(f"  {feature}: {state}")
    return "\n".join(lines)


def _torch_lines() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch: not installed"]
    if not torch.cuda.is_available():
        return [f"torch {torch.__version__}: no CUDA device"]
    names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return [f"torch {torch.__version__} (CUDA {torch.version.cuda}): " + ", ".join(names)]
