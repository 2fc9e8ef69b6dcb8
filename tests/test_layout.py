"""The house's layout holds: layers import downwards only, no circle, small modules.

Read from the code's own imports (``ast``), so a move that breaks a rule fails here
with the module and the import named, not in a reviewer's reading:

- data flows one way: ``cec`` (a leaf) <- ``settings`` <- ``scrape`` <- ``http`` <- ``cli``;
  a module imports only from its own package or from a layer below it;
- no import circle among the exporter's modules;
- hypercorn's, h11's and h2's internals are reached from ``http/_hypercorn.py`` only;
- the collection's deadline is passed as a parameter: no context variables;
- no module of the exporter is longer than ``MAX_MODULE_LINES``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

PACKAGE = REPO / "exporter"
MAX_MODULE_LINES = 450

LAYERS = {
    "exporter": 0,  # the package's face: its version
    "exporter.cec": 1,
    "exporter.build": 1,
    "exporter.simulator": 1,
    "exporter.settings": 2,
    "exporter.logs": 2,
    "exporter.runtime": 2,  # its log lines carry their context as cec.text.fields
    "exporter.scrape": 3,
    "exporter.http": 4,
    "exporter.cli": 5,
    "exporter.__main__": 6,
}
"""Each part of the exporter and its layer: a module imports from lower layers only."""

HYPERCORN_INTERNALS = ("h11", "h2", "hypercorn")
HYPERCORN_PUBLIC = ("hypercorn.typing",)
HYPERCORN_MODULE = "exporter.http._hypercorn"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in ``path``, wherever it stands; ``from pkg import
    name`` counts as an import of ``pkg.name`` when that is a module."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    yield node.lineno, f"{node.module}.{alias.name}"


def layer(module: str) -> tuple[str, int]:
    """The part ``module`` belongs to (its longest prefix in LAYERS) and that part's layer."""
    parts = module.split(".")
    for size in range(len(parts), 0, -1):
        part = ".".join(parts[:size])
        if part in LAYERS:
            return part, LAYERS[part]
    raise AssertionError(f"{module} belongs to no layer: add its part to LAYERS")


def graph() -> dict[str, set[str]]:
    """Module -> the exporter's modules it imports."""
    return {
        name: {imported for _, imported in imports(path) if imported in MODULES}
        for name, path in MODULES.items()
    }


def test_every_module_belongs_to_a_layer() -> None:
    for name in MODULES:
        layer(name)


def test_imports_go_down_the_layers_only() -> None:
    climbing = []
    for name, path in MODULES.items():
        part, rank = layer(name)
        for line, imported in imports(path):
            if not imported.startswith("exporter") or imported not in MODULES:
                continue
            other, other_rank = layer(imported)
            if other != part and other_rank >= rank:
                climbing.append(f"{path.relative_to(REPO)}:{line} ({part}) imports {imported}")
    assert not climbing, "imports that climb or cross a layer:\n" + "\n".join(climbing)


def test_cec_is_a_leaf() -> None:
    """The vendor client imports nothing of the exporter outside ``exporter.cec``."""
    outside = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for name, path in MODULES.items()
        if name.startswith("exporter.cec")
        for line, imported in imports(path)
        if imported.startswith("exporter") and not imported.startswith("exporter.cec")
    ]
    assert not outside, "\n".join(outside)


def test_no_import_circle() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_only_the_hypercorn_module_reaches_hypercorn_internals() -> None:
    reaching = [
        f"{path.relative_to(REPO)}:{line} imports {imported}"
        for name, path in MODULES.items()
        if name != HYPERCORN_MODULE
        for line, imported in imports(path)
        if imported.split(".")[0] in HYPERCORN_INTERNALS and imported not in HYPERCORN_PUBLIC
    ]
    assert not reaching, "\n".join(reaching)


def test_the_deadline_is_no_context_variable() -> None:
    users = [
        f"{path.relative_to(REPO)}:{line}"
        for path in MODULES.values()
        for line, imported in imports(path)
        if imported == "contextvars"
    ]
    assert not users, "context variables carry state invisibly: pass it as a parameter"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines; split it by job"


def test_the_import_reader_sees_what_the_rules_are_about(tmp_path: Path) -> None:
    """Guards the checks above against passing because they read nothing."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from exporter.scrape import Exporter\n"
        "from exporter.cec import client\n"
        "def f():\n    import contextvars\n"
    )
    assert list(imports(sample)) == [
        (1, "exporter.scrape"),
        (2, "exporter.cec"),
        (2, "exporter.cec.client"),
        (4, "contextvars"),
    ]
    assert layer("exporter.cec.client") == ("exporter.cec", 1)
    assert layer("exporter.http._hypercorn") == ("exporter.http", 4)
    assert "exporter.cec.client" in graph()["exporter.cec"]
    assert len(MODULES) > 40
