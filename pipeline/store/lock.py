"""`runs/<run_id>/.lock`: one writer per run. An `flock` held for the life of the writer; the
kernel releases it when the holder dies, so a dead holder's lock is taken over without any
pid guessing; the process groups a dead holder started are ended first (`core.strays`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.core import proc, strays
from pipeline.core.errors import InvalidInput, RunLocked
from pipeline.core.jsonio import write_all
from pipeline.store.events import utc_now


class RunLock:
    """`runs/<run_id>/.lock`: one writer per run (docs/architecture.md, Invariants).

    `flock(LOCK_EX | LOCK_NB)` on the file; the holder records pid, since and host in it
    for the error message. The kernel drops the lock when the holder's process dies, so
    a stale lock is taken over without asking. Released on exit; the file stays, emptied.

    While held, every command the holder starts is appended as a `child` line (`strays`).
    A holder record found at acquire means the last holder died holding the lock: its
    recorded process groups still alive are killed before this holder goes on, and
    `took_over` says whose lock it was (for the caller's note).
    """

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None
        self.reaped: list[int] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise self._locked_error() from None
            # The file may have been removed (and recreated) between open and flock: then
            # this lock guards nothing; start over on the current file.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "since": utc_now(), "host": socket.gethostname()}
            try:
                self._take_over(fd)
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                write_all(fd, json.dumps(info, sort_keys=True).encode("utf-8"))  # one line: children follow
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            proc.SPAWN_HOOKS.append(self._record_child)
            return
        raise RunLocked(
            f"run {self.run_id}: the lock file {self.path} keeps being replaced",
            "stop whatever is deleting or recreating the lock file, then retry",
        )

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except IsADirectoryError:
            raise InvalidInput(
                f"{self.path}: the run lock is a directory, not a file",
                f"remove the directory {self.path} (Autopack creates the lock file itself), then retry",
            ) from None

    def _take_over(self, fd: int) -> None:
        """A holder record left in the file: that holder died holding the lock."""
        size = os.fstat(fd).st_size
        if not size:
            return
        text = os.pread(fd, min(size, 1 << 20), 0).decode("utf-8", "replace")
        first, _, rest = text.partition("\n")
        try:
            info = json.loads(first)
        except ValueError:
            info = None
        self.took_over = info if isinstance(info, dict) else {"pid": "unknown"}
        children = [c for c in map(strays.Child.parse, rest.splitlines()) if c is not None]
        if self.took_over.get("host") == socket.gethostname():  # pids mean nothing on another host
            self.reaped = strays.reap(children)
            # helpers an agent detached (setsid) carry its AUTOPACK_PHASE_JSON, under this run
            marker = f"AUTOPACK_PHASE_JSON={self.path.parent.resolve()}{os.sep}".encode()
            self.reaped += [p for p in strays.sweep_environ(marker) if p not in self.reaped]
        pid = self.took_over.get("pid")
        if isinstance(pid, int):  # the temp files of the dead holder's unfinished atomic writes
            for tmp in self.path.parent.rglob(f".*.tmp.{pid}"):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _record_child(self, pid: int) -> None:
        fd = self._fd
        if fd is not None:
            write_all(fd, ("\n" + strays.Child(pid, strays.start_time(pid)).line().rstrip("\n")).encode())

    def _holder(self) -> dict[str, Any] | None:
        """The holder's record; retried briefly since it is written just after flock."""
        for _ in range(25):
            try:
                info = json.loads(self.path.read_text(encoding="utf-8").partition("\n")[0])
            except (OSError, ValueError):
                info = None
            if isinstance(info, dict) and "pid" in info:
                return info
            time.sleep(0.02)
        return None

    def _locked_error(self) -> RunLocked:
        info = self._holder()
        if info is None:
            return RunLocked(
                f"run {self.run_id} is locked by pid unknown since unknown ({self.path} holds no holder record)",
                "wait for the other Autopack process on this run to finish",
            )
        pid = info.get("pid")
        since = info.get("since", "unknown")
        host = info.get("host", "unknown host")
        return RunLocked(
            f"run {self.run_id} is locked by pid {pid} since {since} on {host}",
            f"wait for pid {pid} on {host} to finish; if pid {pid} is not an Autopack "
            f"process on {host}, remove {self.path}",
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(ValueError):
            proc.SPAWN_HOOKS.remove(self._record_child)
        try:
            os.ftruncate(fd, 0)  # a clean release: no holder, nothing of ours left running
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
