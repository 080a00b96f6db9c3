"""The console entry: option values with '=' stay values; doit commands exit cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _pipeline(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_a_query_with_an_equals_sign_is_not_taken_for_a_doit_variable(tmp_path: Path) -> None:
    done = _pipeline(tmp_path, "sql", "--query", "SELECT 1 = 1 AS same, 'a=b' AS text", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["same,text", "True,a=b"]


def test_doit_variables_still_work_beside_protected_values(tmp_path: Path) -> None:
    done = _pipeline(tmp_path, "sql", "--query", "SELECT 1 = 1 AS same", "somevar=1", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["same", "True"]


def test_doit_forget_exits_zero_without_a_traceback(tmp_path: Path) -> None:
    done = _pipeline(tmp_path, "forget", "report")
    assert done.returncode == 0 and "Traceback" not in done.stderr
