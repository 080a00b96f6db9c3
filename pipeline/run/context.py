"""Where a run lives: its store, its target repository, branch and worktree."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from pipeline.config.workspace import Workspace
from pipeline.core import sandbox
from pipeline.core.jsonio import write_if_missing
from pipeline.plan.target import current_target
from pipeline.run.recorder import Recorder
from pipeline.store.rundir import RunStore
from pipeline.vcs.adapter import GitAdapter
from pipeline.vcs.codec import outbox_from_env, timeout_from_env
from pipeline.vcs.remote import make_adapter

WORKTREES_DIR = Path(".autopack") / "worktrees"
# A copy made less than this after its source's mtime is compared byte for byte: a file
# rewritten within one timestamp tick keeps its size and mtime (git's "racy" entries).
# Ticks are at most 10 ms where timestamps have sub-second parts (ext4, xfs, btrfs,
# tmpfs); 2 s covers whole-second ones (FAT, HFS+, some network filesystems).
_RACY_NS = 100_000_000
_RACY_WHOLE_SECONDS_NS = 2_000_000_000

# One git adapter per target repository (and AUTOPACK_GIT_OUTBOX setting) in this process:
# what LocalGitCli has verified about a run's worktree (re-checked cheaply on every use)
# serves every step `run` drives.
_GIT_CLIS: dict[tuple[Path, Path | None, float | None], GitAdapter] = {}
# Phase descriptions by (plan file, sha256 of its bytes): a frozen plan is parsed once per
# process, not once per phase (the round-trip YAML load and its checks take ~0.1 s).
_DESCRIPTIONS: dict[tuple[Path, str], dict[str, str]] = {}


def branch_name(run_id: str) -> str:
    return f"autonomous/{run_id}"


def tag_name(run_id: str, phase_id: str) -> str:
    return f"autonomous/{run_id}/{phase_id}"




def worktree_path(workspace: Path, run_id: str) -> Path:
    """Where the run's linked worktree goes; the folder ignores itself, so the user's
    `git status` and `git add -A` never see a worktree (an embedded repository)."""
    write_if_missing(
        workspace / WORKTREES_DIR.parts[0] / ".gitignore",
        "# Autopack's worktrees and scratch space: never committed.\n*\n",
    )
    return (workspace / WORKTREES_DIR / run_id).resolve()


def record_lives_in_branch(workspace: Path, target: Path) -> bool:
    """True when the target is the workspace's own repository (docs/architecture.md, The run directory)."""
    git_dir = workspace / ".git"
    return git_dir.exists() and workspace.resolve() == target.resolve()


def git_for(target: Path) -> GitAdapter:
    """The process's git adapter for the repository at `target`: LocalGitCli, or the remote
    git worker's RemoteGitAdapter when AUTOPACK_GIT_OUTBOX is set (pipeline.vcs.codec)."""
    outbox = outbox_from_env()
    key = (Path(target), outbox, timeout_from_env() if outbox else None)
    if key not in _GIT_CLIS:
        _GIT_CLIS[key] = make_adapter(key[0])
    return _GIT_CLIS[key]


@dataclass
class RunContext:
    """A run opened for writing. As a context manager, it writes what the recorder still
    holds (`Recorder.flush`) when the block ends, however it ends."""

    workspace: Path
    store: RunStore
    rec: Recorder
    git: GitAdapter
    worktree: Path
    record_in_branch: bool
    ws: Workspace
    _confinement: sandbox.Confinement | None = field(default=None, repr=False)
    # Phases whose CI passed in this context: their snapshot commit cannot exist yet (no
    # process died since), so `verify.snapshot` does not look for it in the history.
    verified_here: set[str] = field(default_factory=set)

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

    @property
    def in_place(self) -> bool:
        """The run works in the workspace's own checkout (of its integration branch)."""
        return self.worktree == self.workspace.resolve()

    def confinement(self) -> sandbox.Confinement:
        """How this session's untrusted steps are confined; decided once, and recorded
        in run.json (`isolation`) with an event when it differs from the last session's.
        Raises when the ruleset requires a sandbox that is not usable here."""
        if self._confinement is None:
            rule = self.rec.strategy.sandbox
            level, why = sandbox.decide(rule.isolation == "required")
            _own, common = sandbox.git_dirs(self.worktree / ".git")
            readonly = [self.store.run_dir.parent, self.workspace / ".git", self.workspace / WORKTREES_DIR.parts[0]]
            if common is not None:
                readonly.append(common)
            if self.in_place:
                readonly.append(self.worktree / ".git")
            writable = tuple(Path(os.path.expanduser(p)) for p in rule.writable)
            self._confinement = sandbox.Confinement(level, tuple(readonly), frozenset(rule.no_network), writable)
            label = level if level == sandbox.ISOLATION_BWRAP else f"none ({why})"
            if self.rec.run.isolation != label:  # written with run.json's next save
                self.rec.run = self.rec.run.model_copy(update={"isolation": label})
        return self._confinement

    def phase_description(self, phase_id: str) -> str:
        """The plan's description of `phase_id` ("" if it has none)."""
        from pipeline.plan.file import load_plan, plan_sha256

        path = self.store.plan_path
        key = (path.resolve(), plan_sha256(path))
        if key not in _DESCRIPTIONS:
            plan, _ = load_plan(path)
            _DESCRIPTIONS[key] = {p.phase_id: p.description for _t, p in plan.phases()}
        return _DESCRIPTIONS[key].get(phase_id, "")

    def copy_record_into_worktree(self) -> None:
        """The branch carries the record as it stands (docs/architecture.md, The run directory).

        run.json is brought up to date first. Only what changed is copied: a file whose
        size and mtime match its copy is left alone (copies keep the source's mtime), files
        gone from the record are removed from the copy.
        """
        if not self.record_in_branch:
            return
        self.rec.flush()
        if self.in_place:
            return  # the record is already where the commit takes it from
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


def open_context(where: Path | Workspace, run_id: str, interrupted: bool = False) -> RunContext:
    """The run's context. `interrupted`: the last holder of the run's lock died holding it,
    so changes it left in a checkout worked in place are its own, and are reset."""
    ws = Workspace.of(where)
    workspace = ws.root
    store = RunStore(workspace, run_id)
    rec = Recorder.open(store)
    rec.group_log_syncs = True  # the context's exit flushes (and fsyncs the log)
    target = current_target(workspace, store, Path(rec.run.target_repo))
    git = git_for(target)
    in_branch = record_lives_in_branch(workspace, target)
    return RunContext(
        workspace=workspace,
        store=store,
        rec=rec,
        git=git,
        worktree=run_worktree(workspace, rec, git, target, in_branch, interrupted),
        record_in_branch=in_branch,
        ws=ws,
    )




def run_worktree(
    workspace: Path, rec: Recorder, git: GitAdapter, target: Path, record_in_branch: bool, interrupted: bool = False
) -> Path:
    """Where the run's steps change files.

    - In place: the workspace's own checkout, when the record lives in the branch and that
      checkout has the run's integration branch checked out (a CI job that checked out
      `autonomous/<run_id>`, docs/architecture.md, The run directory). The git adapter allows it only while that branch
      is checked out there, and never touches the live record nor the ignored files the
      checkout had (git.LocalGitCli.adopt_checkout).
    - Otherwise the run's linked worktree under this workspace, re-created on the run's
      existing branch when it is missing (a developer's fresh clone, a deleted directory),
      never from the base: the branch holds the run's history.
    """
    from pipeline.core.errors import GitError
    from pipeline.vcs.local import LocalGitCli

    run = rec.run
    here = workspace.resolve()
    if (
        record_in_branch
        and isinstance(git, LocalGitCli)
        and git.adopt_checkout(here, run.branch, f"runs/{run.run_id}", interrupted=interrupted)
    ):
        return here
    path = worktree_path(workspace, run.run_id)
    if path.is_dir() or run.state.terminal:
        return path
    if not git.branch_exists(run.branch):
        raise GitError(
            f"the run's branch '{run.branch}' does not exist in {target}, so the run's worktree "
            f"{path} cannot be re-created",
            fix=f"fetch it (`git fetch origin {run.branch}:{run.branch}`), or check it out here to work in place "
            f"(`git checkout {run.branch}`)",
        )
    git.ensure_worktree(run.branch, run.base_commit or run.branch, path)
    return path
