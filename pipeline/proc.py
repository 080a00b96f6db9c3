"""The only place that starts subprocesses: timeouts, environment scrubbing, captured output.

A timed-out command has its whole process group killed, so an agent that forks children
cannot outlive its budget.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    started = time.monotonic()
    log_file = open(log_path, "wb") if log_path else None  # noqa: SIM115 - closed below
    try:
        try:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=log_file or subprocess.PIPE,
                stderr=subprocess.STDOUT if log_file else subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            return ProcResult(tuple(args), 127, "", str(exc), time.monotonic() - started)
        timed_out = False
        try:
            out, err = proc.communicate(
                input=input_text.encode() if input_text is not None else None, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, err = proc.communicate()
        duration = time.monotonic() - started
    finally:
        if log_file:
            log_file.close()
    if log_path:
        stdout_text = log_path.read_text(errors="replace")
        stderr_text = ""
    else:
        stdout_text = (out or b"").decode(errors="replace")
        stderr_text = (err or b"").decode(errors="replace")
    return ProcResult(tuple(args), proc.returncode, stdout_text, stderr_text, duration, timed_out)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the process group, then KILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=_KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
