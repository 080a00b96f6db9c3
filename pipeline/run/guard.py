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

Cost and memory: no file content is held in memory. Every watched file is copied once
into a private, content-addressed backup directory (`Backup`); a file whose
(device, inode, size, mtime, ctime) is the same as when it was last hashed is neither
hashed nor copied again (ctime cannot be set back by a process of the user; a file changed
in the last seconds before the snapshot is compared by content, as git does with racy
entries). A copy is checked against its sha256 before it is put back: a copy tampered
with is reported as not restorable, never written.
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

from pipeline.core.sandbox import git_dirs

# Files of the shared git directory an agent could use to reach the user's checkout or
# make the supervisor run its code (hooks, filter/textconv drivers, core.bare, fsmonitor,
# alternates).
_SHARED_FILES = ("config", "config.worktree", "HEAD", "commondir", "packed-refs", "shallow")
_SHARED_DIRS = ("hooks", "info", "objects/info")
_WORKTREE_META = ("commondir", "gitdir", "config.worktree", "HEAD")
_RACY_NS = 2_000_000_000  # a file changed this close to the snapshot is compared by content
_CHUNK = 1024 * 1024

StatKey = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class Entry:
    sha256: str | None  # None: not a regular file or symlink (a directory, or absent)
    stat: StatKey | None = None
    racy: bool = True  # compare by content even when the stat is the same


@dataclass(frozen=True)
class Snapshot:
    """What a step must leave unchanged, by path."""

    entries: dict[Path, Entry]
    roots: tuple[Path, ...]  # directories whose new files count as changes
    allowed: tuple[Path, ...]  # paths the step may write


class Backup:
    """A private directory of file copies named by their sha256, and what was last hashed."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._hashed: dict[Path, tuple[StatKey, str]] = {}

    @property
    def dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="autopack-guard-"))
            atexit.register(shutil.rmtree, self._dir, True)
        return self._dir

    def keep(self, path: Path, key: StatKey, racy: bool) -> str | None:
        """The sha256 of `path`, a copy of it kept; None if it vanished meanwhile."""
        known = self._hashed.get(path)
        if known is not None and known[0] == key and (self.dir / known[1]).is_file():
            return known[1]
        digest = self._copy(path)
        if digest is not None and not racy:
            self._hashed[path] = (key, digest)
        else:
            self._hashed.pop(path, None)
        return digest

    def _copy(self, path: Path) -> str | None:
        tmp = self.dir / f".in.{os.getpid()}"
        sha = hashlib.sha256()
        try:
            with path.open("rb") as src, tmp.open("wb") as dst:
                while chunk := src.read(_CHUNK):
                    sha.update(chunk)
                    dst.write(chunk)
        except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
            return None
        digest = sha.hexdigest()
        if (self.dir / digest).is_file():  # the same bytes kept already (runs share files)
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
        for child in self._dir.iterdir():
            if child.name not in wanted:
                child.unlink(missing_ok=True)
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
    process holds (that run writes its own record meanwhile)."""
    parent = record_dir.parent
    if not parent.is_dir():
        return []
    held = _held_flocks()
    out = []
    for child in sorted(parent.iterdir()):
        if child == record_dir or child.is_symlink() or not child.is_dir():
            continue
        if _lock_id(child / ".lock") not in held:
            out.append(child)
    return out


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
    allow = tuple(p.resolve() for p in allowed)
    files, dirs = shared_git_paths(worktree)
    record = record_dir.resolve()
    roots = (record, *(d.resolve() for d in dirs), *other_runs(record))
    now = time.time_ns()
    entries: dict[Path, Entry] = {}
    for path in [*files, *user_git_files()]:
        entries[path] = _entry(path, now)
    for root in roots:
        for path in _walk(root):
            if not _is_allowed(path, allow):
                entries[path] = _entry(path, now)
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
        for path in _walk(root):
            if path not in snap.entries and not _is_allowed(path, snap.allowed):
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
            _remove(path)
        elif before.sha256.startswith("link:"):
            _relink(path, before.sha256.removeprefix("link:"))
        elif not _put_back(path, before.sha256):
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


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _key(st: os.stat_result) -> StatKey:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _entry(path: Path, now: int) -> Entry:
    st = _lstat(path)
    if st is None or stat.S_ISDIR(st.st_mode):
        return Entry(None)
    if stat.S_ISLNK(st.st_mode):
        return Entry("link:" + os.readlink(path))
    if not stat.S_ISREG(st.st_mode):
        return Entry(_special(st))
    racy = now - max(st.st_mtime_ns, st.st_ctime_ns) < _RACY_NS
    return Entry(BACKUP.keep(path, _key(st), racy), _key(st), racy)


def _changed_digest(path: Path, before: Entry) -> str | None:
    """The digest of `path` now; the one before when its stat proves it unchanged."""
    if before.stat is not None and not before.racy:
        st = _lstat(path)
        if st is not None and stat.S_ISREG(st.st_mode) and _key(st) == before.stat:
            return before.sha256
    return _digest(path)


def _digest(path: Path) -> str | None:
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
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
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
