"""The package's layers, checked from its modules' imports (see ARCHITECTURE.md).

Each package may import only from the layers below it; no module imports the package face
(`modelpod/__init__`); and no two modules import each other, directly or around a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "modelpod"

VOCABULARY = {"errors", "types", "_version", "extras"}
# what each part may import besides itself and the vocabulary
ALLOWED: dict[str, set[str]] = {
    "vocabulary": set(),
    "protocol": set(),
    "runtime": set(),
    "workers": {"protocol", "runtime"},
    "observe": set(),
    "serving": {"protocol", "runtime", "workers", "observe"},
    "client": {"protocol"},
    "registry": {"runtime", "client"},
    "server": {"protocol", "runtime", "workers", "observe", "serving", "registry"},
    "ray": {"protocol", "runtime", "workers", "observe", "serving", "registry", "server"},
    "cli": {"protocol", "runtime", "workers", "observe", "serving", "registry", "server", "client", "ray"},
    "face": {
        "protocol",
        "runtime",
        "workers",
        "observe",
        "serving",
        "registry",
        "server",
        "client",
        "ray",
        "cli",
    },
}
# the model contract is what users import: it stands on the vocabulary alone
CONTRACT = "modelpod.runtime.model"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return "face"
    if parts[1] in VOCABULARY:
        return "vocabulary"
    return parts[1]


def imports_of(path: Path, typing_too: bool = True) -> Iterator[tuple[str, int]]:
    """Every modelpod module `path` imports, anywhere in it, with the line; with `typing_too` False,
    not those under `if TYPE_CHECKING:` (they make no circle when the program runs)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in _walk(tree, typing_too):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "modelpod":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "modelpod":
                continue
            for alias in node.names:  # `from modelpod.x import y`: y may be a module itself
                candidate = f"{node.module}.{alias.name}"
                yield (candidate if candidate in MODULES else node.module), node.lineno


def _walk(node: ast.AST, typing_too: bool) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if not typing_too and isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
            for other in child.orelse:  # `else:` of `if TYPE_CHECKING:` does run
                yield other
                yield from _walk(other, typing_too)
            continue
        yield child
        yield from _walk(child, typing_too)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py") if "_generated" not in path.parts}


def graph() -> dict[str, set[str]]:
    return {
        module: {imported for imported, _ in imports_of(path, typing_too=False) if imported in MODULES}
        for module, path in MODULES.items()
    }


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_from_layers_below(module: str) -> None:
    part = part_of(module)
    allowed = ALLOWED[part] | {part, "vocabulary"}
    wrong = [
        f"line {line}: {imported} ({part_of(imported)})"
        for imported, line in imports_of(MODULES[module])
        if part_of(imported) not in allowed
    ]
    assert not wrong, f"{module} ({part}) imports from a layer it may not: {wrong}"


def test_nothing_imports_the_package_face() -> None:
    offenders = [
        f"{module} line {line}"
        for module, path in MODULES.items()
        if part_of(module) != "face"
        for imported, line in imports_of(path)
        if imported == "modelpod"
    ]
    assert not offenders


def test_the_contract_stands_on_the_vocabulary() -> None:
    """The contract imports the vocabulary, and leaves that import nothing else (its state files)."""

    def leaf(name: str) -> bool:
        return all(part_of(inner) == "vocabulary" for inner, _ in imports_of(MODULES[name]))

    imported = {name for name, _ in imports_of(MODULES[CONTRACT])}
    wrong = [name for name in imported if part_of(name) != "vocabulary" and not leaf(name)]
    assert not wrong, f"the model contract imports {wrong}"


def test_no_import_circles() -> None:
    edges = graph()
    circles = [circle for circle in strongly_connected(edges) if len(circle) > 1]
    assert not circles, f"modules importing each other around a circle: {circles}"


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_checks_can_fail() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"], ["c"]]
    assert part_of("modelpod.serving.service") == "serving"
    assert "serving" not in ALLOWED["runtime"]


MODULE_LINES = 400
CLASS_LINES = 250  # a class past this is doing more than one job


def test_modules_and_classes_stay_small() -> None:
    too_big = []
    for module, path in MODULES.items():
        source = path.read_text()
        if source.count("\n") > MODULE_LINES:
            too_big.append(f"{module}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > CLASS_LINES:
                    too_big.append(f"{module}.{node.name}: {size} lines")
    assert not too_big, f"split these: {too_big}"
