"""Layers import downwards only (CONTRIBUTING.md); subprocess, YAML and git each live in one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

LAYERS: dict[str, int] = {
    "errors": 0, "failpoints": 0,
    "models": 0,
    "ids": 0,
    "yamlio": 1,
    "validate": 1,
    "proc": 1,
    "jsonio": 1,
    "git": 2,
    "gitremote": 2,
    "store": 2,
    "config": 2,
    "planfile": 2,
    "catalog": 2,
    "licences": 1,
    "mdplan": 3,
    "catalog_scan": 4,
    "masking": 2,
    "charts": 3,
    "states": 3,
    "strategy": 3,
    "planning": 3,
    "issues": 3,
    "budgets": 3,
    "spec": 3,
    "usage": 3, "presets": 3,
    "rollup": 4,
    "agents": 4,
    "gate": 4,
    "ci": 4,
    "recorder": 4,
    "runner": 5,
    "reports": 5,
    "demo": 5,
    "context": 5,
    "starting": 5,
    "terminal": 5,
    "status": 5, "chaining": 5, "outcomes": 5, "building": 5, "auditing": 5, "verifying": 5,
    "checks": 5,
    "explain": 5,
    "crash": 5,
    "backlog": 5,
    "debt": 5,
    "promote": 5,
    "scaffold": 5,
    "citemplates": 5,
    "cli": 6,
    "tasks": 6,
    "__main__": 6,
    "__init__": 0,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _sources() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "data" not in p.relative_to(PACKAGE).parts]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = _module_name(path)
    assert own in LAYERS, f"{path}: add module '{own}' to a layer in tests/test_layers.py and CONTRIBUTING.md"
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "pipeline" or len(parts) < 2 or parts[1] not in LAYERS:
            continue
        assert LAYERS[parts[1]] <= LAYERS[own], f"{path}: layer {LAYERS[own]} imports {name} (layer {LAYERS[parts[1]]})"


@pytest.mark.parametrize(
    ("needle", "home"),
    [("subprocess", {"proc"}), ("yaml", {"yamlio"}), ("ruamel", {"yamlio"})],
)
def test_single_home(needle: str, home: set[str]) -> None:
    offenders = [
        str(p)
        for p in _sources()
        if _module_name(p) not in home and any(n.split(".")[0] == needle for n in _imports(p))
    ]
    assert not offenders, f"only {home} may import {needle}: {offenders}"


def test_git_runs_only_in_the_git_adapter() -> None:
    offenders = [
        str(p)
        for p in _sources()
        if _module_name(p) != "git" and ('"git"' in p.read_text() or "'git'" in p.read_text())
    ]
    assert not offenders, f"git commands outside pipeline/git.py: {offenders}"
