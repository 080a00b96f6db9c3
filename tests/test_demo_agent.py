"""The embedded demo data: the textstats sample, the scripted agent and the demo plan.

The agent is run the way the supervisor runs it (pipeline.agents.runner.run_agent, the plan's
command line) in copies of the sample; the sample's own tests are run with pytest.
"""

from __future__ import annotations

import runpy
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

import pipeline
from pipeline.agents.runner import AgentOutcome, run_agent
from pipeline.core import proc
from pipeline.core.yamlio import load_roundtrip, to_plain
from pipeline.models.plan import AgentSpec, Plan
from pipeline.models.results import BuilderResult
from testing.gitrepo import tree_snapshot

DEMO = Path(pipeline.__file__).parent / "data" / "demo"
SAMPLE = DEMO / "sample"
AGENT = DEMO / "agent.py"
PLAN = DEMO / "plan.yaml"
SCOPE = ("textstats/", "tests/")


def _command() -> str:
    """The plan's builder command with the driver's placeholders filled in."""
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(AGENT))}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the sample, as the demo's worktree would hold it."""
    dest = tmp_path / "textstats"
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return dest


def _pytest(root: Path) -> proc.ProcResult:
    env = proc.scrubbed_env(extra={"PYTHONDONTWRITEBYTECODE": "1"})
    return proc.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=root, env=env, timeout_s=120,
    )


def _agent(root: Path, phase: str, attempt: int = 1, feedback: str = "") -> AgentOutcome:
    side = root.parent / f"attempt-{phase}-{attempt}"
    return run_agent(
        spec=AgentSpec(command=_command()),
        role="builder",
        worktree=root,
        env_vars={
            "AUTOPACK_RUN_ID": "demo",
            "AUTOPACK_PHASE_ID": phase,
            "AUTOPACK_ATTEMPT": str(attempt),
            "AUTOPACK_FEEDBACK": feedback,
        },
        timeout_s=60,
        log_path=side / "builder.log",
        result_path=side / "result.json",
    )


def _changed(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def _in_scope(path: str) -> bool:
    return path.startswith(SCOPE)


def _builder_result(out: AgentOutcome) -> BuilderResult:
    assert out.ok, out.log_path.read_text()
    assert isinstance(out.result, BuilderResult)
    assert out.result.status == "success"
    assert out.usage.tokens_in > 0 and out.usage.tokens_out > 0 and out.usage.cost_usd > 0
    return out.result


# --- the sample -----------------------------------------------------------------------

def test_sample_tests_pass_as_shipped(project: Path) -> None:
    done = _pytest(project)
    assert done.ok, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_sample_ships_its_gitignore() -> None:
    lines = (SAMPLE / ".gitignore").read_text().splitlines()
    assert "__pycache__/" in lines and ".pytest_cache/" in lines


# --- the agent, phase by phase ----------------------------------------------------------

def test_p1_1_adds_sentence_count_in_scope_and_passes(project: Path) -> None:
    before = tree_snapshot(project)
    result = _builder_result(_agent(project, "P1.1"))
    changed = _changed(before, tree_snapshot(project))
    assert changed == {"textstats/counting.py", "tests/test_counting.py"}
    assert "def sentence_count(" in (project / "textstats/counting.py").read_text()
    assert result.suggested_issues == []
    done = _pytest(project)
    assert done.ok, done.stdout


def test_p1_2_attempt_1_breaks_an_existing_test(project: Path) -> None:
    before = tree_snapshot(project)
    result = _builder_result(_agent(project, "P1.2", attempt=1))
    assert all(_in_scope(p) for p in _changed(before, tree_snapshot(project)))
    assert "def title_case(" in (project / "textstats/normalize.py").read_text()
    done = _pytest(project)
    assert not done.ok
    assert "test_strip_punctuation_keeps_digits" in done.stdout  # an existing test, not a new one
    assert [i.issue_key for i in result.suggested_issues] == ["normalize-unicode-punctuation"]


@pytest.mark.parametrize("after_attempt_1", [False, True], ids=["fresh", "on-top-of-attempt-1"])
def test_p1_2_attempt_2_reads_feedback_and_passes(project: Path, after_attempt_1: bool) -> None:
    # The supervisor resets the worktree between attempts ("fresh"); the agent is right
    # even when it is not.
    if after_attempt_1:
        _agent(project, "P1.2", attempt=1)
    feedback = "FAILED tests/test_normalize.py::test_strip_punctuation_keeps_digits"
    out = _agent(project, "P1.2", attempt=2, feedback=feedback)
    result = _builder_result(out)
    assert feedback in out.log_path.read_text()
    issue = result.suggested_issues[0]
    assert (issue.issue_key, issue.severity.value) == ("normalize-unicode-punctuation", "minor")
    assert issue.message == "unicode punctuation is not handled"
    done = _pytest(project)
    assert done.ok, done.stdout


def test_feedback_given_as_a_file_is_printed(project: Path, tmp_path: Path) -> None:
    note = tmp_path / "feedback.md"
    note.write_text("CI step tests failed: 1 failed\n")
    out = _agent(project, "P1.2", attempt=2, feedback=str(note))
    assert "CI step tests failed: 1 failed" in out.log_path.read_text()


@pytest.mark.parametrize("attempt", [1, 2])
def test_p2_1_always_writes_outside_its_scope(project: Path, attempt: int) -> None:
    before = tree_snapshot(project)
    _builder_result(_agent(project, "P2.2", attempt=attempt))
    changed = _changed(before, tree_snapshot(project))
    outside = {p for p in changed if not _in_scope(p)}
    assert outside == {"docs/notes.md"}
    assert {"textstats/counting.py", "tests/test_counting.py"} <= changed
    done = _pytest(project)  # the in-scope work itself is fine: only the gate stops it
    assert done.ok, done.stdout


def test_p2_2_adds_a_cli_and_passes(project: Path) -> None:
    before = tree_snapshot(project)
    _builder_result(_agent(project, "P2.1"))
    changed = _changed(before, tree_snapshot(project))
    assert changed == {"textstats/cli.py", "tests/test_cli.py"}
    done = _pytest(project)
    assert done.ok, done.stdout
    cli = proc.run(
        [sys.executable, "-m", "textstats.cli", "one", "two"],
        cwd=project, env=proc.scrubbed_env(extra={"PYTHONDONTWRITEBYTECODE": "1"}),
        timeout_s=60,
    )
    assert cli.ok and "words: 2" in cli.stdout and "chars: 7" in cli.stdout


def test_accepted_phases_in_plan_order_leave_a_green_project(project: Path) -> None:
    for phase, attempt in [("P1.1", 1), ("P1.2", 2), ("P2.1", 1)]:
        _builder_result(_agent(project, phase, attempt=attempt))
    done = _pytest(project)
    assert done.ok, done.stdout
    counting_tests = (project / "tests/test_counting.py").read_text()
    assert counting_tests.count("from textstats.counting import") == 1


@pytest.mark.parametrize(("phase", "attempt"), [("P1.1", 1), ("P1.2", 1), ("P1.2", 2),
                                                ("P2.2", 1), ("P2.1", 1)])
def test_agent_is_idempotent_within_an_attempt(project: Path, phase: str, attempt: int) -> None:
    first = _agent(project, phase, attempt=attempt)
    once = tree_snapshot(project)
    second = _agent(project, phase, attempt=attempt)
    assert tree_snapshot(project) == once
    assert first.result == second.result


def test_unknown_phase_fails_with_a_result(project: Path) -> None:
    before = tree_snapshot(project)
    out = _agent(project, "P9.9")
    assert out.exit_code == 2
    assert isinstance(out.result, BuilderResult) and out.result.status == "failed"
    assert "P9.9" in out.log_path.read_text()
    assert tree_snapshot(project) == before


# --- the plan ---------------------------------------------------------------------------

def _plan_data() -> Any:
    return to_plain(load_roundtrip(PLAN).data)


def test_plan_is_a_valid_plan_once_placeholders_are_filled() -> None:
    text = PLAN.read_text()
    assert "{python}" in text and "{agent}" in text and "{repo}" in text
    data = _plan_data()
    assert data["target"] == {"repo": "{repo}", "base": "main"}
    builder = data["agents"]["builder"]["command"]
    assert builder == "{python} {agent}"
    data["agents"]["builder"]["command"] = _command()
    step = data["ci"]["normal"]["steps"][0]
    assert step["run"] == "{python} -m pytest -q -p no:cacheprovider --junitxml={junit}"
    plan = Plan.model_validate(data)
    assert plan.run_id == "demo" and plan.project_id == "textstats"
    assert [t.tier_id for t in plan.tiers] == ["T1", "T2"]
    assert [p.phase_id for _, p in plan.phases()] == ["P1.1", "P1.2", "P2.1", "P2.2"]
    assert {p.task_category for _, p in plan.phases()} == {
        "feature_scaffolding", "feature_implementation"
    }
    for _, phase in plan.phases():
        assert phase.scope.allow == ["textstats/**", "tests/**"]
        assert phase.complexity is not None and phase.builder_mode is not None


def test_plan_phases_are_the_ones_the_agent_knows() -> None:
    # run_name keeps the agent's `if __name__ == "__main__"` from running.
    agent = runpy.run_path(str(AGENT), run_name="demo_agent")
    plan_ids = [p["phase_id"] for t in _plan_data()["tiers"] for p in t["phases"]]
    assert plan_ids == list(agent["PHASES"])
