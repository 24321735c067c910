"""Dependencies are declared where they are imported: every third-party import of a modelpod module
is provided by a distribution that the module's extra declares in pyproject.toml.

A module belongs to an extra by where it lives (MODULE_EXTRAS). An import inside
`with needs_extra("EXTRA", ...)` belongs to EXTRA instead; one inside `try: ... except ImportError`
is optional and needs no declaration; GUARDED lists the imports that run only once the caller has
checked that their extra is installed. Both top-level and function-level imports are walked.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache

import pytest

from conftest import ROOT

PACKAGE = ROOT / "modelpod"

# The extras a part of the package belongs to; the longest matching prefix wins, the rest is core.
MODULE_EXTRAS: dict[str, tuple[str, ...]] = {
    "modelpod": ("core",),
    "modelpod.server": ("server",),
    "modelpod.protocol": ("server", "client"),  # the wire formats both ends speak
    "modelpod.client": ("client",),
    "modelpod.registry.store": ("store",),
    "modelpod.registry.schema": ("store",),
    "modelpod.registry.endpoint_records": ("store",),  # a part of the Store
    "modelpod.ray": ("ray",),
    # The server's machinery outside modelpod.server: settings, logs, metrics, worker processes.
    "modelpod.server.settings": ("server",),
    "modelpod.observe.logs": ("server",),
    "modelpod.observe.prometheus": ("server",),
    "modelpod.observe.tracing": ("otel",),  # imported by `modelpod serve --otel` alone
    "modelpod.observe.span_export": ("otel",),  # and the two it imports for its export thread
    "modelpod.observe.otlp_exporters": ("otel",),
    "modelpod.observe.capture": ("server",),  # the recorder (its request and trace ids from logs)
    "modelpod.observe.capture_metrics": ("server",),
    "modelpod.observe.capture_codec": ("core",),  # read by modelpod capture / replay too
    "modelpod.observe.capture_files": ("core",),
    "modelpod.cli.replay_report": ("client",),  # imported by `modelpod replay` in needs_extra("client")
    "modelpod.registry.captures": ("store",),  # --capture-store: imported in needs_extra("store")
    "modelpod.workers.shm": ("server",),
    "modelpod.serving": ("server",),  # the server's transport-free core: only a server runs it
    # The runtimes of model files: each imported by `modelpod serve FILE` only for its own format.
    "modelpod.runtime.onnx_runtime": ("onnx",),
    "modelpod.runtime.sklearn_runtime": ("sklearn",),
    "modelpod.runtime.torch_files": ("torch",),
    "modelpod.runtime.torchscript_runtime": ("torch",),
    "modelpod.runtime.torch_export_runtime": ("torch",),
    "modelpod.runtime.transformers_runtime": ("transformers",),
    "modelpod.runtime.transformers_stream": ("transformers",),
    "modelpod.runtime.sentence_transformers_runtime": ("embeddings",),
    "modelpod.runtime.mlflow_runtime": ("mlflow",),
}

# (module, import): the extra the import needs; it runs only after a check that torch is there
# (devices.torch_available(), or a torch tensor already in hand).
GUARDED: dict[tuple[str, str], str] = {
    ("modelpod.runtime.checks", "torch"): "torch",
    ("modelpod.runtime.profiling", "torch"): "torch",
    ("modelpod.runtime.devices", "torch"): "torch",
    ("modelpod.runtime.inputs", "torch"): "torch",
    ("modelpod.runtime.stacking", "torch"): "torch",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def declared() -> dict[str, frozenset[str]]:
    """Each extra's distributions (normalized names), `modelpod[x]` followed, core's included."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = {"core": project["dependencies"], **project["optional-dependencies"]}

    def expand(extra: str, seen: frozenset[str]) -> set[str]:
        names: set[str] = set()
        for requirement in extras[extra]:
            included = re.match(r"modelpod\[([^\]]+)\]", requirement)
            if included is None:
                names.add(_normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)))  # type: ignore[union-attr]
                continue
            for other in included.group(1).split(","):
                names |= set() if other in seen else expand(other.strip(), seen | {extra})
        return names

    core = expand("core", frozenset())
    return {extra: frozenset(expand(extra, frozenset()) | core) for extra in extras}


@cache
def providers() -> dict[str, frozenset[str]]:
    """Import name -> the distributions that install it (several for namespaces such as `google`)."""
    return {
        name: frozenset(_normalized(d) for d in dists)
        for name, dists in importlib.metadata.packages_distributions().items()
    }


def extras_of(module: str) -> tuple[str, ...]:
    prefixes = [p for p in MODULE_EXTRAS if module == p or module.startswith(p + ".")]
    return MODULE_EXTRAS[max(prefixes, key=len)]


def _third_party(name: str) -> str | None:
    top = name.split(".", maxsplit=1)[0]
    return None if top in sys.stdlib_module_names or top in ("modelpod", "__future__") else top


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module]
    return []


def _needs_extra_of(node: ast.With) -> str | None:
    for item in node.items:
        call = item.context_expr
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "needs_extra"
                and call.args and isinstance(call.args[0], ast.Constant)):  # fmt: skip
            return str(call.args[0].value)
    return None


def _catches_import_error(node: ast.Try) -> bool:
    caught = {ast.unparse(h.type) for h in node.handlers if h.type is not None}
    return bool(caught & {"ImportError", "ModuleNotFoundError", "(ImportError, ModuleNotFoundError)"})


def imports(tree: ast.AST, extra: str | None = None) -> Iterator[tuple[str, str | None, int]]:
    """(top-level package, the extra a `needs_extra` block names or None, line) for each import;
    imports in a `try` that catches ImportError are optional and left out."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                yield from imports(child, extra)
            continue
        for name in _imported(node):
            top = _third_party(name)
            if top is not None:
                yield top, extra, node.lineno
        inner = _needs_extra_of(node) if isinstance(node, ast.With) else None
        yield from imports(node, inner or extra)


def undeclared(source: str, module: str) -> list[str]:
    """Why each third-party import of `module` is not declared by its extra; empty when all are."""
    problems = []
    for package, named, line in imports(ast.parse(source)):
        guarded = GUARDED.get((module, package))
        extras = (named,) if named else (guarded,) if guarded else extras_of(module)
        provided_by = providers().get(package)
        if provided_by is None:
            problems.append(f"{module}:{line}: no installed distribution provides {package!r}")
            continue
        for extra in extras:
            if extra not in declared():
                problems.append(f"{module}:{line}: needs_extra names {extra!r}, which pyproject lacks")
            elif not provided_by & declared()[extra]:
                problems.append(f"{module}:{line}: imports {package!r} ({', '.join(sorted(provided_by))}), "
                                f"which the {extra} extra does not declare")  # fmt: skip
    return problems


def test_every_import_is_declared_by_its_extra() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_generated" in path.parts:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        problems += undeclared(path.read_text(), module)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("modelpod.server.app", "import starlette", []),
        ("modelpod.server.app", "import sqlalchemy", ["the server extra does not declare"]),
        ("modelpod.runtime.stacking", "def f():\n    import httpx", ["the core extra does not declare"]),
        ("modelpod.protocol.v2", "import httpx", ["the server extra does not declare"]),
        ("modelpod.cli.main", "with needs_extra('store', 'x'):\n    import sqlalchemy", []),
        (
            "modelpod.cli.main",
            "with needs_extra('server', 'x'):\n    import sqlalchemy",
            ["server extra does not"],
        ),
        (
            "modelpod.cli.main",
            "with needs_extra('nope', 'x'):\n    import sqlalchemy",
            ["which pyproject lacks"],
        ),
        ("modelpod.runtime.memory", "try:\n    import psutil\nexcept ImportError:\n    pass", []),
        ("modelpod.runtime.memory", "try:\n    import psutil\nexcept OSError:\n    pass", ["core extra"]),
        ("modelpod.runtime.devices", "import torch", []),
        ("modelpod.runtime.latency", "import torch", ["the core extra does not declare"]),
        ("modelpod.ray", "import ray, starlette, sqlalchemy", []),  # [ray] includes server and store
        ("modelpod.x", "import no_such_distribution_anywhere", ["no installed distribution provides"]),
    ],
)
def test_the_check_finds_undeclared_imports(module: str, source: str, expected: list[str]) -> None:
    problems = undeclared(source, module)
    assert len(problems) == len(expected), problems
    for problem, wanted in zip(problems, expected, strict=True):
        assert wanted in problem
