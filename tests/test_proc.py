"""The one subprocess wrapper: timeouts and leftovers kill the whole process group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pipeline.core import proc

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
open(sys.argv[1], "w").write(str(child.pid))
if sys.argv[2] == "hang":
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _wait_gone(pid: int, within_s: float = 3.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_children_that_ignore_term(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    done = proc.run([sys.executable, str(script), str(pidfile), "hang"], timeout_s=1)
    assert done.timed_out and not done.ok
    assert time.monotonic() - started < 10
    assert _wait_gone(int(pidfile.read_text()))


def test_background_helpers_do_not_outlive_their_command(tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    pidfile = tmp_path / "pid"
    done = proc.run([sys.executable, str(script), str(pidfile), "exit"], timeout_s=30)
    assert done.returncode == 0 and not done.timed_out
    assert _wait_gone(int(pidfile.read_text()))


def test_missing_executable_is_127() -> None:
    done = proc.run(["/no/such/tool-xyz"])
    assert done.returncode == 127 and not done.ok


def test_input_that_is_not_clean_utf8_is_passed_through_not_hung() -> None:
    done = proc.run(["cat"], input_text="draft \udcff bytes", timeout_s=10)
    assert done.ok and not done.timed_out


def test_a_huge_log_keeps_its_head_and_tail_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "LOG_MAX_BYTES", 100_000)
    log = tmp_path / "out.log"
    code = "import sys; print('FIRST'); sys.stdout.write('m' * 1_000_000 + chr(10)); print('LAST')"
    res = proc.run([sys.executable, "-c", code], log_path=log)
    assert res.ok
    text = log.read_text()
    assert text.startswith("FIRST\n") and text.endswith("LAST\n")
    assert "bytes cut from the middle of this 1000012-byte log]" in text
    assert len(text) < 100_200 and res.stdout == text
