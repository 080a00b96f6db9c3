"""Where a run lives: its store, its target repository, branch and worktree (layer L5)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.git import LocalGitCli
from pipeline.recorder import Recorder
from pipeline.store import RunStore

WORKTREES_DIR = Path(".autopack") / "worktrees"
_RECORD_IGNORE = shutil.ignore_patterns(".lock", "*.tmp.*", ".*.tmp.*")


def branch_name(run_id: str) -> str:
    return f"autonomous/{run_id}"


def tag_name(run_id: str, phase_id: str) -> str:
    return f"autonomous/{run_id}/{phase_id}"


def target_repo(workspace: Path, repo: str) -> Path:
    path = Path(repo)
    return (path if path.is_absolute() else workspace / path).resolve()


def worktree_path(workspace: Path, run_id: str) -> Path:
    return (workspace / WORKTREES_DIR / run_id).resolve()


def record_lives_in_branch(workspace: Path, target: Path) -> bool:
    """True when the target is the workspace's own repository (DESIGN §4)."""
    git_dir = workspace / ".git"
    return git_dir.exists() and workspace.resolve() == target.resolve()


@dataclass
class RunContext:
    workspace: Path
    store: RunStore
    rec: Recorder
    git: LocalGitCli
    worktree: Path
    record_in_branch: bool

    @property
    def branch(self) -> str:
        return self.rec.run.branch

    def copy_record_into_worktree(self) -> None:
        """The branch carries the record as it stands (DESIGN §4 'Where the record lives')."""
        if not self.record_in_branch:
            return
        dest = self.worktree / "runs" / self.store.run_id
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.store.run_dir, dest, ignore=_RECORD_IGNORE)


def open_context(workspace: Path, run_id: str) -> RunContext:
    store = RunStore(workspace, run_id)
    rec = Recorder.open(store)
    target = Path(rec.run.target_repo)
    return RunContext(
        workspace=workspace,
        store=store,
        rec=rec,
        git=LocalGitCli(target),
        worktree=Path(rec.run.worktree),
        record_in_branch=record_lives_in_branch(workspace, target),
    )
