"""The Dockerfile for containerised CI jobs (README.md, In CI). There is no Docker engine here, so
the file is parsed and its contract checked: the base image, git installed, the package
installed from what is copied in, /workspace, and `python -m pipeline` as entrypoint."""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def ignored(path: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.split("/")[0] == p for p in patterns)


def test_dockerfile_contract() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert set(keywords) <= {"FROM", "RUN", "ENV", "WORKDIR", "COPY", "ENTRYPOINT", "CMD"}
    runs = [args for k, args in steps if k == "RUN"]
    apt = next(r for r in runs if "apt-get install" in r)
    assert "apt-get update" in apt and "--no-install-recommends" in apt and " -y" in apt
    assert "git" in apt.split("apt-get install", 1)[1].split("&&")[0].split()
    assert "rm -rf /var/lib/apt/lists/*" in apt
    install = [r for r in runs if r.startswith("pip install")]
    assert install == ["pip install ."]
    assert keywords.index("COPY") < keywords.index("RUN", keywords.index("COPY"))  # copied before installing
    workdirs = [args for k, args in steps if k == "WORKDIR"]
    assert workdirs[-1] == "/workspace"
    entry = [args for k, args in steps if k == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["python", "-m", "pipeline"]


def test_copied_sources_exist_and_suffice_for_pip_install() -> None:
    copied: list[str] = []
    for keyword, args in instructions():
        if keyword == "COPY":
            *sources, _dest = args.split()
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not ignored(source), f"{source} is copied but excluded by .dockerignore"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["readme"] in copied  # setuptools reads it while building
    assert "pyproject.toml" in copied and "pipeline" in copied
    for local_state in (".git", ".venv", "runs", ".autopack", ".doit.db.dat"):
        assert ignored(local_state), local_state


def test_the_entrypoint_command_runs(tmp_path: Path) -> None:
    """`python -m pipeline status` (the image's default command) works in an empty workspace."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "status"], cwd=tmp_path, env=dict(os.environ),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
