"""Process groups a killed supervisor left running (layer L1, standard library only).

Every command the supervisor starts leads its own process group (`proc.run` starts it in
a new session). When the supervisor is killed (kill -9, a cancelled CI job), those groups
live on: an agent would keep writing into the worktree the rerun uses. So each command's
group id is recorded with the leader's start time (`Child`), and the next holder of the
run's lock ends every recorded group still alive before it does anything (`reap`).

The start time (`/proc/<pid>/stat` field 22, clock ticks since boot) tells the recorded
leader from a later process that reuses its pid. A group whose leader is gone is found by
its members: processes whose process group is the recorded id and which started no
earlier than the leader did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True)
class Child:
    """One command's process group: its id (the leader's pid) and the leader's start time."""

    pgid: int
    start: int

    def line(self) -> str:
        return f"child {self.pgid} {self.start}\n"

    @classmethod
    def parse(cls, line: str) -> Child | None:
        parts = line.split()
        if len(parts) == 3 and parts[0] == "child" and parts[1].isdigit() and parts[2].isdigit():
            return cls(int(parts[1]), int(parts[2]))
        return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time) of a live process, None if there is none."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return fields[0], int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def start_time(pid: int) -> int:
    """The start time of `pid` (0 where /proc is not there to tell)."""
    found = _stat(pid)
    return found[2] if found else 0


def members(child: Child) -> list[int]:
    """The live (not zombie) processes of `child`'s group that belong to it."""
    try:
        pids = [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []
    leader = _stat(child.pgid)
    if leader is not None and leader[2] != child.start and leader[1] == child.pgid:
        return []  # the id now leads another group: the recorded one is gone
    alive = []
    for pid in pids:
        found = _stat(pid)
        if found is None or found[0] == "Z" or found[1] != child.pgid:
            continue
        if found[2] >= child.start:
            alive.append(pid)
    return alive


def reap(children: list[Child], wait_s: float = 10.0) -> list[int]:
    """KILL every live process of the recorded groups and wait until they are gone.

    Returns the pids killed. A process that outlives `wait_s` (stuck in the kernel) is
    left; the caller's rerun then still never shares the worktree with a writer that can
    run, since a SIGKILLed process executes no more user code."""
    killed: list[int] = []
    for child in children:
        for pid in members(child):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    deadline = time.monotonic() + wait_s
    while killed and time.monotonic() < deadline:
        if not any(_is_alive(pid) for pid in killed):
            break
        time.sleep(0.02)
    return killed


def sweep_environ(entry_prefix: bytes, wait_s: float = 10.0) -> list[int]:
    """KILL every process of ours whose environment holds a variable starting with
    `entry_prefix` (such as `AUTOPACK_PHASE_JSON=<run dir>/`): the helpers a step detached
    into a session of their own (`setsid`), which no recorded group holds. This process
    and its ancestors are spared. A helper that cleared its environment is not found."""
    spared = _ancestors(os.getpid())
    killed: list[int] = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(var.startswith(entry_prefix) for var in env.split(b"\0")):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    deadline = time.monotonic() + wait_s
    while killed and time.monotonic() < deadline and any(_is_alive(pid) for pid in killed):
        time.sleep(0.02)
    return killed


def _ancestors(pid: int) -> set[int]:
    out = {pid}
    while pid > 1:
        try:
            fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            break
        pid = int(fields[1])
        out.add(pid)
    return out


def _is_alive(pid: int) -> bool:
    found = _stat(pid)
    return found is not None and found[0] not in ("Z", "X")
