"""The import rule of docs/internals.md, checked on the source: layers import downwards only, and
the module import graph has no cycle.

Every import counts, also those inside functions and under TYPE_CHECKING: a cycle held together
by a late import is still a cycle. `protocol` imports nothing from pgml_server and no asyncio,
pglast or numpy.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pgml_server"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("start-up", ("pgml_server", "pgml_server.config", "pgml_server.dsn", "pgml_server.logs",
                  "pgml_server.embedded")),
    ("db", ("pgml_server.db",)),
    ("ml", ("pgml_server.ml",)),
    ("pipeline", ("pgml_server.pipeline",)),
    ("functions", ("pgml_server.functions",)),
    ("sql", ("pgml_server.sql", "pgml_server.scheduling")),
    ("proxy", ("pgml_server.proxy", "pgml_server.dashboard")),
    ("server", ("pgml_server.server",)),
    ("cli", ("pgml_server.cli",)),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports_of(path: Path) -> set[str]:
    """The pgml_server modules `path` imports, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if is_module(sub) else target)
    return {t for t in found if t == "pgml_server" or t.startswith("pgml_server.")} - {name}


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} belongs to no layer: add it to LAYERS and docs/internals.md"
    return rank


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import that goes up the layer order, as 'module (layer) imports target (layer)'."""
    wrong = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                wrong.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]})")
    return wrong


def cycles_of(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles a depth-first walk meets, each as the path that closes it."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_import_goes_down_the_layers():
    wrong = upward_imports(graph())
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    cycles = cycles_of(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_protocol_is_pure():
    for path in (ROOT / "protocol").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                top = name.split(".")[0]
                assert top not in ("pgml_server", "asyncio", "pglast", "numpy"), f"{path.name} imports {name}"


def test_the_checks_see_a_wrong_import_and_a_cycle(tmp_path):
    """The checks are not vacuous: an upward import and a cycle in a made-up graph are reported,
    and a module's imports are read with relative imports resolved."""
    edges = {"pgml_server.db.executor": {"pgml_server.sql.router"},
             "pgml_server.sql.router": {"pgml_server.sql.compiler"},
             "pgml_server.sql.compiler": {"pgml_server.sql.router"}}
    assert upward_imports(edges) == ["pgml_server.db.executor (db) imports pgml_server.sql.router (sql)"]
    assert cycles_of(edges) == [["pgml_server.sql.router", "pgml_server.sql.compiler", "pgml_server.sql.router"]]
    assert {"pgml_server.sql.router", "pgml_server.proxy.session"} <= imports_of(PACKAGE / "server.py")
