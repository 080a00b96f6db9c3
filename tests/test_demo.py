"""`doit demo` ends as designed: phase states, tags, issues, and an untouched sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.commands.demo import EXPECTED, EXPECTED_STATE, run_demo


def test_demo_ends_as_designed(tmp_path: Path) -> None:
    result = run_demo(root=tmp_path / "demo", quiet=True)
    assert result.state == EXPECTED_STATE
    assert result.phase_states == EXPECTED
    run_dir = result.workspace / "runs" / "demo"
    issues = json.loads((run_dir / "run_issue_index.json").read_text())["issues_by_key"]
    assert "test:tests/test_normalize.py::test_strip_punctuation_keeps_digits" in issues
    assert issues["normalize-unicode-punctuation"]["severity"] == "minor"
    assert issues["gate:scope"]["effective_severity"] == "major"
    p12 = json.loads((run_dir / "phases/02-P1.2/phase.json").read_text())
    assert [a["outcome"] for a in p12["attempts"]] == ["ci_failed", "passed"]
    assert (run_dir / "incident" / "incident.json").is_file()
    assert (run_dir / "RUN_SUMMARY.md").read_text().startswith("# Run demo: DONE_FAILED_POLICY_VIOLATION")
    tags = subprocess.run(
        ["git", "tag", "--list", "autonomous/demo/*"], cwd=result.sample, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tags == ["autonomous/demo/P1.1", "autonomous/demo/P1.2", "autonomous/demo/P2.1"]


def test_demo_task_prints_where_the_run_is(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the demo's temp dir stays inside the test's
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "demo: as designed" in done.stdout and "run record:" in done.stdout
    assert "Traceback" not in done.stderr
    assert list(tmp_path.glob("autopack-demo-*/workspace/runs/demo/RUN_SUMMARY.md"))
    page = done.stdout.split("inspect it: ")[1].split(" ")[0]
    assert page.endswith("runs/demo/inspect.html") and Path(page).is_file()
