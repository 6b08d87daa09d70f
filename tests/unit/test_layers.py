"""The import graph points one way: the HTTP edge imports the service, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import vary

PACKAGE = Path(vary.__file__).parent
HTTP = ("vary.api",)
# The HTTP edge and what composes it: only these may import vary.api (DESIGN.md).
EDGE = ("vary.api", "vary.app", "vary.cli")
# The service and what wires it together: nothing below them may import these.
SERVICE = ("vary.serving", "vary.services", "vary.gateway", "vary.engines.registry", "vary.local_model")
# Used by the programs only (the server's CLI, the `vary create` client, the tests' server helper).
PROGRAMS = (
    "vary.__main__",
    "vary.serve",
    "vary.pull",
    "vary.create",
    "vary.testing",
    "vary.usage_report",
    "vary.logs",
    "vary.memory",
    "vary.ray_app",  # composes the app and the models as Ray Serve deployments, as vary.app composes them
)


def _modules() -> dict[str, set[str]]:
    """Each vary module and the vary modules it imports, wherever in the file the import is."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vary"):
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names if alias.name.startswith("vary"))
        graph[name] = imported
    return graph


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_nothing_outside_the_edge_imports_the_http_layer() -> None:
    offenders = {
        module: sorted(m for m in imports if _within(m, HTTP))
        for module, imports in _modules().items()
        if not _within(module, EDGE) and any(_within(m, HTTP) for m in imports)
    }
    assert offenders == {}


def test_lower_layers_never_import_the_service() -> None:
    offenders = {
        module: sorted(m for m in imports if _within(m, SERVICE))
        for module, imports in _modules().items()
        if not _within(module, EDGE + SERVICE + PROGRAMS) and any(_within(m, SERVICE) for m in imports)
    }
    assert offenders == {}
