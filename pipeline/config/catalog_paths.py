"""Where a workspace keeps its own stack profiles, feature catalog, plan templates and reuse
candidates: the paths alone, so `doit validate` can see there are none without importing
the catalog's rules and models (pipeline.config.catalog, ~8 ms of its start-up)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

CATALOG_FILE = Path("catalog") / "features.yaml"
STACKS_FILE = Path("profiles") / "stacks.yaml"
TEMPLATES_DIR = Path("catalog") / "templates"
CANDIDATES_DIR = Path("catalog") / "candidates"


def candidate_files(workspace: Path) -> Iterator[Path]:
    directory = Path(workspace) / CANDIDATES_DIR
    if directory.is_dir():
        yield from sorted(directory.glob("*.yaml"))


def has_catalog_files(workspace: Path) -> bool:
    """Whether the workspace has any of them (the built-in ones are the test suite's to check)."""
    return any((Path(workspace) / p).exists() for p in (CATALOG_FILE, STACKS_FILE, TEMPLATES_DIR, CANDIDATES_DIR))
