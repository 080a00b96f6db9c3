"""Governance end to end: budgets, the auditor, tier and run ends (docs/architecture.md: One phase, Governance).

Every terminal state is reached by a real run: a temporary git repository, scripted agents
(small Python scripts run as subprocesses by the supervisor), real CI steps. Each test
reads the record the run left behind: run.json, phase.json, the audit folders,
RUN_SUMMARY.md, tiers/<tier>.md and incident/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.validate import validate_run
from pipeline.core.jsonio import read_model
from pipeline.core.overrides import builtin_path
from pipeline.core.yamlio import dump_new, load_fast
from pipeline.models.results import AuditRecord
from pipeline.run.driver import run_to_end
from testing.runs import RunSetup, command, make_workspace, phase, pytest_step, python_step, write_agent

FILES = {"mod.py": "X = 1\n"}
# CI: `mod.X` must be below 100 (a builder that writes X = 100+ breaks it).
CI_X_BELOW_100 = [python_step("x-below-100", "import mod; assert mod.X < 100, mod.X")]
SLICE = "feature_implementation:low"  # what testing.runs.phase() compiles to
# The tier CI-run cap is 2 x phases (§11.9): a one-phase tier whose builder fails twice has
# no CI run left for the auditor's patch. Tests of escalation give the tier more room.
ROOMY_CI = "tier_budgets:\n  ci_runs_per_phase: 5\n"
# High-risk categories allow one auditor attempt; tests of auditor retries allow two.
TWO_AUDITOR_ATTEMPTS = "categories:\n  schema_contract_change:\n    max_auditor_attempts: 2\n"

# The scripted auditors report their environment in files beside their scripts, outside the
# worktree: the sandbox forbids that, so these tests drive the fallback (tests/test_sandbox.py
# covers the sandbox).
pytestmark = pytest.mark.usefixtures("unsandboxed")


# -- helpers -------------------------------------------------------------------------------


def governed(
    tmp_path: Path,
    *,
    builder: str,
    auditor: str | None = None,
    phases: Sequence[Mapping[str, Any]] | None = None,
    tiers: Sequence[Mapping[str, Any]] | None = None,
    ci_steps: Sequence[Mapping[str, Any]] = CI_X_BELOW_100,
    plan: Mapping[str, Any] | None = None,
    ruleset: str | None = None,
    files: Mapping[str, str] = FILES,
    preflight_attempts: int = 1,
    target_separate: bool = True,
) -> RunSetup:
    """A started run: `builder` / `auditor` are agent bodies (see testing.runs.AGENT_PRELUDE),
    `plan` top-level keys are set over the test plan, `ruleset` is written to the
    workspace's profiles/ruleset.yaml."""
    setup = make_workspace(
        tmp_path,
        files=files,
        agent_body=builder,
        phases=phases,
        tiers=tiers,
        ci_steps=ci_steps,
        target_separate=target_separate,
    )
    data = load_fast(setup.plan_path)
    data["ci"]["normal"]["preflight_attempts"] = preflight_attempts
    if auditor is not None:
        script = write_agent(tmp_path / "agents" / "auditor.py", auditor)
        data["agents"]["auditor"] = {"command": command(script)}
    data.update(plan or {})
    setup.plan_path.write_text(dump_new(data, header="governance test plan"))
    if ruleset is not None:
        (setup.workspace / "profiles").mkdir(exist_ok=True)
        (setup.workspace / "profiles" / "ruleset.yaml").write_text(ruleset)
    setup.start()
    return setup


def finish(setup: RunSetup) -> dict[str, Any]:
    """Drive the run to its end; return run.json after checking the terminal artifacts."""
    outcomes = run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert outcomes[-1].run_state.value == run["state"]
    assert run["state"].startswith("DONE_"), run["state"]
    assert (setup.run_dir / "RUN_SUMMARY.md").is_file()
    for tier in run["tiers"]:
        assert (setup.run_dir / "tiers" / f"{tier['tier_id']}.md").is_file()
        assert tier["cleanliness"] in ("clean", "not_clean")
    incident = setup.run_dir / "incident" / "incident.json"
    if run["state"] == "DONE_SUCCESS":
        assert not incident.exists()
        assert run["failure_reason"] is None
    else:
        assert incident.is_file(), "every DONE_FAILED_* run leaves an incident pack"
        assert json.loads(incident.read_text())["state"] == run["state"]
        assert run["failure_reason"]
        assert run["promotion_eligible_to_main"] is False
    assert run["state"] in (setup.run_dir / "RUN_SUMMARY.md").read_text()
    # every artifact validates against its schema and the event chain is intact
    assert validate_run(setup.workspace, setup.run_id) == []
    return run


def builder_attempts(setup: RunSetup, phase_id: str) -> list[dict[str, Any]]:
    return [a for a in setup.phase_json(phase_id)["attempts"] if a["role"] == "builder"]


def audits(setup: RunSetup, phase_id: str) -> list[dict[str, Any]]:
    root = setup.phase_dir(phase_id) / "audit"
    if not root.exists():
        return []
    dirs = sorted(root.iterdir(), key=lambda p: int(p.name))
    for d in dirs:
        read_model(d / "auditor.json", AuditRecord)  # validates
    return [json.loads((d / "auditor.json").read_text()) for d in dirs]


def notes(setup: RunSetup, what: str) -> list[dict[str, Any]]:
    return [e for e in setup.events() if e["kind"] == "note" and e["data"].get("what") == what]


def result_json(**fields: Any) -> str:
    """Agent-body line writing `fields` as the AUTOPACK_RESULT JSON."""
    return f"result(**{fields!r})"


def high_risk(phase_id: str, category: str, **overrides: Any) -> dict[str, Any]:
    """A phase whose category defaults decide everything (no test-friendly overrides)."""
    data: dict[str, Any] = {
        "phase_id": phase_id,
        "name": f"Phase {phase_id}",
        "description": f"Do the work of {phase_id}.",
        "task_category": category,
        "scope": {"allow": ["**"]},
    }
    data.update(overrides)
    return data


# Agent bodies. A builder that fixes X on its first attempt; one that always breaks it.
GOOD_BUILDER = 'write("mod.py", "X = 2\\n")'
BAD_BUILDER = 'write("mod.py", f"X = {100 + ATTEMPT}\\n")'
# An auditor that records its AUTOPACK_* environment next to its script, then gives a verdict.
AUDITOR_LOG_ENV = """
n = len(list(Path(__file__).parent.glob("auditor-env-*.json"))) + 1
env = {k: v for k, v in os.environ.items() if k.startswith("AUTOPACK_")}
patch = env.get("AUTOPACK_PATCH")
env["patch_text"] = Path(patch).read_text() if patch else None
Path(__file__).parent.joinpath(f"auditor-env-{n}.json").write_text(json.dumps(env))
"""


def auditor_envs(setup: RunSetup) -> list[dict[str, Any]]:
    assert setup.agent is not None
    found = sorted(setup.agent.parent.glob("auditor-env-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [json.loads(p.read_text()) for p in found]


# -- DONE_SUCCESS --------------------------------------------------------------------------


def test_success_is_promotion_eligible_with_summary_and_tier_pages(tmp_path: Path) -> None:
    builder = """
if PHASE == "P1":
    write("mod.py", "X = 2\\n")
else:
    write("other.py", "Y = 1\\n")
result(usage={"tokens_in": 1000, "tokens_out": 500, "cost_usd": 0.01})
"""
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1")]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
    ]
    setup = governed(tmp_path, builder=builder, tiers=tiers)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS"
    assert run["promotion_eligible_to_main"] is True
    assert run["promotion_reasons"] == ["DONE_SUCCESS, every tier clean, no budget failure"]
    assert run["spend"]["tokens"] == 3000
    assert [t["cleanliness"] for t in run["tiers"]] == ["clean", "clean"]
    assert [t["state"] for t in run["tiers"]] == ["COMPLETE", "COMPLETE"]
    summary = (setup.run_dir / "RUN_SUMMARY.md").read_text()
    assert "**Promotion:** eligible" in summary
    assert "cleanliness **clean**" in (setup.run_dir / "tiers" / "T2.md").read_text()
    assert setup.git("show", f"{setup.branch}:mod.py") == "X = 2"
    assert setup.git("show", "main:mod.py") == "X = 1", "the base branch is never written"


# -- DONE_FAILED_BUDGET_EXHAUSTED ----------------------------------------------------------


def assert_budget_end(setup: RunSetup, run: dict[str, Any], budget: str, level: str, scope: str) -> None:
    assert run["state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    reason = run["failure_reason"]
    assert f"budget exhausted: {budget} at {level} {scope}" in reason, reason
    assert f"spent most by {SLICE}" in reason, reason
    assert any("a budget was exhausted" in r for r in run["promotion_reasons"])
    (event,) = notes(setup, "budget_exhausted")
    assert event["data"]["budget"] == budget
    assert event["data"]["level"] == level
    assert event["data"]["slice"] == SLICE
    assert setup.phase_json("P1")["state"] == "FAILED"
    assert reason in (setup.run_dir / "RUN_SUMMARY.md").read_text()
    assert json.loads((setup.run_dir / "incident" / "incident.json").read_text())["reason"] == reason
    key = f"budget:{level}:{budget}"
    assert key in setup.issue_keys("P1")
    assert setup.run_index()["issues_by_key"][key]["effective_severity"] == "major"


def test_tokens_run_budget_from_the_plan_refuses_the_next_call(tmp_path: Path) -> None:
    # 300000 tokens: exactly the tier's cap (3 x 100000), so only the run cap can refuse.
    builder = BAD_BUILDER + "\n" + result_json(usage={"tokens_in": 250_000, "tokens_out": 50_000})
    setup = governed(
        tmp_path,
        builder=builder,
        phases=[phase("P1", incident_token_cap=100_000, max_builder_attempts=3)],
        plan={"budgets": {"token_cap": 350_000}},
    )
    run = finish(setup)
    assert_budget_end(setup, run, "tokens", "run", "r1")
    assert "(300000 used of 350000)" in run["failure_reason"]
    # the second call (up to 100000 more tokens) could not fit: it was not made
    assert len(builder_attempts(setup, "P1")) == 1
    assert not (setup.phase_dir("P1") / "attempts" / "2" / "builder.log").exists()


def test_an_agent_that_overspends_a_cap_ends_the_run_even_when_its_patch_passes(tmp_path: Path) -> None:
    overspend = 'write("x.txt", "x\\n")\n' + result_json(usage={"tokens_in": 500_000})
    setup = governed(tmp_path, builder=overspend, phases=[phase("P1", incident_token_cap=100_000)])
    run = finish(setup)
    assert_budget_end(setup, run, "tokens", "tier", "T1")
    assert "(500000 used of 300000)" in run["failure_reason"]
    assert not run["promotion_eligible_to_main"]


def test_tokens_tier_budget_from_a_workspace_ruleset(tmp_path: Path) -> None:
    builder = BAD_BUILDER + "\n" + result_json(usage={"tokens_in": 50_000})
    setup = governed(
        tmp_path,
        builder=builder,
        phases=[phase("P1", incident_token_cap=100_000, max_builder_attempts=3)],
        ruleset="tier_budgets:\n  token_cap_incident_multiplier: 1\n",
    )
    strategy = json.loads((setup.run_dir / "strategy.json").read_text())
    assert strategy["tiers"][0]["token_cap"] == 100_000
    run = finish(setup)
    assert_budget_end(setup, run, "tokens", "tier", "T1")
    assert len(builder_attempts(setup, "P1")) == 1


def test_incident_token_cap_is_a_phase_budget(tmp_path: Path) -> None:
    builder = BAD_BUILDER + "\n" + result_json(usage={"tokens_in": 150_000})
    setup = governed(
        tmp_path, builder=builder, phases=[phase("P1", incident_token_cap=100_000, max_builder_attempts=3)]
    )
    run = finish(setup)
    assert_budget_end(setup, run, "incident_tokens", "phase", "P1")
    assert "budget:phase:incident_tokens" in setup.issue_keys("P1")


def test_cost_cap_from_the_plan(tmp_path: Path) -> None:
    builder = BAD_BUILDER + "\n" + result_json(usage={"tokens_in": 10, "cost_usd": 1.25})
    setup = governed(
        tmp_path,
        builder=builder,
        phases=[phase("P1", max_builder_attempts=3)],
        plan={"budgets": {"cost_cap_usd": 1.0}},
    )
    assert setup.run_json()["budgets"]["cost_cap_usd"] == 1.0
    run = finish(setup)
    assert_budget_end(setup, run, "cost_usd", "run", "r1")
    assert "(1.25 used of 1)" in run["failure_reason"]
    assert len(builder_attempts(setup, "P1")) == 1


def test_ci_run_cap_from_a_workspace_ruleset(tmp_path: Path) -> None:
    # attempt 1 breaks CI; attempt 2 would pass, but its CI run does not fit the tier's cap
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 100\\n" if ATTEMPT == 1 else "X = 2\\n")',
        phases=[phase("P1", max_builder_attempts=3)],
        ruleset="tier_budgets:\n  ci_runs_per_phase: 1\n",
    )
    run = finish(setup)
    assert_budget_end(setup, run, "ci_runs", "tier", "T1")
    assert "(1 used of 1)" in run["failure_reason"]
    assert run["spend"]["ci_runs"] == 1
    assert not (setup.phase_dir("P1") / "ci" / "2").exists()


def test_minor_issue_cap_from_a_workspace_ruleset(tmp_path: Path) -> None:
    builder = GOOD_BUILDER + "\n" + result_json(
        suggested_issues=[{"issue_key": "style:naming", "severity": "minor", "message": "X is a bad name"}]
    )
    setup = governed(tmp_path, builder=builder, ruleset="run_budgets:\n  minor_issues_per_phase: 0\n")
    run = finish(setup)
    assert_budget_end(setup, run, "minor_issues", "run", "r1")
    assert "(1 used of 0)" in run["failure_reason"]
    assert "style:naming" in setup.issue_keys("P1")


# -- DONE_FAILED_POLICY_VIOLATION ----------------------------------------------------------


def test_scope_breach_ends_the_run_policy_violation(tmp_path: Path) -> None:
    builder = 'write("src/ok.py", "A = 1\\n")\nwrite("elsewhere.py", "B = 1\\n")'
    setup = governed(tmp_path, builder=builder, phases=[phase("P1", scope={"allow": ["src/**"]})])
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION"
    assert "elsewhere.py" in json.dumps(setup.gate_json("P1"))
    assert (setup.run_dir / "incident" / "last-patch.diff").is_file()
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == []


# -- DONE_FAILED_REQUIRES_HUMAN_REVIEW -----------------------------------------------------


def test_high_risk_alias_without_auditor_requires_human_review_before_any_call(tmp_path: Path) -> None:
    setup = governed(tmp_path, builder=GOOD_BUILDER, phases=[high_risk("P1", "security_auth")])
    ps = json.loads((setup.run_dir / "strategy.json").read_text())["phases"][0]
    # the playbook's name maps to the same defaults as security_auth_change
    assert (ps["task_category"], ps["requested_category"]) == ("security_auth_change", "security_auth")
    assert ps["auto_apply"] is False and ps["high_risk"] is True
    assert ps["ci_profile"] == "strict" and ps["auditor_profile"] == "security_review"
    assert ps["complexity"] == "high" and ps["default_severity"] == "major"
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert "needs auditor approval before apply and no auditor is configured" in run["failure_reason"]
    assert setup.phase_json("P1")["attempts"] == [], "no tokens are spent on a phase that can never apply"


def test_builder_attempts_spent_without_auditor_requires_human_review(tmp_path: Path) -> None:
    setup = governed(tmp_path, builder=BAD_BUILDER)
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert "2 of 2 builder attempts spent" in run["failure_reason"]
    assert "no auditor is configured" in run["failure_reason"]


def test_auditor_rejects_a_high_risk_patch(tmp_path: Path) -> None:
    auditor = AUDITOR_LOG_ENV + result_json(verdict="reject", notes="drops the migration's down step")
    setup = governed(tmp_path, builder=GOOD_BUILDER, auditor=auditor, phases=[high_risk("P1", "schema_change")])
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert run["failure_reason"] == "the auditor rejected phase P1: drops the migration's down step"
    assert [a["verdict"] for a in audits(setup, "P1")] == ["reject"]
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == []
    assert setup.phase_json("P1")["state"] == "FAILED"


# -- the auditor ---------------------------------------------------------------------------


def test_auditor_approves_a_high_risk_phase_which_then_takes_gate_and_ci(tmp_path: Path) -> None:
    auditor = AUDITOR_LOG_ENV + result_json(verdict="approve", usage={"tokens_in": 700}, notes="fine")
    setup = governed(tmp_path, builder=GOOD_BUILDER, auditor=auditor, phases=[high_risk("P1", "schema_change")])
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert rec["state"] == "COMPLETE" and rec["approved_attempt"] == 1
    assert rec["spend"]["auditor_attempts"] == 1 and rec["spend"]["tokens"] == 700
    assert [(a["purpose"], a["verdict"], a["profile"]) for a in audits(setup, "P1")] == [
        ("review", "approve", "schema_review")
    ]
    (env,) = auditor_envs(setup)
    assert env["AUTOPACK_AUDIT_PURPOSE"] == "review"
    assert env["AUTOPACK_AUDITOR_PROFILE"] == str(builtin_path("auditors/schema_review.md"))
    assert Path(env["AUTOPACK_AUDITOR_PROFILE"]).is_file()
    assert env["AUTOPACK_PATCH"] == str(setup.phase_dir("P1") / "attempts" / "1" / "patch.diff")
    assert "+X = 2" in env["patch_text"]
    # plus the builder's variables
    assert (env["AUTOPACK_RUN_ID"], env["AUTOPACK_PHASE_ID"], env["AUTOPACK_ATTEMPT"]) == ("r1", "P1", "1")
    assert env["AUTOPACK_PHASE_SPEC"] == str(setup.phase_dir("P1") / "spec.md")
    assert env["AUTOPACK_PHASE_JSON"] == str(setup.phase_dir("P1") / "phase.json")
    assert env["AUTOPACK_RESULT"] == str(setup.phase_dir("P1") / "audit" / "1" / "result.json")
    assert "AUTOPACK_FEEDBACK" in env
    assert env["AUTOPACK_ROLE"] == "auditor"
    # approved before the gate: the review event precedes the strict CI run
    ci = json.loads((setup.phase_dir("P1") / "ci" / "1" / "ci.json").read_text())
    assert ci["profile"] == "strict" and ci["verdict"] == "pass"
    assert setup.git("show", f"{setup.branch}:mod.py") == "X = 2"


def test_workspace_auditor_profile_overrides_the_built_in_prompt(tmp_path: Path) -> None:
    auditor = AUDITOR_LOG_ENV + result_json(verdict="approve")
    setup = make_workspace(tmp_path, files=FILES, agent_body=GOOD_BUILDER, ci_steps=CI_X_BELOW_100)
    own = setup.workspace / "profiles" / "auditors" / "schema_review.md"
    own.parent.mkdir(parents=True)
    own.write_text("Our own schema review checklist.\n")
    data = load_fast(setup.plan_path)
    data["agents"]["auditor"] = {"command": command(write_agent(tmp_path / "agents" / "auditor.py", auditor))}
    data["tiers"][0]["phases"] = [high_risk("P1", "schema_change")]
    setup.plan_path.write_text(dump_new(data))
    setup.start()
    assert finish(setup)["state"] == "DONE_SUCCESS"
    assert auditor_envs(setup)[0]["AUTOPACK_AUDITOR_PROFILE"] == str(own)


@pytest.mark.parametrize("how", ["patch_file", "worktree"])
def test_escalation_auditor_revises_with_a_patch_that_passes(tmp_path: Path, how: str) -> None:
    if how == "patch_file":
        # the auditor hands in a patch file (made with git diff, worktree left clean)
        fix = """
write("mod.py", "X = 7\\n")
patch = Path(RESULT).parent / "fix.diff"
patch.write_text(git("diff"))
git("checkout", "--", ".")
result(verdict="revise", patch=str(patch), notes="set X to 7")
"""
    else:
        # a revise without `patch` means the auditor's own worktree changes
        fix = 'write("mod.py", "X = 7\\n")\n' + result_json(verdict="revise", notes="set X to 7")
    setup = governed(tmp_path, builder=BAD_BUILDER, auditor=AUDITOR_LOG_ENV + fix, ruleset=ROOMY_CI)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert rec["escalated"] is True
    assert [(a["k"], a["role"]) for a in rec["attempts"]] == [(1, "builder"), (2, "builder"), (3, "auditor")]
    assert rec["attempts"][-1]["outcome"] == "passed"
    (env,) = auditor_envs(setup)
    assert env["AUTOPACK_AUDIT_PURPOSE"] == "escalation"
    assert "+X = 102" in env["patch_text"], "the auditor sees the last failed patch"
    assert "CI" in env["AUTOPACK_FEEDBACK"]
    assert (setup.phase_dir("P1") / "audit" / "1" / "suggested.diff").is_file()
    (commit,) = setup.commits_with_trailer("Autopack-Phase", "P1")
    assert setup.git("show", f"{commit}:mod.py") == "X = 7"
    assert "builder attempts spent" in notes(setup, "escalated")[0]["data"]["why"]


def test_auditor_patch_failing_ci_fails_the_phase_and_ends_the_run(tmp_path: Path) -> None:
    builder = """
if PHASE == "P1":
    write("mod.py", f"X = {100 + ATTEMPT}\\n")
else:
    write("other.py", "Y = 1\\n")
"""
    auditor = 'write("mod.py", "X = 500\\n")\n' + result_json(verdict="revise", notes="try 500")
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1", max_builder_attempts=1)]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
    ]
    setup = governed(tmp_path, builder=builder, auditor=auditor, tiers=tiers)
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert run["failure_reason"] == "phase P1: CI failed; 1 auditor attempt(s) spent"
    p1 = setup.phase_json("P1")
    assert p1["state"] == "FAILED"
    assert "1 auditor attempt(s) spent" in p1["failure_reason"]
    assert [a["role"] for a in p1["attempts"]] == ["builder", "auditor"]
    assert p1["attempts"][-1]["outcome"] == "ci_failed"
    # a failed escalation ends the run (playbook §9.3), even multi_tier: P2 never runs
    assert setup.phase_json("P2")["state"] == "SKIPPED"
    tiers_out = {t["tier_id"]: t for t in run["tiers"]}
    assert tiers_out["T1"]["state"] == "FAILED" and tiers_out["T1"]["cleanliness"] == "not_clean"
    assert tiers_out["T2"]["state"] == "SKIPPED"
    assert "not_clean" in (setup.run_dir / "tiers" / "T1.md").read_text()


@pytest.mark.parametrize("misbehaviour", ["crash", "invalid_verdict"])
def test_misbehaving_auditor_is_retried_then_requires_human_review(tmp_path: Path, misbehaviour: str) -> None:
    auditor = (
        AUDITOR_LOG_ENV + "sys.exit(3)"
        if misbehaviour == "crash"
        else AUDITOR_LOG_ENV + result_json(verdict="maybe")
    )
    # high-risk categories allow 1 auditor attempt by default; the project allows a retry
    setup = governed(
        tmp_path,
        builder=GOOD_BUILDER,
        auditor=auditor,
        phases=[high_risk("P1", "cross_cutting_refactor")],
        ruleset="categories:\n  cross_cutting_refactor:\n    max_auditor_attempts: 2\n",
    )
    assert json.loads((setup.run_dir / "strategy.json").read_text())["phases"][0]["max_auditor_attempts"] == 2
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert run["failure_reason"] == "the auditor failed its review 2 time(s) for phase P1"
    records = audits(setup, "P1")
    assert len(records) == 2, "retried within max_auditor_attempts, then no more"
    assert all(r["verdict"] is None and r["error"] for r in records)
    if misbehaviour == "crash":
        assert [r["exit_code"] for r in records] == [3, 3]
    assert setup.phase_json("P1")["spend"]["auditor_attempts"] == 2
    assert len(builder_attempts(setup, "P1")) == 1
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == []


TESTS_FILE = """\
import mod


def test_a():
    assert mod.X != 101 and mod.X != 102


def test_b():
    assert mod.X != 103
"""


def test_same_failure_twice_escalates_before_attempts_are_spent(tmp_path: Path) -> None:
    builder = 'write("mod.py", "X = 101\\n" if ATTEMPT == 1 else "X = 102\\n")'
    auditor = AUDITOR_LOG_ENV + 'write("mod.py", "X = 5\\n")\n' + result_json(verdict="revise")
    setup = governed(
        tmp_path,
        files={**FILES, "test_mod.py": TESTS_FILE},
        builder=builder,
        auditor=auditor,
        phases=[phase("P1", max_builder_attempts=4)],
        ci_steps=[pytest_step()],
        ruleset=ROOMY_CI,
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert [a["role"] for a in rec["attempts"]] == ["builder", "builder", "auditor"]
    first, second = rec["attempts"][:2]
    assert first["fingerprint"] == second["fingerprint"]
    (escalated,) = notes(setup, "escalated")
    assert "the same failure repeated" in escalated["data"]["why"]
    assert auditor_envs(setup)[0]["AUTOPACK_AUDIT_PURPOSE"] == "escalation"


def test_different_failures_do_not_escalate_early(tmp_path: Path) -> None:
    builder = 'write("mod.py", {1: "X = 101\\n", 2: "X = 103\\n"}.get(ATTEMPT, "X = 3\\n"))'
    auditor = AUDITOR_LOG_ENV + result_json(verdict="reject")
    setup = governed(
        tmp_path,
        files={**FILES, "test_mod.py": TESTS_FILE},
        builder=builder,
        auditor=auditor,
        phases=[phase("P1", max_builder_attempts=4)],
        ci_steps=[pytest_step()],
        ruleset=ROOMY_CI,
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    assert [a["role"] for a in setup.phase_json("P1")["attempts"]] == ["builder"] * 3
    assert auditor_envs(setup) == [] and notes(setup, "escalated") == []


# -- tier ends: single_tier / safety_critical stop, multi_tier continues -------------------


@pytest.mark.parametrize(
    ("run_scope", "safety", "minor", "stops"),
    [
        ("multi_tier", "normal", 3, False),
        ("single_tier", "normal", 3, True),
        ("multi_tier", "safety_critical", 2, True),
    ],
)
def test_not_clean_tier(tmp_path: Path, run_scope: str, safety: str, minor: int, stops: bool) -> None:
    # T1's only phase passes but leaves more minor issues than the tier tolerates
    # (2 per phase normal, 1 safety_critical); the run's cap (3 x 2 phases) is not reached.
    issues = [{"issue_key": f"nit:{i}", "severity": "minor"} for i in range(minor)]
    builder = f"""
if PHASE == "P1":
    write("mod.py", "X = 2\\n")
    result(suggested_issues={issues!r})
else:
    write("other.py", "Y = 1\\n")
"""
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1")]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
    ]
    setup = governed(
        tmp_path, builder=builder, tiers=tiers, plan={"run_scope": run_scope, "safety_profile": safety}
    )
    run = finish(setup)
    t1 = next(t for t in run["tiers"] if t["tier_id"] == "T1")
    assert t1["state"] == "COMPLETE" and t1["cleanliness"] == "not_clean"
    assert f"{minor} minor issue(s) > {minor - 1} tolerated" in t1["cleanliness_reasons"]
    assert setup.phase_json("P1")["state"] == "COMPLETE"
    if stops and run_scope == "single_tier":
        # a single_tier run holds one tier (T2 was chained into r1-part2), and stops there
        assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
        assert "tier T1 is not clean" in run["failure_reason"]
        assert [t["tier_id"] for t in run["tiers"]] == ["T1"]
        assert not (setup.workspace / "runs" / "r1-part2" / "run.json").exists(), "the chain stops"
    elif stops:
        assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
        assert "tier T1 is not clean" in run["failure_reason"]
        assert f"{run_scope}/{safety} runs stop at a not-clean tier" in run["failure_reason"]
        assert setup.phase_json("P2")["state"] == "SKIPPED"
        assert next(t for t in run["tiers"] if t["tier_id"] == "T2")["state"] == "SKIPPED"
    else:
        assert run["state"] == "DONE_SUCCESS"
        assert setup.phase_json("P2")["state"] == "COMPLETE"
        assert run["promotion_eligible_to_main"] is False
        assert any("tier T1 not_clean" in r for r in run["promotion_reasons"])


# -- DONE_FAILED_ENVIRONMENT ---------------------------------------------------------------


def test_missing_ci_command_ends_the_run_environment(tmp_path: Path) -> None:
    setup = governed(
        tmp_path,
        builder=GOOD_BUILDER,
        ci_steps=[{"name": "lint", "run": "autopack-no-such-tool --check", "timeout_s": 30}],
        preflight_attempts=3,
    )
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_ENVIRONMENT"
    assert "CI environment" in run["failure_reason"] and "autopack-no-such-tool" in run["failure_reason"]
    ci = json.loads((setup.phase_dir("P1") / "ci" / "1" / "ci.json").read_text())
    assert len(ci["tries"]) == 1, "a missing tool is not retried"
    assert len(builder_attempts(setup, "P1")) == 1


def python_only_path(tmp_path: Path) -> str:
    """A PATH holding only a `python` (no git), as in a container without git."""
    bin_dir = tmp_path / "python-only-bin"
    bin_dir.mkdir()
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    return str(bin_dir)


@pytest.mark.parametrize("target_separate", [True, False])
def test_git_gone_ends_the_run_environment(tmp_path: Path, target_separate: bool) -> None:
    setup = governed(tmp_path, builder=GOOD_BUILDER, target_separate=target_separate)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run_phase", "--run", setup.run_id],
        cwd=setup.workspace,
        env={**os.environ, "PATH": python_only_path(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "git is not installed" in done.stdout + done.stderr
    assert "run r1: DONE_FAILED_ENVIRONMENT" in done.stdout
    run = setup.run_json()
    assert run["state"] == "DONE_FAILED_ENVIRONMENT"
    assert "git is not installed" in run["failure_reason"]
    assert (setup.run_dir / "RUN_SUMMARY.md").is_file()
    assert (setup.run_dir / "incident" / "incident.json").is_file()
    assert setup.phase_json("P1")["state"] == "FAILED"


# -- auditor results are validated; attempts are counted per failure ------------------------


def test_review_revise_with_a_patch_file_inside_the_worktree(tmp_path: Path) -> None:
    # The auditor works in the worktree and names its patch relative to it (its cwd).
    auditor = """
write("mod.py", "X = 7\\n")
diff = git("diff")
git("checkout", "--", ".")
write("fix.diff", diff)
result(verdict="revise", patch="fix.diff", notes="7 is better")
"""
    setup = governed(tmp_path, builder=GOOD_BUILDER, auditor=auditor, phases=[high_risk("P1", "schema_change")])
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert [(a["k"], a["role"]) for a in rec["attempts"]] == [(1, "builder"), (2, "auditor")]
    assert rec["approved_attempt"] == 2
    (commit,) = setup.commits_with_trailer("Autopack-Phase", "P1")
    assert setup.git("show", f"{commit}:mod.py") == "X = 7"
    assert "fix.diff" not in setup.git("ls-tree", "-r", "--name-only", commit)


def test_revise_without_any_patch_is_an_invalid_result_not_a_rejection(tmp_path: Path) -> None:
    auditor = result_json(verdict="revise", notes="I would change something")
    setup = governed(
        tmp_path,
        builder=GOOD_BUILDER,
        auditor=auditor,
        phases=[high_risk("P1", "schema_change")],
        ruleset=TWO_AUDITOR_ATTEMPTS,
    )
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert run["failure_reason"] == "the auditor failed its review 2 time(s) for phase P1"
    records = audits(setup, "P1")
    assert len(records) == 2 and all("no patch" in r["error"] for r in records)


def test_one_auditor_crash_after_an_approval_is_retried(tmp_path: Path) -> None:
    # attempt 1 is approved but breaks CI; the review of attempt 2 crashes once (the
    # earlier successful review does not count as a failure) and is retried.
    auditor = AUDITOR_LOG_ENV + "if n == 2:\n    sys.exit(3)\n" + result_json(verdict="approve")
    builder = 'write("mod.py", "X = 100\\n" if ATTEMPT == 1 else "X = 2\\n")'
    setup = governed(
        tmp_path,
        builder=builder,
        auditor=auditor,
        phases=[high_risk("P1", "schema_change")],
        ruleset=TWO_AUDITOR_ATTEMPTS,
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    assert [(a["verdict"], a["exit_code"]) for a in audits(setup, "P1")] == [
        ("approve", 0),
        (None, 3),
        ("approve", 0),
    ]
    assert setup.phase_json("P1")["approved_attempt"] == 2
    # attempt 1's red CI was a major issue; attempt 2 fixed it: resolved, the tier is clean
    (tier,) = run["tiers"]
    assert tier["cleanliness"] == "clean" and tier["major_issue_count"] == 0
    statuses = {i["issue_key"]: i["status"] for i in setup.issues("P1")["issues"]}
    assert statuses == {"ci:strict": "resolved", "auditor:agent_failed": "open"}, statuses
    assert run["promotion_eligible_to_main"] is True


def test_escalation_after_reviews_gets_its_own_auditor_attempts(tmp_path: Path) -> None:
    # High risk: every builder attempt is reviewed (approve), CI fails twice; the escalation
    # that follows may still use max_auditor_attempts (2) calls: one crash, then a fix.
    auditor = AUDITOR_LOG_ENV + """
purpose = os.environ["AUTOPACK_AUDIT_PURPOSE"]
if purpose == "review":
    result(verdict="approve")
elif len([p for p in Path(__file__).parent.glob("auditor-env-*.json")
          if json.loads(p.read_text())["AUTOPACK_AUDIT_PURPOSE"] == "escalation"]) == 1:
    sys.exit(3)
else:
    write("mod.py", "X = 7\\n")
    result(verdict="revise")
"""
    setup = governed(
        tmp_path,
        builder=BAD_BUILDER,
        auditor=auditor,
        phases=[high_risk("P1", "schema_change", max_builder_attempts=2)],
        ruleset=ROOMY_CI + TWO_AUDITOR_ATTEMPTS,
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    assert [(a["purpose"], a["verdict"]) for a in audits(setup, "P1")] == [
        ("review", "approve"),
        ("review", "approve"),
        ("escalation", None),
        ("escalation", "revise"),
    ]


# -- the duration budget -------------------------------------------------------------------


def test_duration_budget_counts_earlier_attempts_of_the_same_invocation(tmp_path: Path) -> None:
    builder = 'time.sleep(1.5)\nwrite("mod.py", "X = 100\\n" if ATTEMPT == 1 else "X = 2\\n")'
    setup = governed(tmp_path, builder=builder, phases=[phase("P1", max_builder_attempts=3)])
    # A run already active for 119 min 59 s (run.json carries active time from job to job).
    run_json = setup.run_dir / "run.json"
    data = json.loads(run_json.read_text())
    data["spend"]["active_seconds"] = 120 * 60 - 1.0
    run_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_BUDGET_EXHAUSTED"
    assert "budget exhausted: duration at run r1" in run["failure_reason"]
    assert len(builder_attempts(setup, "P1")) == 1


def test_an_auditor_patch_takes_the_same_gate(tmp_path: Path) -> None:
    # the escalation's revision writes outside the phase's scope: the gate stops it too
    auditor = 'write("mod.py", "X = 7\\n")\nwrite("secrets/notes.py", "Z = 1\\n")\n' + result_json(verdict="revise")
    setup = governed(
        tmp_path,
        builder=BAD_BUILDER,
        auditor=auditor,
        phases=[phase("P1", max_builder_attempts=1, scope={"allow": ["mod.py"]})],
    )
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_POLICY_VIOLATION"
    assert [a["role"] for a in setup.phase_json("P1")["attempts"]] == ["builder", "auditor"]
    assert "secrets/notes.py" in json.dumps(setup.gate_json("P1"))
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == []


def test_an_auditor_call_that_cannot_fit_the_budget_is_not_made(tmp_path: Path) -> None:
    builder = BAD_BUILDER + "\n" + result_json(usage={"tokens_in": 60_000})
    setup = governed(
        tmp_path,
        builder=builder,
        auditor=AUDITOR_LOG_ENV + result_json(verdict="reject"),
        phases=[phase("P1", max_builder_attempts=1, incident_token_cap=100_000)],
        plan={"budgets": {"token_cap": 150_000}},
    )
    run = finish(setup)
    assert_budget_end(setup, run, "tokens", "run", "r1")
    assert audits(setup, "P1") == [] and auditor_envs(setup) == []
    assert setup.phase_json("P1")["escalated"] is True
