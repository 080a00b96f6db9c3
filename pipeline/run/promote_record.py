"""The run's live record during a promotion into the workspace's own checkout.

When the workspace is its own target, `runs/<run>/` is untracked in the checkout that has
the base branch (but for what the user committed, such as the plan), and the run's
integration branch carries the same files (every commit of the run carries the record).
Git refuses a merge that would overwrite untracked files, so promote used to refuse in the
default setup. When the only dirt in the checkout is the run's untracked record files and
each is byte for byte the branch's copy, they are set aside (moved under `.autopack/`), the
merge brings the same files back as tracked ones, and the copies aside are dropped.
Anything else in the checkout is the user's: promote refuses as before. Ignored files (the
run lock) are not git's concern and stay where they are.

A promote killed while files are aside leaves them under `.autopack/`; the next promote of
the run moves back whatever the merge did not bring (`restore_aside`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.core import failpoints
from pipeline.models.run import RunRecord
from pipeline.store.rundir import RunStore
from pipeline.vcs.adapter import GitAdapter

ASIDE_PREFIX = "promote-record-"


def _aside_path(workspace: Path, run_id: str) -> Path:
    return Path(workspace) / ".autopack" / f"{ASIDE_PREFIX}{run_id}"


def _move_all(src_root: Path, dst_root: Path, rels: list[Path]) -> None:
    for rel in rels:
        if (src_root / rel).is_file() and not (dst_root / rel).exists():
            (dst_root / rel).parent.mkdir(parents=True, exist_ok=True)
            (src_root / rel).rename(dst_root / rel)


def restore_aside(workspace: Path, run_id: str) -> None:
    """Undo what a promote killed mid-way left: files aside go back where the merge did not
    bring them; then the aside directory goes."""
    aside = _aside_path(workspace, run_id)
    if not aside.is_dir():
        return
    live = RunStore(workspace, run_id).run_dir
    _move_all(aside, live, [p.relative_to(aside) for p in sorted(aside.rglob("*")) if p.is_file()])
    shutil.rmtree(aside)


def _branch_copy_equals(git: GitAdapter, live: Path, rels: list[Path], run: RunRecord, tip: str) -> bool:
    """Each file is exactly what the run's branch carries (read from the run's own worktree,
    which has the branch's tip checked out with nothing changed)."""
    worktree = Path(run.worktree)
    copy = worktree / "runs" / run.run_id
    if not copy.is_dir() or git.is_dirty(worktree) or git.head(worktree) != tip:
        return False
    return all((copy / rel).is_file() and (copy / rel).read_bytes() == (live / rel).read_bytes() for rel in rels)


def set_aside(git: GitAdapter, workspace: Path, holder: Path, run: RunRecord, tip: str) -> Path | None:
    """Move the run's untracked record files out of the merge's way when, with them gone,
    `holder` is clean and they equal the branch's copy; None (nothing moved) otherwise."""
    live = RunStore(workspace, run.run_id).run_dir
    if not live.is_dir() or not live.resolve().is_relative_to(holder.resolve()):
        return None
    under = live.resolve().relative_to(holder.resolve())
    rels = [Path(p).relative_to(under) for p in git.untracked_files(holder, under.as_posix())]
    if not rels or not _branch_copy_equals(git, live, rels, run, tip):
        return None
    aside = _aside_path(workspace, run.run_id)
    aside.mkdir(parents=True, exist_ok=True)
    _move_all(live, aside, rels)
    failpoints.hit("promote_record_aside")
    if git.is_dirty(holder):
        restore_aside(workspace, run.run_id)
        return None
    return aside


def drop_aside(aside: Path) -> None:
    """After the merge: the files aside are the branch's copies, now tracked in place."""
    shutil.rmtree(aside)
