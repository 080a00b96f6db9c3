"""Where a run lives: its store, its target repository, branch and worktree (layer L5)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from pipeline.git import LocalGitCli
from pipeline.recorder import Recorder
from pipeline.store import RunStore

WORKTREES_DIR = Path(".autopack") / "worktrees"
# A copy made less than this after its source's mtime is compared byte for byte: a file
# rewritten within one timestamp tick keeps its size and mtime (git's "racy" entries).
# Ticks are at most 10 ms where timestamps have sub-second parts (ext4, xfs, btrfs,
# tmpfs); 2 s covers whole-second ones (FAT, HFS+, some network filesystems).
_RACY_NS = 100_000_000
_RACY_WHOLE_SECONDS_NS = 2_000_000_000

# One LocalGitCli per target repository in this process: what it has verified about a
# run's worktree (re-checked cheaply on every use) serves every step `run` drives.
_GIT_CLIS: dict[Path, LocalGitCli] = {}
# Phase descriptions by (plan file, sha256 of its bytes): a frozen plan is parsed once per
# process, not once per phase (the round-trip YAML load and its checks take ~0.1 s).
_DESCRIPTIONS: dict[tuple[Path, str], dict[str, str]] = {}


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


def git_for(target: Path) -> LocalGitCli:
    """The process's LocalGitCli for the repository at `target`."""
    key = Path(target)
    if key not in _GIT_CLIS:
        _GIT_CLIS[key] = LocalGitCli(key)
    return _GIT_CLIS[key]


@dataclass
class RunContext:
    """A run opened for writing. As a context manager, it writes what the recorder still
    holds (`Recorder.flush`) when the block ends, however it ends."""

    workspace: Path
    store: RunStore
    rec: Recorder
    git: LocalGitCli
    worktree: Path
    record_in_branch: bool

    def __enter__(self) -> RunContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rec.flush()

    @property
    def branch(self) -> str:
        return self.rec.run.branch

    def phase_description(self, phase_id: str) -> str:
        """The plan's description of `phase_id` ("" if it has none)."""
        from pipeline.planfile import load_plan, plan_sha256

        path = self.store.plan_path
        key = (path.resolve(), plan_sha256(path))
        if key not in _DESCRIPTIONS:
            plan, _ = load_plan(path)
            _DESCRIPTIONS[key] = {p.phase_id: p.description for _t, p in plan.phases()}
        return _DESCRIPTIONS[key].get(phase_id, "")

    def copy_record_into_worktree(self) -> None:
        """The branch carries the record as it stands (DESIGN §4 'Where the record lives').

        run.json is brought up to date first. Only what changed is copied: a file whose
        size and mtime match its copy is left alone (copies keep the source's mtime), files
        gone from the record are removed from the copy.
        """
        if not self.record_in_branch:
            return
        self.rec.flush()
        dest = self.worktree / "runs" / self.store.run_id
        for level in (dest.parent, dest):
            if level.is_symlink() or (level.exists() and not level.is_dir()):
                level.unlink()
        sync_tree(self.store.run_dir, dest)


def _ignored(name: str) -> bool:
    """Never part of the record: the run lock and the temp files of atomic writes."""
    return name == ".lock" or ".tmp." in name


def sync_tree(src: Path, dest: Path) -> None:
    """Make `dest` a copy of `src` (minus the lock and temp files), copying only what differs.

    Like `rmtree(dest)` + `copytree(src, dest)` (symbolic links in `src` are followed), but
    a file whose copy has the same size and mtime is kept (copy2 keeps the mtime). An entry
    of `dest` that is not a regular file or directory (a link an agent left in the
    worktree) is removed, never written through.
    """
    _sync(os.fspath(src), os.fspath(dest))


def _sync(src: str, dest: str) -> None:
    try:
        with os.scandir(dest) as it:
            existing = {e.name: e for e in it}
    except FileNotFoundError:
        os.makedirs(dest)
        existing = {}
    with os.scandir(src) as it:
        for entry in it:
            if _ignored(entry.name):
                continue
            old = existing.pop(entry.name, None)
            target = os.path.join(dest, entry.name)
            if entry.is_dir():
                if old is not None and not old.is_dir(follow_symlinks=False):
                    _remove(old)
                _sync(entry.path, target)
            elif entry.is_file():
                if old is not None and not old.is_file(follow_symlinks=False):
                    _remove(old)
                    old = None
                if old is None or not _same_copy(entry, old):
                    shutil.copy2(entry.path, target)
            elif old is not None:
                _remove(old)
    for old in existing.values():  # gone from the record
        _remove(old)


def _same_copy(src: os.DirEntry[str], dest: os.DirEntry[str]) -> bool:
    """`dest` is a copy of `src` as it is now.

    Same size and mtime, and `src` last changed well before the copy was made (the copy's
    ctime); otherwise the bytes decide.
    """
    a, b = src.stat(), dest.stat(follow_symlinks=False)
    if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns:
        return False
    coarse = a.st_mtime_ns % 1_000_000_000 == 0 or b.st_ctime_ns % 1_000_000_000 == 0
    if a.st_mtime_ns < b.st_ctime_ns - (_RACY_WHOLE_SECONDS_NS if coarse else _RACY_NS):
        return True
    with open(src.path, "rb") as f, open(dest.path, "rb") as g:
        return f.read() == g.read()


def _remove(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)


def open_context(workspace: Path, run_id: str) -> RunContext:
    store = RunStore(workspace, run_id)
    rec = Recorder.open(store)
    target = Path(rec.run.target_repo)
    return RunContext(
        workspace=workspace,
        store=store,
        rec=rec,
        git=git_for(target),
        worktree=Path(rec.run.worktree),
        record_in_branch=record_lives_in_branch(workspace, target),
    )
