"""The architecture holds: layers and folders import downwards only, with no cycles (the
import-linter contracts in pyproject.toml), and subprocess, YAML and git each have one home."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pipeline"


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


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


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The contract is live: a copy of the package whose core imports run fails it."""
    shutil.copytree(PACKAGE, tmp_path / "pipeline", ignore=shutil.ignore_patterns("data", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "pipeline" / "core" / "errors.py").open("a") as fh:
        fh.write("\nfrom pipeline.run import driver  # noqa\n")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "pipeline.core is not allowed to import pipeline.run" in done.stdout


@pytest.mark.parametrize(
    ("needle", "home"),
    [("subprocess", {"core.proc"}), ("yaml", {"core.yamlio"}), ("ruamel", {"core.yamlio"})],
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
        if _module_name(p) != "vcs.local" and ('"git"' in p.read_text() or "'git'" in p.read_text())
    ]
    assert not offenders, f"git commands outside pipeline/vcs/local.py: {offenders}"


def test_no_module_is_long_without_a_reason() -> None:
    """A module over 500 lines says at its top why it is one module."""
    long = [
        str(p.relative_to(ROOT))
        for p in _sources()
        if len(p.read_text().splitlines()) > 500 and "One module on purpose" not in p.read_text()[:3000]
    ]
    assert not long, f"split these or say 'One module on purpose: <why>' in their docstring: {long}"
