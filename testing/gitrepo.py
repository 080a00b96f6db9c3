"""Real temporary git repositories for tests (the tests use git directly; the product
uses it only through pipeline.vcs.adapter)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.invalid",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.invalid",
}


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in `repo` and return its stdout (stripped)."""
    env = {**os.environ, **IDENTITY}
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed in {repo}:\n{done.stderr}")
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None, branch: str = "main") -> Path:
    """A repository at `path` with one commit holding `files` on `branch`."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", branch)
    for rel, text in (files or {"README.md": "sample\n"}).items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def write_script(path: Path, body: str) -> Path:
    """An executable script (an agent, a CI step) with `body` as its text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


def tree_snapshot(repo: Path) -> dict[str, bytes]:
    """Every file under `repo` except .git, as bytes, to compare before/after."""
    out: dict[str, bytes] = {}
    for p in sorted(repo.rglob("*")):
        rel = p.relative_to(repo)
        if rel.parts and rel.parts[0] == ".git":
            continue
        if p.is_file() and not p.is_symlink():
            out[str(rel)] = p.read_bytes()
    return out


def init_repo_here(path: Path) -> Path:
    """Make the existing directory `path` a git repository on `main` with one empty commit
    (files in it stay untracked): a workspace that is its own plan's target."""
    git(path, "init", "-q", "-b", "main")
    git(path, "commit", "-q", "--allow-empty", "-m", "init")
    return path
