"""Defence in depth around every untrusted step, sandboxed or not (layer L5).

Before an agent, a static check or a CI step runs, the supervisor takes a snapshot of
what the step must not change: every file of the run record (except the paths the step
writes by design: its log, its result's directory, its CI output) and the git state the
run's worktree shares with the user's repository (config, hooks, info/, the object
store's info/, HEAD, packed-refs and the worktree metadata). After the step it compares;
any change is put back from the snapshot (a file too large to keep is named but cannot be
restored) and ends the attempt as a policy violation naming the file. Branch and tag
moves are undone separately (`LocalGitCli.restore_refs`), as before.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.sandbox import git_dirs

# Files of the shared git directory an agent could use to reach the user's checkout or
# make the supervisor run its code (hooks, filter/textconv drivers, core.bare, fsmonitor,
# alternates).
_SHARED_FILES = ("config", "config.worktree", "HEAD", "commondir", "packed-refs", "shallow")
_SHARED_DIRS = ("hooks", "info", "objects/info")
_WORKTREE_META = ("commondir", "gitdir", "config.worktree", "HEAD")
_KEEP_BYTES = 4 * 1024 * 1024  # files up to this size are kept in memory for restoring


@dataclass(frozen=True)
class Entry:
    sha256: str | None  # None: not a regular file (a directory, or absent)
    data: bytes | None  # the bytes, when small enough to restore


@dataclass(frozen=True)
class Snapshot:
    """What a step must leave unchanged, by path."""

    entries: dict[Path, Entry]
    roots: tuple[Path, ...]  # directories whose new files count as changes
    allowed: tuple[Path, ...]  # paths the step may write


def shared_git_paths(worktree: Path) -> tuple[list[Path], list[Path]]:
    """(files, directories) of shared git state to watch for `worktree`."""
    own, common = git_dirs(worktree / ".git")
    if common is None:
        return [], []
    files = [common / name for name in _SHARED_FILES]
    dirs = [common / name for name in _SHARED_DIRS]
    meta = common / "worktrees"
    if meta.is_dir():
        for child in sorted(meta.iterdir()):
            files += [child / name for name in _WORKTREE_META if not (child == own and name == "HEAD")]
    return files, dirs


def take(record_dir: Path, worktree: Path, allowed: Iterable[Path] = ()) -> Snapshot:
    """The snapshot before a step: the record under `record_dir`, the shared git state."""
    allow = tuple(p.resolve() for p in allowed)
    files, dirs = shared_git_paths(worktree)
    roots = (record_dir.resolve(), *(d.resolve() for d in dirs))
    entries: dict[Path, Entry] = {}
    for path in files:
        entries[path] = _entry(path)
    for root in roots:
        for path in _walk(root):
            if not _is_allowed(path, allow):
                entries[path] = _entry(path)
    return Snapshot(entries, roots, allow)


def changes(snap: Snapshot) -> list[str]:
    """What changed since `snap`, one `<what> <path>` per file, sorted."""
    found: list[str] = []
    for path, before in snap.entries.items():
        after = _digest(path)
        if after != before.sha256:
            found.append(f"{_verb(before.sha256, after)} {path}")
    for root in snap.roots:
        for path in _walk(root):
            if path not in snap.entries and not _is_allowed(path, snap.allowed):
                found.append(f"created {path}")
    return sorted(found)


def restore(snap: Snapshot) -> list[str]:
    """Put back what changed; the paths that could not be restored (too large to keep)."""
    lost: list[str] = []
    for path, before in snap.entries.items():
        if _digest(path) == before.sha256:
            continue
        if before.sha256 is None:
            _remove(path)
        elif before.data is not None:
            _write(path, before.data)
        else:
            lost.append(str(path))
    for root in snap.roots:
        for path in _walk(root):
            if path not in snap.entries and not _is_allowed(path, snap.allowed):
                _remove(path)
    return lost


def _verb(before: str | None, after: str | None) -> str:
    if before is None:
        return "created"
    return "deleted" if after is None else "modified"


def _walk(root: Path) -> list[Path]:
    """Every file under `root` (links as files, not followed; lock/temp files skipped)."""
    out: list[Path] = []
    if not root.is_dir():
        return out
    for top, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not Path(top, d).is_symlink()]
        out += [Path(top, f) for f in filenames if f != ".lock" and ".tmp." not in f]
        out += [Path(top, d) for d in os.listdir(top) if Path(top, d).is_symlink() and d not in filenames]
    return out


def _is_allowed(path: Path, allowed: tuple[Path, ...]) -> bool:
    return any(path == a or path.is_relative_to(a) for a in allowed)


def _digest(path: Path) -> str | None:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        return None


def _entry(path: Path) -> Entry:
    digest = _digest(path)
    data = None
    if digest is not None and not path.is_symlink() and path.stat().st_size <= _KEEP_BYTES:
        data = path.read_bytes()
    return Entry(digest, data)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()


def _write(path: Path, data: bytes) -> None:
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.restore")
    tmp.write_bytes(data)
    os.replace(tmp, path)
