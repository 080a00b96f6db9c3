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


def test_every_string_option_keeps_an_equals_sign_in_its_value(tmp_path: Path) -> None:
    """The protected options come from the tasks' own params: `--from-md a=b.md` is a path."""
    from pipeline.commands import tasks
    from pipeline.commands.cli import value_options

    options = value_options(tasks)
    assert {"--from-md", "--project-type", "--output", "--into", "--repo", "--metadata", "--run"} <= options
    assert "--json" not in options and "--check" not in options, "flags take no value"
    example = Path(__file__).resolve().parents[1] / "docs" / "plan-from-markdown.md"
    (tmp_path / "a=b.md").write_text(example.read_text())
    done = _pipeline(tmp_path, "new_run", "--run", "orders-api", "--from-md", "a=b.md")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "orders-api" / "plan.yaml").is_file()
