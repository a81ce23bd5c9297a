"""The layers of docs/architecture.md hold: a lower layer never imports a higher one.

Read from the package's syntax trees (imports inside functions count too), so a shortcut added anywhere fails
here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "openworkbench"

# What each part may not import. Above everything: api (with web and cli, its pages and commands).
TOP = {"api", "web", "cli"}
FORBIDDEN: dict[str, set[str]] = {
    "safefs": TOP | {"services", "sessions", "proxy", "clusters", "store", "auth", "ides"},
    "store": TOP | {"services", "sessions", "proxy", "auth", "ides"},
    "clusters": TOP | {"services", "sessions", "proxy", "store", "auth", "ides"},
    "ides": TOP | {"services", "sessions", "store", "auth"},
    "auth": TOP | {"services", "sessions", "proxy", "clusters", "ides"},
    "proxy": TOP | {"services", "sessions", "clusters", "auth"},
    "services": TOP,
    "sessions": TOP,
}


def imported_parts(path: Path) -> set[str]:
    """The top-level parts of openworkbench that one module imports."""
    parts: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            bits = name.split(".")
            if bits[0] == "openworkbench" and len(bits) > 1:
                parts.add(bits[1])
    return parts


def violations(part: str) -> list[str]:
    found = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for bad in sorted(imported_parts(path) & FORBIDDEN[part]):
            found.append(f"{path.relative_to(PACKAGE)} imports openworkbench.{bad}")
    return found


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(part: str) -> None:
    assert (PACKAGE / part).is_dir(), part
    assert violations(part) == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from openworkbench.api.rpc import RpcEndpoint\n    import openworkbench.store\n")
    assert imported_parts(module) == {"api", "store"}
