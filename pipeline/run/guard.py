"""Defence in depth around every untrusted step, sandboxed or not (layer L5).

Before an agent, a static check or a CI step runs, the supervisor takes a snapshot of
what the step must not change: every file of the run record (except the paths the step
writes by design: its log, its result's directory, its CI output), the other runs of the
workspace (`runs/*`, except one another live process holds the lock of), the git state the
run's worktree shares with the user's repository (config, hooks, info/, the object
store's info/, HEAD, packed-refs and the worktree metadata) and the user's git
configuration the supervisor's own git reads (global config and attributes). After the
step it compares; any change is put back from the snapshot and ends the attempt as a
policy violation naming the file. Branch and tag moves are undone separately
(`LocalGitCli.restore_refs`), as before.

Cost and memory: no file content is kept in memory. Every watched file is copied once
into a private, content-addressed backup directory (`Backup`); a file whose
(device, inode, size, mtime, ctime) is the same as when it was last hashed is neither
hashed nor copied again (ctime cannot be set back by a process of the user; a file changed
within a timestamp tick's reach of the snapshot, 100 ms or 2 s on a filesystem with
whole-second timestamps, is compared by content, as git does with racy entries). A copy
is checked against its sha256 before it is put back: a copy tampered with is reported as
not restorable, never written.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.core.sandbox import git_dirs

# Files of the shared git directory an agent could use to reach the user's checkout or
# make the supervisor run its code (hooks, filter/textconv drivers, core.bare, fsmonitor,
# alternates).
_SHARED_FILES = ("config", "config.worktree", "HEAD", "commondir", "packed-refs", "shallow")
_SHARED_DIRS = ("hooks", "info", "objects/info")
_WORKTREE_META = ("commondir", "gitdir", "config.worktree", "HEAD")
# A file changed this close to the snapshot is compared by content: a rewrite within one
# timestamp tick after the snapshot would keep its whole stat key (git's "racy" entries).
# Ticks are at most 10 ms where timestamps have sub-second parts (ext4, xfs, btrfs, tmpfs:
# the kernel's coarse clock, one jiffy at HZ >= 100); 2 s covers whole-second ones (FAT,
# HFS+, some network filesystems), told by a timestamp without a sub-second part. The
# same windows as `run.context`'s record copy.
_RACY_NS = 100_000_000
_RACY_WHOLE_SECONDS_NS = 2_000_000_000
_CHUNK = 1024 * 1024

StatKey = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class Entry:
    sha256: str | None  # None: not a regular file or symlink (a directory, or absent)
    stat: StatKey | None = None
    racy: bool = True  # compare by content even when the stat is the same


@dataclass(frozen=True)
class Snapshot:
    """What a step must leave unchanged, by path (absolute, normalised path strings: a
    snapshot holds every file of the record and of the other runs, and building a `Path`
    per file was most of its cost)."""

    entries: dict[str, Entry]
    roots: tuple[str, ...]  # directories whose new files count as changes
    allowed: tuple[str, ...]  # paths the step may write


class Backup:
    """A private directory of file copies named by their sha256, and what was last hashed."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._hashed: dict[str, tuple[StatKey, str]] = {}

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="autopack-guard-"))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def keep(self, path: str, key: StatKey, racy: bool) -> str | None:
        """The sha256 of `path`, a copy of it kept; None if it vanished meanwhile."""
        known = self._hashed.get(path)
        if known is not None and known[0] == key and os.path.isfile(os.path.join(self.dir, known[1])):
            return known[1]
        digest = self._copy(path)
        if digest is not None and not racy:
            self._hashed[path] = (key, digest)
        else:
            self._hashed.pop(path, None)
        return digest

    def _copy(self, path: str) -> str | None:
        """Hash `path` and keep a copy unless one of the same bytes is kept already. A file
        under one chunk (nearly every record file) is read once and written only when its
        bytes are new; a larger one is streamed through a temp file, never held whole."""
        try:
            with open(path, "rb") as src:
                first = src.read(_CHUNK)
                if len(first) < _CHUNK:
                    return self._store(hashlib.sha256(first).hexdigest(), first)
                return self._stream(src, first)
        except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
            return None

    def _store(self, digest: str, data: bytes) -> str:
        kept = os.path.join(self.dir, digest)
        if not os.path.isfile(kept):  # the same bytes kept already (runs share files)
            tmp = os.path.join(self.dir, f".in.{os.getpid()}")
            with open(tmp, "wb") as dst:
                dst.write(data)
            os.replace(tmp, kept)
        return digest

    def _stream(self, src: BinaryIO, first: bytes) -> str:
        tmp = self.dir / f".in.{os.getpid()}"
        sha = hashlib.sha256(first)
        with tmp.open("wb") as dst:
            dst.write(first)
            while chunk := src.read(_CHUNK):
                sha.update(chunk)
                dst.write(chunk)
        digest = sha.hexdigest()
        if (self.dir / digest).is_file():
            tmp.unlink()
        else:
            os.replace(tmp, self.dir / digest)
        return digest

    def put_back(self, digest: str, path: Path) -> bool:
        """Write the kept copy of `digest` at `path` (atomically), if the copy is intact."""
        tmp = path.with_name(f".{path.name}.restore")
        sha = hashlib.sha256()
        try:
            with (self.dir / digest).open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    sha.update(chunk)
                    dst.write(chunk)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        if sha.hexdigest() != digest:
            tmp.unlink(missing_ok=True)
            return False
        os.replace(tmp, path)
        return True

    def prune(self, keep: Iterable[str]) -> None:
        """Drop the copies no snapshot refers to any more (steps run one at a time)."""
        wanted = set(keep)
        if self._dir is None:
            return
        for name in os.listdir(self._dir):
            if name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._dir, name))
        self._hashed = {p: v for p, v in self._hashed.items() if v[1] in wanted}


BACKUP = Backup()


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


def user_git_files(environ: dict[str, str] | None = None) -> list[Path]:
    """The user's git configuration and attributes the supervisor's git reads: a filter
    driver planted there would run in its `git add`."""
    env = dict(os.environ) if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    xdg = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    globl = Path(env["GIT_CONFIG_GLOBAL"]) if env.get("GIT_CONFIG_GLOBAL") else home / ".gitconfig"
    return [globl, xdg / "git/config", xdg / "git/attributes"]


def other_runs(record_dir: Path) -> list[Path]:
    """The sibling run directories of `record_dir`, except those whose lock another live
    process holds (that run writes its own record meanwhile). `/proc/locks` is read only
    when a sibling has a lock file at all: an flock needs one, and the read is slow."""
    parent = record_dir.parent
    try:
        with os.scandir(parent) as it:
            found = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    siblings = [parent / name for name in found if parent / name != record_dir]
    locks = [_lock_id(child / ".lock") for child in siblings]
    held = _held_flocks() if any(lock is not None for lock in locks) else set()
    return [child for child, lock in zip(siblings, locks, strict=True) if lock not in held]


def _held_flocks() -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every file an flock is held on (`/proc/locks`), ours
    excluded."""
    out: set[tuple[int, int, int]] = set()
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[4] == str(os.getpid()):
            continue
        with contextlib.suppress(ValueError):
            major, minor, inode = parts[5].split(":")
            out.add((int(major, 16), int(minor, 16), int(inode)))
    return out


def _lock_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def take(record_dir: Path, worktree: Path, allowed: Iterable[Path] = ()) -> Snapshot:
    """The snapshot before a step: the record under `record_dir`, the other runs beside it,
    the shared git state and the user's git configuration."""
    allow = tuple(str(p.resolve()) for p in allowed)
    files, dirs = shared_git_paths(worktree)
    record = record_dir.resolve()
    roots = tuple(str(p) for p in (record, *(d.resolve() for d in dirs), *other_runs(record)))
    now = time.time_ns()
    entries: dict[str, Entry] = {}
    for path in [*files, *user_git_files()]:
        entries[str(path)] = _entry(str(path), now)
    for root in roots:
        for name in _walk(root, allow):
            entries[name] = _entry(name, now)
    BACKUP.prune(e.sha256 for e in entries.values() if e.sha256 is not None)
    return Snapshot(entries, roots, allow)


def changes(snap: Snapshot) -> list[str]:
    """What changed since `snap`, one `<what> <path>` per file, sorted."""
    found: list[str] = []
    for path, before in snap.entries.items():
        after = _changed_digest(path, before)
        if after != before.sha256:
            found.append(f"{_verb(before.sha256, after)} {path}")
    for root in snap.roots:
        for path in _walk(root, snap.allowed):
            if path not in snap.entries:
                found.append(f"created {path}")
    return sorted(found)


def restore(snap: Snapshot) -> list[str]:
    """Put back what changed; the paths that could not be restored (their kept copy was
    removed or changed meanwhile)."""
    lost: list[str] = []
    for path, before in snap.entries.items():
        if _changed_digest(path, before) == before.sha256:
            continue
        if before.sha256 is None:
            _remove(Path(path))
        elif before.sha256.startswith("link:"):
            _relink(Path(path), before.sha256.removeprefix("link:"))
        elif not _put_back(Path(path), before.sha256):
            lost.append(path)
    for root in snap.roots:
        for path in _walk(root, snap.allowed):
            if path not in snap.entries:
                _remove(Path(path))
    return lost


def _verb(before: str | None, after: str | None) -> str:
    if before is None:
        return "created"
    return "deleted" if after is None else "modified"


def _walk(root: str, allowed: tuple[str, ...] = ()) -> list[str]:
    """Every file under `root` but the `allowed` paths (links as files, not followed;
    lock/temp files skipped). One `scandir` per directory: the entry's type comes with the
    listing, no stat per file."""
    out: list[str] = []
    pending = [root]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:  # gone, or not a directory
            continue
        with listing:
            for entry in listing:
                path = entry.path
                if allowed and _is_allowed(path, allowed):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(path)
                elif _watched(entry):
                    out.append(path)
    return out


def _watched(entry: os.DirEntry[str]) -> bool:
    """A non-directory entry is watched unless it is a lock or temp file; a link to a
    directory is watched whatever its name."""
    return (entry.name != ".lock" and ".tmp." not in entry.name) or (entry.is_symlink() and entry.is_dir())


def _is_allowed(path: str, allowed: tuple[str, ...]) -> bool:
    """`path` is one of `allowed` or below one (all absolute and normalised)."""
    return any(path == a or path.startswith(a.rstrip(os.sep) + os.sep) for a in allowed)


def _lstat(path: str | Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _key(st: os.stat_result) -> StatKey:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _entry(path: str, now: int) -> Entry:
    st = _lstat(path)
    if st is None or stat.S_ISDIR(st.st_mode):
        return Entry(None)
    if stat.S_ISLNK(st.st_mode):
        return Entry("link:" + os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return Entry(_special(st))
    racy = now - max(st.st_mtime_ns, st.st_ctime_ns) < _racy_window(st)
    return Entry(BACKUP.keep(path, _key(st), racy), _key(st), racy)


def _racy_window(st: os.stat_result) -> int:
    """How recent a change keeps `st`'s file racy: 2 s where either timestamp has no
    sub-second part (a coarse filesystem, or a time set by hand: the safe side)."""
    whole = st.st_mtime_ns % 1_000_000_000 == 0 or st.st_ctime_ns % 1_000_000_000 == 0
    return _RACY_WHOLE_SECONDS_NS if whole else _RACY_NS


def _changed_digest(path: str, before: Entry) -> str | None:
    """The digest of `path` now; the one before when its stat proves it unchanged."""
    if before.stat is not None and not before.racy:
        st = _lstat(path)
        if st is not None and stat.S_ISREG(st.st_mode) and _key(st) == before.stat:
            return before.sha256
    return _digest(path)


def _digest(path: str) -> str | None:
    """sha256 of a regular file, `link:<target>` of a symlink, `special:<mode>` of a fifo,
    socket or device (never opened: a fifo would block), None for a directory or nothing."""
    st = _lstat(path)
    if st is None or stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return _special(st)
    try:
        with open(path, "rb") as fh:
            sha = hashlib.sha256()
            while chunk := fh.read(_CHUNK):  # a small file: one read (file_digest zeroes a 256 KiB buffer per call)
                sha.update(chunk)
            return sha.hexdigest()
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        return None


def _special(st: os.stat_result) -> str:
    return f"special:{stat.S_IFMT(st.st_mode):o}"


def _remove(path: Path) -> None:
    st = _lstat(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        path.unlink()


def _relink(path: Path, target: str) -> None:
    _clear(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _put_back(path: Path, digest: str) -> bool:
    if digest.startswith("special:"):
        return False
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return BACKUP.put_back(digest, path)
