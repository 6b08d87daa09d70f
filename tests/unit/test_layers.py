"""The import graph points one way, down the layers that docs/architecture.md draws; no function is too long.

Each module belongs to one layer; an import may go to its own layer or a lower one, never up. Layers
of the same rank sit side by side and never import each other. No two modules, and no two packages,
import each other. Every import counts, wherever in the file it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vary

PACKAGE = Path(vary.__file__).parent

# (rank, module prefixes), top of the stack first: the same order as docs/architecture.md.
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "programs": (9, ("vary.__main__", "vary.testing")),
    "cli": (8, ("vary.cli",)),
    "cluster": (7, ("vary.cluster",)),
    "app": (6, ("vary.app",)),
    "api": (5, ("vary.api",)),
    "evaluation": (5, ("vary.evaluation",)),  # beside the edge: another client of the service
    "service": (4, ("vary.service",)),
    "targets": (3, ("vary.targets",)),
    "safety": (3, ("vary.safety",)),
    "ops": (2, ("vary.ops",)),
    "engines": (1, ("vary.engines",)),
    "state": (1, ("vary.state",)),
    "kernel": (
        0,
        (
            "vary.errors",
            "vary.echo",
            "vary.request",
            "vary.controls",
            "vary.imaging",
            "vary.settings",
            "vary.datadir",
            "vary.key_limits",
            "vary.options",
            "vary",
        ),
    ),
}
TOP_LEVEL_LIMIT = 13


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer_of(module: str) -> str:
    best, length = "", -1
    for name, (_, prefixes) in LAYERS.items():
        for prefix in prefixes:
            if _within(module, prefix) and len(prefix) > length:
                best, length = name, len(prefix)
    assert best, f"{module} belongs to no layer: add it to LAYERS and to docs/architecture.md"
    return best


def _modules() -> dict[str, set[str]]:
    """Each vary module and the vary modules it imports (resolved to modules that exist)."""
    names: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vary"):
                for alias in node.names:  # `from vary.cli import create` imports the module vary.cli.create
                    full = f"{node.module}.{alias.name}"
                    imported.add(full if full in names else node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("vary"))
        graph[name] = {module for module in imported if module in names and module != name}
    return graph


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else "vary"


def test_every_module_has_a_layer() -> None:
    for module in _modules():
        _layer_of(module)


def test_no_import_climbs_a_layer() -> None:
    offenders = []
    for module, imports in _modules().items():
        layer = _layer_of(module)
        rank = LAYERS[layer][0]
        for target in imports:
            target_layer = _layer_of(target)
            target_rank = LAYERS[target_layer][0]
            if target_rank > rank or (target_rank == rank and target_layer != layer):
                offenders.append(f"{module} ({layer}) -> {target} ({target_layer})")
    assert offenders == []


def test_no_two_modules_import_each_other() -> None:
    graph = _modules()
    assert sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and a in graph.get(b, set())) == []


def test_no_circle_of_imports() -> None:
    graph = _modules()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_no_two_packages_import_each_other() -> None:
    packages: dict[str, set[str]] = {}
    for module, imports in _modules().items():
        packages.setdefault(_package_of(module), set()).update(_package_of(t) for t in imports)
    pairs = sorted(
        f"{a} <-> {b}"
        for a, targets in packages.items()
        for b in targets
        if a < b and a != "vary" and b != "vary" and a in packages.get(b, set())
    )
    assert pairs == []


def test_the_top_level_stays_small() -> None:
    top = sorted(path.stem for path in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_LIMIT, top


def test_nothing_outside_the_edge_imports_the_http_layer() -> None:
    offenders = {
        module: sorted(m for m in imports if _within(m, "vary.api"))
        for module, imports in _modules().items()
        if LAYERS[_layer_of(module)][0] < LAYERS["api"][0] and any(_within(m, "vary.api") for m in imports)
    }
    assert offenders == {}


def test_no_function_is_longer_than_80_lines() -> None:
    """A function a reader cannot take in at once is split (the HTTP protocol is a class, not a factory)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
