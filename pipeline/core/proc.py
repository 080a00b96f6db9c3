"""The only place that starts subprocesses: timeouts, environment scrubbing, captured output.

A timed-out command has its whole process group killed, so an agent that forks children
cannot outlive its budget. Before a command starts, whatever a writer holds back is
written (`jsonio.barrier`): a child sees the record as it stands, and a crash while it
runs leaves the record's writes in the order they were made.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core import jsonio

# Variables any child may inherit; everything else must be asked for explicitly.
BASE_ENV_ALLOW = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "SHELL",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SYSTEMROOT",
)
_KILL_GRACE_S = 2.0
_PR_SET_CHILD_SUBREAPER = 36
# Children this module started and has not reaped yet: never mistaken for orphans.
_LIVE: set[int] = set()
_LIVE_LOCK = threading.Lock()
# Called with each command's pid (its process group id) as soon as it runs: the run lock
# records them, so that a rerun after a kill -9 ends what this process left (`strays`).
SPAWN_HOOKS: list[Callable[[int], None]] = []
# A command's log (an agent's, a CI step's) is kept whole up to this size; beyond it, its
# head and tail (`cap_log`).
LOG_MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class ProcResult:
    """What a finished (or killed) command left behind."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def scrubbed_env(
    allow: Sequence[str] = BASE_ENV_ALLOW,
    extra: Mapping[str, str] | None = None,
    source: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An environment holding only the allowed inherited names plus `extra`.

    A name ending in `*` allows a prefix (e.g. `LC_*`).
    """
    src = os.environ if source is None else source
    prefixes = tuple(a[:-1] for a in allow if a.endswith("*"))
    exact = {a for a in allow if not a.endswith("*")}
    env = {k: v for k, v in src.items() if k in exact or (prefixes and k.startswith(prefixes))}
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str] | str,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    input_text: str | None = None,
    log_path: Path | None = None,
) -> ProcResult:
    """Run a command to completion.

    A string is run by `/bin/sh -c` (agent and CI commands are written as shell lines);
    a sequence is executed directly. With `log_path`, stdout and stderr go interleaved to
    that file (so huge outputs never sit in memory) and `stdout` holds the file's text.
    A missing executable is reported as returncode 127, like a shell would.
    """
    args: Sequence[str] = ["/bin/sh", "-c", argv] if isinstance(argv, str) else list(argv)
    # Encoded before the child starts: a failure here must not leave it waiting on stdin.
    stdin_bytes = input_text.encode("utf-8", "surrogateescape") if input_text is not None else None
    jsonio.barrier(children=True)  # what a writer holds back reaches the disk before the command runs
    started = time.monotonic()
    log_file = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    try:
        try:
            with _LIVE_LOCK:
                proc = subprocess.Popen(
                    args,
                    cwd=cwd,
                    env=dict(env) if env is not None else None,
                    stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                    stdout=log_file or subprocess.PIPE,
                    stderr=subprocess.STDOUT if log_file else subprocess.PIPE,
                    start_new_session=True,
                )
                _LIVE.add(proc.pid)
        except FileNotFoundError as exc:
            return ProcResult(tuple(args), 127, "", str(exc), time.monotonic() - started)
        for hook in SPAWN_HOOKS:
            hook(proc.pid)
        deadline = _WATCHDOG.watch(proc, timeout_s) if timeout_s is not None else None
        # A command is over when its leader exits: helpers it left in the background (an
        # agent's watcher, a CI step's server) must not act after it, nor hold its output
        # pipe open and keep us waiting.
        reaper = threading.Thread(target=_reap, args=(proc,), daemon=True)
        reaper.start()
        try:
            out, err = proc.communicate(input=stdin_bytes)
        finally:
            timed_out = _WATCHDOG.done(deadline) if deadline is not None else False
            reaper.join()
            with _LIVE_LOCK:
                _LIVE.discard(proc.pid)
        duration = time.monotonic() - started
    finally:
        if log_file:
            log_file.close()
    if log_path:
        cap_log(log_path, LOG_MAX_BYTES)
        stdout_text = log_path.read_text(errors="replace")
        stderr_text = ""
    else:
        stdout_text = (out or b"").decode(errors="replace")
        stderr_text = (err or b"").decode(errors="replace")
    return ProcResult(tuple(args), proc.returncode, stdout_text, stderr_text, duration, timed_out)


def cap_log(path: Path, max_bytes: int) -> bool:
    """Keep the first and last `max_bytes // 2` bytes of the log at `path`, with a line in
    between saying how much was cut (the start says what a command set out to do, the end
    how it finished and its usage). True if the log was cut."""
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if size <= max_bytes:
        return False
    half = max_bytes // 2
    with open(path, "r+b") as f:
        f.seek(size - half)
        tail = f.read(half)
        note = f"\n[autopack: {size - 2 * half} bytes cut from the middle of this {size}-byte log]\n".encode()
        f.seek(half)
        f.write(note + tail)
        f.truncate()
    return True


class _Deadline:
    """One command's timeout, watched by the process-wide `_Watchdog`."""

    def __init__(self, proc: subprocess.Popen[bytes], at: float) -> None:
        self.proc = proc
        self.at = at
        self.fired = False
        self.killer: threading.Thread | None = None


class _Watchdog:
    """Kills the process group of a command whose timeout has passed.

    One daemon thread for the whole process sleeps until the nearest deadline, so a
    command costs no thread start, and the caller waits with `communicate()` without a
    timeout, which blocks in the kernel: with a timeout, CPython 3.11 sleeps in steps of
    up to 50 ms while it waits for the exit, and a quick command returns late.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadlines: set[_Deadline] = set()
        self._wake_at: float | None = None  # the deadline the thread sleeps towards
        self._thread: threading.Thread | None = None

    def watch(self, proc: subprocess.Popen[bytes], timeout_s: float) -> _Deadline:
        deadline = _Deadline(proc, time.monotonic() + max(timeout_s, 0.0))
        with self._cond:
            self._deadlines.add(deadline)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="autopack-timeouts", daemon=True)
                self._thread.start()
            elif self._wake_at is None or deadline.at < self._wake_at:
                self._cond.notify()
        return deadline

    def done(self, deadline: _Deadline) -> bool:
        """Stop watching; True if the command timed out (its kill sequence has finished)."""
        with self._cond:
            self._deadlines.discard(deadline)
        if deadline.killer is not None:
            deadline.killer.join()
        return deadline.fired

    def _loop(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for deadline in [d for d in self._deadlines if d.at <= now]:
                    self._deadlines.discard(deadline)
                    if deadline.proc.returncode is None:  # not reaped: its pid is still its own
                        deadline.fired = True
                        deadline.killer = threading.Thread(
                            target=_kill_group, args=(deadline.proc,), daemon=True
                        )
                        deadline.killer.start()
                self._wake_at = min((d.at for d in self._deadlines), default=None)
                self._cond.wait(None if self._wake_at is None else self._wake_at - now)


_WATCHDOG = _Watchdog()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group, give the leader a grace period, then KILL the whole group.

    The KILL is sent even when the leader exited in time: a child that ignores TERM would
    otherwise outlive its command and keep writing (into the next attempt's worktree)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_GRACE_S)
    _kill_leftovers(proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    proc.wait()
    _kill_leftovers(proc)


def _kill_leftovers(proc: subprocess.Popen[bytes]) -> None:
    """KILL whatever is left in the command's process group (its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- orphans: what an unsandboxed step left behind in another session ----------------------


def adopt_orphans() -> bool:
    """Make this process the child subreaper (Linux): a process a step detached (`setsid`,
    a double fork) is re-parented here instead of to init, so `kill_orphans` finds it.
    False where the system does not offer it."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def kill_orphans() -> list[int]:
    """KILL every process re-parented to this one (and whatever it started since), other
    than the commands `run` is running now; the pids killed."""
    killed: list[int] = []
    for _ in range(50):  # a killed parent's children are re-parented here in turn
        with _LIVE_LOCK:
            me, live = os.getpid(), set(_LIVE)
            parents = _parents()
            found = [pid for pid, ppid in parents.items() if ppid == me and pid not in live]
        if not found:
            break
        for pid in found:
            for victim in [pid, *_descendants(pid, parents)]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(victim, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed.append(pid)
    return killed


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            out[int(entry)] = int(fields[1])
    return out


def _descendants(pid: int, parents: Mapping[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        children.setdefault(parent, []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
