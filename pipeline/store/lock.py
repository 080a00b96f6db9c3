"""`runs/<run_id>/.lock`: one writer per run. An `flock` held for the life of the writer; the
kernel releases it when the holder dies, so a dead holder's lock is taken over without any
pid guessing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.core.errors import RunLocked
from pipeline.core.jsonio import canonical_json, write_all
from pipeline.store.events import utc_now


class RunLock:
    """`runs/<run_id>/.lock`: one writer per run (docs/architecture.md, Invariants).

    `flock(LOCK_EX | LOCK_NB)` on the file; the holder records pid, since and host in it
    for the error message. The kernel drops the lock when the holder's process dies, so
    a stale lock is taken over without asking. Released on exit; the file stays.
    """

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
                os.ftruncate(fd, 0)
                write_all(fd, canonical_json(info).encode("utf-8"))
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return
        raise RunLocked(
            f"run {self.run_id}: the lock file {self.path} keeps being replaced",
            "stop whatever is deleting or recreating the lock file, then retry",
        )

    def _holder(self) -> dict[str, Any] | None:
        """The holder's record; retried briefly since it is written just after flock."""
        for _ in range(25):
            try:
                info = json.loads(self.path.read_text(encoding="utf-8"))
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
            f"run {self.run_id} is locked by pid {pid} since {since}",
            f"wait for pid {pid} on {host} to finish; if pid {pid} is not an Autopack "
            f"process on {host}, remove {self.path}",
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
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
