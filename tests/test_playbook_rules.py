"""The playbook's rules, one test each, named after the rule (docs/governance.md lists
them with their ruleset keys and defaults).

Every test drives a real run (temporary git repositories, scripted agents run as
subprocesses, real CI steps) or compiles a real strategy, and reads the record it left.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from test_governance import finish, governed, high_risk
from test_strategy import compile_plan, workspace

from pipeline.config.profiles import builtin_path, load_ci_profiles, load_ruleset
from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.core.yamlio import load_fast
from pipeline.issues.backlog import derive_backlog
from pipeline.models.enums import Severity
from pipeline.models.plan import Plan
from pipeline.models.strategy import Strategy
from pipeline.policy.strategy import compile_strategy
from testing.runs import phase
from testing.synthetic import SynIssue, SynPhase, write_run

# The scripted auditors log their calls beside their scripts, outside the worktree: the
# sandbox forbids that, so these runs use the fallback (tests/test_sandbox.py covers it).
pytestmark = pytest.mark.usefixtures("unsandboxed")

# -- §5.2: counts are of distinct issue_keys ----------------------------------------------


def _same_keys_in_every_phase(keys: list[str]) -> str:
    issues = [{"issue_key": k, "severity": "minor", "message": f"{k} again"} for k in keys]
    return f'write(f"{{PHASE}}.py", "Y = 1\\n")\nresult(suggested_issues={issues!r})'


def test_tier_issue_counts_are_of_distinct_issue_keys(tmp_path: Path) -> None:
    # 3 keys reported by both phases of T1: 3 distinct minors <= 4 tolerated (2 per phase).
    tiers = [{"tier_id": "T1", "name": "One", "phases": [phase("P1"), phase("P2")]}]
    setup = governed(tmp_path, builder=_same_keys_in_every_phase(["a", "b", "c"]), tiers=tiers)
    run = finish(setup)
    (tier,) = run["tiers"]
    assert tier["minor_issue_count"] == 3 and tier["major_issue_count"] == 0
    assert tier["cleanliness"] == "clean", tier["cleanliness_reasons"]
    assert run["state"] == "DONE_SUCCESS" and run["promotion_eligible_to_main"] is True
    entry = setup.run_index()["issues_by_key"]["a"]
    assert entry["occurrence_count"] == 2 and entry["seen_in_phases"] == ["P1", "P2"]
    assert "distinct minor issues 3 of 4" in (setup.run_dir / "tiers" / "T1.md").read_text()


def test_run_minor_issue_cap_counts_distinct_issue_keys(tmp_path: Path) -> None:
    # 4 keys in both phases: 4 distinct <= 6 (3 per phase); their occurrences (8) are not counted.
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1")]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
    ]
    ruleset = "safety_profiles:\n  normal:\n    tier_minor_per_phase: 4\n"
    setup = governed(tmp_path, builder=_same_keys_in_every_phase(["a", "b", "c", "d"]), tiers=tiers, ruleset=ruleset)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    assert run["debt_status"] == "has_minor_debt"
    assert [t["minor_issue_count"] for t in run["tiers"]] == [4, 4]


# -- §6, §8.2, §4.3: high-risk work, builder modes and safety_critical tighten ------------

HIGH_RISK = [
    "cross_cutting_refactor",
    "index_registry_change",
    "schema_contract_change",
    "bulk_multi_file_operation",
    "security_auth_change",
    "external_feature_reuse",
    "external_code_intake",
]
ORDINARY = ["feature_scaffolding", "feature_implementation", "bugfix", "tests", "performance", "dependency_update"]


def _phase(phase_id: str, category: str, **fields: Any) -> dict[str, Any]:
    return {"phase_id": phase_id, "name": f"Phase {phase_id}", "task_category": category, **fields}


def _strategy(tmp_path: Path, phases: list[dict[str, Any]], ruleset: str | None = None, **plan: Any) -> Strategy:
    """The strategy compiled from the built-in ruleset (with `ruleset` over it)."""
    return compile_plan(workspace(tmp_path, ruleset) if ruleset is not None else tmp_path, phases, **plan)


def test_high_risk_categories_get_tighter_limits_than_ordinary_work(tmp_path: Path) -> None:
    ordinary = [_strategy(tmp_path, [_phase("P1", c)]).phases[0] for c in ORDINARY]
    for category in HIGH_RISK:
        strategy = _strategy(tmp_path, [_phase("P1", category)])
        (ps,), (tier,) = strategy.phases, strategy.tiers
        assert ps.max_builder_attempts <= min(o.max_builder_attempts for o in ordinary), category
        assert ps.incident_token_cap < max(o.incident_token_cap for o in ordinary), category
        assert ps.max_auditor_attempts < ps.max_builder_attempts, category
        assert ps.ci_max_retries == 1, category
        assert tier.max_minor_issues == 1 and tier.max_major_issues == 0, category
    # a high-risk phase tightens the tolerance of the tier it shares with ordinary work
    ws = tmp_path / "ws"
    ws.mkdir()
    raised = "tier_budgets:\n  max_major_issues: 2\n"
    mixed = _strategy(ws, [_phase("A", "bugfix"), _phase("B", "security_auth")], ruleset=raised)
    assert (mixed.tiers[0].max_minor_issues, mixed.tiers[0].max_major_issues) == (3, 0)
    alone = _strategy(ws, [_phase("A", "bugfix")])
    assert alone.tiers[0].max_major_issues == 2


def test_high_risk_ci_retries_are_fewer_than_the_profile_gives(tmp_path: Path) -> None:
    """A high-risk phase's red CI gets one retry (2 tries), not the profile's 3."""
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 100\\n")',
        auditor='result(verdict="approve")',
        phases=[high_risk("P1", "schema_change")],
        preflight_attempts=3,
        ruleset="tier_budgets:\n  ci_runs_per_phase: 5\n",
    )
    finish(setup)
    report = json.loads((setup.phase_dir("P1") / "ci" / "1" / "ci.json").read_text())
    assert report["verdict"] == "fail" and len(report["tries"]) == 2


def test_builder_modes_never_add_attempts_where_the_playbook_tightens(tmp_path: Path) -> None:
    for mode in ("refactor_heavy", "schema_heavy", "tweak_light"):
        ps = _strategy(tmp_path, [_phase("P1", "feature_implementation", builder_mode=mode)]).phases[0]
        assert ps.max_builder_attempts == 2, mode
        assert ps.why["max_builder_attempts"] == "profile"
    ws = tmp_path / "ws"
    ws.mkdir()
    generous = "builder_modes:\n  refactor_heavy:\n    extra_attempts: 3\n    max_builder_attempts: 10\n"
    hr = _strategy(ws, [_phase("P1", "cross_cutting_refactor")], ruleset=generous).phases[0]
    assert hr.builder_mode.value == "refactor_heavy" and hr.max_builder_attempts == 2
    ordinary = _strategy(ws, [_phase("P1", "bugfix", complexity="high")]).phases[0]
    assert ordinary.max_builder_attempts == 6  # a project may loosen ordinary work explicitly


def test_safety_critical_tightens_run_budgets_and_attempts(tmp_path: Path) -> None:
    phases = [_phase("A", "feature_implementation"), _phase("B", "bugfix")]
    normal = _strategy(tmp_path, phases)
    critical = _strategy(tmp_path, phases, safety_profile="safety_critical")
    assert normal.run_budget.max_minor_issues_total == 6
    assert critical.run_budget.max_minor_issues_total == 2
    assert [p.max_builder_attempts for p in normal.phases] == [3, 2]  # bugfix is low: tweak_light
    assert [p.max_builder_attempts for p in critical.phases] == [2, 2]


# -- §10.1: CI profile from complexity and builder mode ------------------------------------


def test_ci_profile_is_strict_for_high_complexity_and_heavy_builder_modes(tmp_path: Path) -> None:
    cases = [
        ({"complexity": "high"}, "strict", "complexity"),
        ({"builder_mode": "refactor_heavy"}, "strict", "profile"),
        ({"builder_mode": "schema_heavy"}, "strict", "profile"),
        ({"builder_mode": "scaffolding_heavy"}, "normal", "category"),
        ({}, "normal", "category"),
    ]
    for fields, profile, why in cases:
        ps = _strategy(tmp_path, [_phase("P1", "feature_implementation", **fields)]).phases[0]
        assert (ps.ci_profile.value, ps.why["ci_profile"]) == (profile, why), fields


# -- §6/§9: reuse budgets start from the greenfield budget; sources must be catalogued -----


def test_a_reuse_budget_is_the_greenfield_budget_of_the_same_feature_reduced(tmp_path: Path) -> None:
    from pipeline.plan.generate import new_run

    path = new_run(tmp_path, "r1", project_type="api_service", features="auth_basic,rate_limiting,rest_api_crud")
    data = load_fast(path)
    strategy = _strategy(tmp_path, [], tiers=data["tiers"])
    ruleset = load_ruleset(tmp_path).ruleset
    reused = [p for p in strategy.phases if p.reuse is not None and p.reuse.decision != "greenfield"]
    assert reused
    for ps in reused:
        assert ps.reuse is not None
        greenfield = ruleset.categories[ruleset.canonical_category(ps.reuse.greenfield_category) or ""]
        assert ps.incident_token_cap == round(greenfield.incident_token_cap * (1 + ps.reuse.budget_modifier))
        assert ps.incident_token_cap < greenfield.incident_token_cap, ps.phase_id


def test_a_reuse_source_outside_the_curated_catalog_is_refused(tmp_path: Path) -> None:
    from pipeline.commands.validate import validate_run
    from pipeline.plan.generate import new_run
    from pipeline.run.start import start_run

    path = new_run(tmp_path, "r1", project_type="api_service", features="auth_basic")
    rt = yamlio.load_roundtrip(path)
    yamlio.set_value(rt, ("tiers", 0, "phases", 0, "reuse", "source", "repo"), "https://example.invalid/not-reviewed")
    yamlio.dump_roundtrip(rt, path)
    problems = validate_run(tmp_path, "r1")
    assert any("is not in the curated catalog for feature 'auth_basic'" in p for p in problems), problems
    with pytest.raises(InvalidInput, match="not in the curated catalog"):
        start_run(tmp_path, "r1")


# -- §5.1/§10.3: an issue fixed within the run is resolved ---------------------------------


def test_an_issue_fixed_by_a_later_attempt_is_resolved_and_does_not_count(tmp_path: Path) -> None:
    # attempt 1 writes outside its scope (a major gate issue); attempt 2 stays inside and
    # passes. A safety_critical run tolerates no major issue: the fixed one must not count.
    builder = 'write(f"{PHASE}.py", "X = 2\\n")\nif ATTEMPT == 1:\n    write("elsewhere.py", "B = 1\\n")'
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [phase("P1", scope={"allow": ["P1.py"]})]},
        {"tier_id": "T2", "name": "Two", "phases": [phase("P2", scope={"allow": ["P2.py"]})]},
    ]
    setup = governed(
        tmp_path,
        builder=builder,
        tiers=tiers,
        plan={"safety_profile": "safety_critical"},
        ruleset="on_policy_violation: retry\n",
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    issues = setup.issues("P1")
    (scope,) = [i for i in issues["issues"] if i["issue_key"].startswith("gate:")]
    assert scope["effective_severity"] == "major"
    assert (scope["status"], scope["seen_in_attempts"], scope["resolved_in_attempt"]) == ("resolved", [1], 2)
    assert issues["major_issue_count"] == 0 and issues["issue_state"] == "no_issues"
    assert [t["cleanliness"] for t in run["tiers"]] == ["clean", "clean"]
    assert setup.run_index()["issues_by_key"][scope["issue_key"]]["status"] == "resolved"
    assert run["promotion_eligible_to_main"] is True


# -- §2.3: the auditor is invoked when major issues appear --------------------------------

APPROVE_AND_LOG = """
purpose = os.environ.get("AUTOPACK_AUDIT_PURPOSE", "")
with open(Path(__file__).parent / "auditor-calls.txt", "a") as log:
    log.write(f"{PHASE} {ATTEMPT} {purpose}\\n")
result(verdict="approve", notes="looked at the major issue")
"""


def _auditor_calls(setup: Any) -> list[str]:
    path = setup.agent.parent / "auditor-calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_a_builder_reported_major_issue_gets_an_auditor_review_before_apply(tmp_path: Path) -> None:
    major = [{"issue_key": "self_doubt:race", "severity": "major", "message": "may race"}]
    builder = f'write(f"{{PHASE}}.py", "X = 2\\n")\nif PHASE == "P1":\n    result(suggested_issues={major!r})'
    tiers = [{"tier_id": "T1", "name": "One", "phases": [phase("P1"), phase("P2")]}]
    setup = governed(tmp_path, builder=builder, auditor=APPROVE_AND_LOG, tiers=tiers)
    run = finish(setup)
    assert _auditor_calls(setup) == ["P1 1 review"], "reviewed once, before apply; P2 had no major issue"
    assert setup.phase_json("P1")["approved_attempt"] == 1
    assert setup.phase_json("P1")["state"] == "COMPLETE"
    assert run["state"] == "DONE_SUCCESS"


def test_a_gate_major_issue_gets_an_auditor_review_of_the_next_attempt(tmp_path: Path) -> None:
    builder = 'write("mod.py", "X = 2\\n")\nif ATTEMPT == 1:\n    write("elsewhere.py", "B = 1\\n")'
    setup = governed(
        tmp_path,
        builder=builder,
        auditor=APPROVE_AND_LOG,
        phases=[phase("P1", scope={"allow": ["mod.py"]})],
        ruleset="on_policy_violation: retry\n",
    )
    finish(setup)
    assert _auditor_calls(setup) == ["P1 2 review"]
    assert setup.phase_json("P1")["approved_attempt"] == 2


# -- §9.3: repeated low-signal auditor attempts end the run -------------------------------


def test_a_failed_auditor_escalation_ends_the_run_at_that_phase(tmp_path: Path) -> None:
    builder = 'write(f"{PHASE}.py", "Y = 1\\n")\nif PHASE == "P1":\n    write("mod.py", "X = 100\\n")'
    auditor = 'write("mod.py", "X = 500\\n")\nresult(verdict="revise")'
    phases = [phase("P1", max_builder_attempts=1), phase("P2")]
    setup = governed(tmp_path, builder=builder, auditor=auditor, phases=phases)
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert run["failure_reason"].startswith("phase P1:") and "auditor attempt(s) spent" in run["failure_reason"]
    assert setup.phase_json("P2")["state"] == "SKIPPED"
    assert setup.commits_with_trailer("Autopack-Phase", "P2") == []
    assert (setup.run_dir / "incident" / "incident.json").is_file()


# -- §5.3: aging: runs OR tiers, per strategy slice; aged issues route as major ------------


def _day(n: int) -> str:
    return f"2020-01-{n:02d}T00:00:00Z"


def test_an_issue_ages_when_its_runs_or_its_distinct_tiers_reach_the_threshold(tmp_path: Path) -> None:
    spread = SynIssue("spread")  # two tiers of one run: spread across the plan
    persistent = SynIssue("persistent")  # three runs, one tier: persistence
    young = SynIssue("young")  # two runs, one tier: neither
    write_run(
        tmp_path, "r1", _day(1), [SynPhase("P1", "T1", (spread, persistent, young)), SynPhase("P2", "T2", (spread,))]
    )
    write_run(tmp_path, "r2", _day(2), [SynPhase("P1", "T1", (persistent, young))])
    write_run(tmp_path, "r3", _day(3), [SynPhase("P1", "T1", (persistent,))])
    backlog = derive_backlog(tmp_path)
    got = {k: (e.age_in_runs, e.age_in_tiers, e.status) for k, e in backlog.issues_by_key.items()}
    assert got == {
        "spread": (1, 2, "needs_cleanup"),
        "persistent": (3, 1, "needs_cleanup"),
        "young": (2, 1, "open"),
    }


def test_aging_thresholds_are_configurable_per_strategy_slice(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ruleset.yaml").write_text("categories:\n  bugfix:\n    aging_runs: 1\n")
    write_run(
        tmp_path,
        "r1",
        _day(1),
        [
            SynPhase("P1", issues=(SynIssue("fix-slice"),), task_category="bugfix"),
            SynPhase("P2", issues=(SynIssue("feature-slice"),)),
        ],
    )
    backlog = derive_backlog(tmp_path)
    assert backlog.issues_by_key["fix-slice"].status == "needs_cleanup"
    assert backlog.issues_by_key["feature-slice"].status == "open"


def test_an_aged_issue_routes_its_debt_phase_to_strict_ci_and_the_auditor(tmp_path: Path) -> None:
    loaded = load_ruleset(tmp_path)
    debt = _phase("D1", "debt_cleanup", cleans=["lint:aged"], scope={"allow": ["src/**"]})
    other = _phase("D2", "bugfix", cleans=["lint:young"])
    model = Plan.model_validate(
        {"run_id": "r1", "project_id": "p", "tiers": [{"tier_id": "T1", "name": "One", "phases": [debt, other]}]}
    )
    strategy = compile_strategy(
        model,
        loaded.ruleset,
        plan_sha256="0" * 64,
        ruleset_sha256=loaded.sha256,
        ci_profiles=load_ci_profiles(tmp_path, model.ci),
        aged_issue_keys={"lint:aged": Severity.major},
    )
    d1, d2 = strategy.phases
    assert (d1.ci_profile.value, d1.auto_apply, d1.why["ci_profile"]) == ("strict", False, "aging")
    assert (d2.ci_profile.value, d2.auto_apply) == ("normal", True)
    assert strategy.effective_severity == {"lint:aged": Severity.major}


def test_an_aged_issue_raises_the_ci_profile_of_a_phase_whose_scope_covers_its_code(tmp_path: Path) -> None:
    loaded = load_ruleset(tmp_path)
    phases = [
        _phase("P1", "feature_implementation", scope={"allow": ["src/**"]}),
        _phase("P2", "feature_implementation", scope={"allow": ["docs/**"]}),
    ]
    model = Plan.model_validate(
        {"run_id": "r1", "project_id": "p", "tiers": [{"tier_id": "T1", "name": "One", "phases": phases}]}
    )
    strategy = compile_strategy(
        model,
        loaded.ruleset,
        plan_sha256="0" * 64,
        ruleset_sha256=loaded.sha256,
        ci_profiles=load_ci_profiles(tmp_path, model.ci),
        aged_issue_keys={"lint:aged": Severity.major},
        aged_paths={"lint:aged": ["src/util.py"]},
    )
    p1, p2 = strategy.phases
    assert (p1.ci_profile.value, p1.why["ci_profile"]) == ("strict", "aging")
    assert p2.ci_profile.value == "normal"


# -- §4.3: single_tier runs one tier; projects get defaults --------------------------------


CHAIN_AGENT = 'write(f"{PHASE}.txt", f"{PHASE}\\n")'


def test_a_single_tier_run_executes_exactly_one_tier_and_chains_the_rest(tmp_path: Path) -> None:
    from pipeline.run.driver import run_to_end
    from pipeline.run.promote import check_promotion
    from testing.runs import make_workspace

    tiers = [{"tier_id": f"T{n}", "name": f"Tier {n}", "phases": [phase(f"P{n}")]} for n in (1, 2, 3)]
    setup = make_workspace(tmp_path, agent_body=CHAIN_AGENT, tiers=tiers)
    setup.plan_path.write_text(setup.plan_path.read_text().replace("run_scope: multi_tier", "run_scope: single_tier"))
    setup.start()
    strategy = json.loads((setup.run_dir / "strategy.json").read_text())
    assert [t["tier_id"] for t in strategy["tiers"]] == ["T1"]
    part2 = (setup.workspace / "runs/r1-part2/plan.yaml").read_text()
    assert "single_tier runs handle one tier each" in part2
    assert "starts as soon as" in part2 and "Edit before this run starts" not in part2
    outcomes = run_to_end(setup.workspace, setup.run_id)
    assert [o.run_id for o in outcomes if o.run_state.terminal] == ["r1", "r1-part2", "r1-part3"]
    for run_id, tier in (("r1", "T1"), ("r1-part2", "T2"), ("r1-part3", "T3")):
        run = json.loads((setup.workspace / f"runs/{run_id}/run.json").read_text())
        assert [t["tier_id"] for t in run["tiers"]] == [tier] and run["state"] == "DONE_SUCCESS"
    # a chained run is promoted to the chain's base, not to the previous run's branch
    assert check_promotion(setup.workspace, "r1-part3").into == "main"


def test_new_run_writes_the_projects_safety_profile_and_run_scope(tmp_path: Path) -> None:
    from pipeline.plan.generate import new_run

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ruleset.yaml").write_text(
        "project_defaults:\n  safety_profile: safety_critical\n  default_run_scope: single_tier\n"
        "projects:\n  other:\n    safety_profile: normal\n"
    )
    data = load_fast(new_run(tmp_path, "r1"))
    assert (data["safety_profile"], data["run_scope"]) == ("safety_critical", "single_tier")
    plan = load_fast(new_run(tmp_path, "r2", project_type="api_service", features="rest_api_crud"))
    assert (plan["safety_profile"], plan["run_scope"]) == ("safety_critical", "single_tier")
    ruleset = load_ruleset(tmp_path).ruleset
    assert ruleset.defaults_for("other").default_run_scope.value == "multi_tier"


# -- test changes: declared per phase, or approved by the auditor with a reason ------------

TEST_FILE = "import mod\n\n\ndef test_x():\n    assert hasattr(mod, 'X')\n    assert mod.X < 100\n"
# a refactor that drops a redundant assert beside its code change
DROP_ASSERT = (
    'write("mod.py", "X = 2\\n")\n'
    "write(\"tests/test_mod.py\", \"import mod\\n\\n\\ndef test_x():\\n    mod.X\\n\")"
)


def _tampering_setup(tmp_path: Path, auditor: str | None = None, **phase_fields: Any) -> Any:
    from testing.runs import pytest_step

    return governed(
        tmp_path,
        builder=DROP_ASSERT,
        auditor=auditor,
        phases=[phase("P1", max_builder_attempts=1, **phase_fields)],
        files={"mod.py": "X = 1\n", "tests/test_mod.py": TEST_FILE},
        ci_steps=[pytest_step("tests", "tests")],
    )


def _tampering_check(setup: Any) -> dict[str, Any]:
    return next(c for c in setup.gate_json("P1")["checks"] if c["name"] == "test_tampering")


def test_a_phase_declaring_tests_may_change_has_its_test_changes_recorded_not_refused(tmp_path: Path) -> None:
    setup = _tampering_setup(tmp_path, tests="may_change")
    ps = json.loads((setup.run_dir / "strategy.json").read_text())["phases"][0]
    assert ps["tests_may_change"] is True and ps["why"]["tests_may_change"] == "plan"
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    check = _tampering_check(setup)
    assert check["verdict"] == "pass"
    assert "declared in the plan: tests: may_change" in check["message"]
    assert check["evidence"] == ["tests/test_mod.py: removes 2 assert line(s) and adds none"]


def test_without_a_declaration_test_changes_are_refused(tmp_path: Path) -> None:
    setup = _tampering_setup(tmp_path)
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert _tampering_check(setup)["verdict"] == "fail"


def test_the_auditor_may_approve_test_changes_with_a_recorded_reason(tmp_path: Path) -> None:
    auditor = 'result(verdict="approve", notes="the asserts were redundant with the type checks")'
    setup = _tampering_setup(tmp_path, auditor=auditor)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert rec["tampering_approved_attempt"] == 1
    assert rec["tampering_reason"] == "the asserts were redundant with the type checks"
    check = _tampering_check(setup)
    assert check["verdict"] == "pass"
    assert "approved by the auditor: the asserts were redundant" in check["message"]
    assert check["evidence"] == ["tests/test_mod.py: removes 2 assert line(s) and adds none"]


def test_an_auditor_approval_of_test_changes_without_a_reason_does_not_count(tmp_path: Path) -> None:
    setup = _tampering_setup(tmp_path, auditor='result(verdict="approve")')
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    assert setup.phase_json("P1")["tampering_approved_attempt"] is None
    assert setup.commits_with_trailer("Autopack-Phase", "P1") == []


# -- names the playbook uses ---------------------------------------------------------------

CI_STEPS = [{"name": "x", "run": f"{sys.executable} -c 'import mod; assert mod.X < 100'", "timeout_s": 60}]


def _compile_step() -> dict[str, Any]:
    return {"name": "compile", "run": f"{sys.executable} -m py_compile mod.py", "timeout_s": 60}



def test_the_orchestrator_category_has_the_orchestrator_review_auditor(tmp_path: Path) -> None:
    ps = _strategy(tmp_path, [_phase("P1", "orchestrator")]).phases[0]
    assert (ps.task_category, ps.auditor_profile) == ("orchestrator", "orchestrator_review")
    assert ps.complexity.value == "high" and ps.ci_profile.value == "strict" and ps.max_builder_attempts == 2
    assert builtin_path("auditors/orchestrator_review.md").is_file()


def test_ruleset_severity_upgrades_make_matching_issues_major(tmp_path: Path) -> None:
    issues = [
        {"issue_key": "perf:slow-path", "severity": "minor", "category": "performance"},
        {"issue_key": "style:naming", "severity": "minor", "category": "style"},
        {"issue_key": "known:flaky-io", "severity": "minor", "expected_fail": True},
    ]
    builder = f'write("mod.py", "X = 2\\n")\nresult(suggested_issues={issues!r})'
    setup = governed(
        tmp_path,
        builder=builder,
        ruleset="severity_upgrades:\n  - {category: perf*, task_category: feature_*}\n",
    )
    finish(setup)
    got = {i["issue_key"]: i for i in setup.issues("P1")["issues"]}
    assert (got["perf:slow-path"]["severity"], got["perf:slow-path"]["effective_severity"]) == ("minor", "major")
    assert got["style:naming"]["effective_severity"] == "minor"
    assert got["known:flaky-io"]["expected_fail"] is True


def test_a_failed_static_check_is_a_static_check_issue(tmp_path: Path) -> None:
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 2\\n" if ATTEMPT == 2 else "X = (\\n")',
        plan={"ci": {"normal": {"steps": CI_STEPS, "static_checks": [_compile_step()]}}},
    )
    finish(setup)
    (issue,) = [i for i in setup.issues("P1")["issues"] if i["issue_key"] == "gate:static_checks"]
    assert issue["source"] == "static_check" and issue["status"] == "resolved"


def test_every_start_run_writes_the_project_backlog_with_project_id_and_issues_by_key(tmp_path: Path) -> None:
    setup = governed(tmp_path, builder='write("mod.py", "X = 2\\n")')
    data = json.loads((setup.workspace / "reports" / "project_issue_backlog.json").read_text())
    assert data["project_id"] == setup.run_json()["project_id"]
    assert data["issues_by_key"] == {} and data["runs_read"] == 0


# -- smaller: incident packs, tier cap flags, validate, superseded attempts ----------------


def test_an_incident_pack_holds_the_last_patch_and_the_ci_and_auditor_evidence(tmp_path: Path) -> None:
    # attempt 1 breaks CI; the escalation's revision breaks it again: the run ends there
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 100\\n")',
        auditor='write("mod.py", "X = 500\\n")\nresult(verdict="revise", notes="try 500")',
        phases=[phase("P1", max_builder_attempts=1)],
    )
    run = finish(setup)
    assert run["state"] == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    incident = setup.run_dir / "incident"
    assert "X = 500" in (incident / "last-patch.diff").read_text()
    assert json.loads((incident / "last-ci" / "ci.json").read_text())["verdict"] == "fail"
    assert json.loads((incident / "last-audit" / "auditor.json").read_text())["verdict"] == "revise"
    assert (incident / "last-audit" / "auditor.log").is_file()


def test_tier_summaries_carry_cap_flags(tmp_path: Path) -> None:
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 100\\n" if ATTEMPT == 1 else "X = 2\\n")',
        phases=[phase("P1")],
    )
    run = finish(setup)
    (tier,) = run["tiers"]
    assert (tier["ci_cap_hit"], tier["token_cap_hit"]) == (True, False)  # 2 CI runs of 2
    assert "CI-run cap hit" in (setup.run_dir / "tiers" / "T1.md").read_text()


def test_validate_reports_each_plan_problem_once(tmp_path: Path) -> None:
    from pipeline.commands.validate import validate_run

    plan = tmp_path / "runs" / "r1" / "plan.yaml"
    plan.parent.mkdir(parents=True)
    plan.write_text(
        "run_id: r1\nproject_id: p\ntiers:\n  - tier_id: T1\n    name: x\n    phases:\n"
        "      - {phase_id: P1, name: a, task_category: nope}\n"
    )
    problems = validate_run(tmp_path, "r1")
    assert len(problems) == 1 and "unknown task_category 'nope'" in problems[0]


def test_an_attempt_replaced_by_the_auditors_revision_is_superseded(tmp_path: Path) -> None:
    setup = governed(
        tmp_path,
        builder='write("mod.py", "X = 2\\n")',
        auditor='write("mod.py", "X = 7\\n")\nresult(verdict="revise", notes="7 is better")',
        phases=[high_risk("P1", "schema_change")],
    )
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    attempts = setup.phase_json("P1")["attempts"]
    assert [(a["role"], a["outcome"]) for a in attempts] == [("builder", "superseded"), ("auditor", "passed")]


def test_doit_strategy_states_the_rules_chosen_where_the_playbook_is_ambiguous(tmp_path: Path) -> None:
    from pipeline.commands.explain import CHOICES, explain_strategy

    declared = {**phase("P1", tests="may_change"), "allows": ["filters", "submodules"]}
    setup = governed(tmp_path, builder='write("mod.py", "X = 2\\n")', phases=[declared, phase("P2")])
    out = explain_strategy(setup.workspace, setup.run_id)
    assert re.search(r"^\s+allows\s+filters, submodules\s+\(plan\)$", out, re.M)
    assert re.search(r"^\s+allows\s+nothing\s+\(default\)$", out, re.M)
    assert "rules chosen where the playbook is ambiguous (docs/governance.md):" in out
    assert all(f"  - {choice}" in out for choice in CHOICES)
    assert re.search(r"^\s+tests_may_change\s+True\s+\(plan\)$", out, re.M)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "governance.md").read_text()
    assert "## Where the playbook is ambiguous" in doc


def test_a_phase_waiting_for_submit_fails_cleanly_past_its_deadline(tmp_path: Path) -> None:
    from pipeline.run.driver import run_phase, run_to_end, submit_patch
    from testing.runs import make_workspace

    setup = make_workspace(tmp_path, files={"mod.py": "X = 1\n"}, phases=[phase("P1"), phase("P2")])  # no builder
    (setup.workspace / "profiles").mkdir()
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("run_budgets:\n  submit_deadline_minutes: 0\n")
    setup.start()
    ps = json.loads((setup.run_dir / "strategy.json").read_text())["phases"][0]
    assert ps["submit_deadline_minutes"] == 0
    outcome = run_phase(setup.workspace, setup.run_id)
    assert outcome.phase_id == "P1" and outcome.phase_state is not None and outcome.phase_state.value == "FAILED"
    assert "no patch was submitted within 0 min" in setup.phase_json("P1")["failure_reason"]
    patch = tmp_path / "late.diff"
    patch.write_text("--- a/mod.py\n+++ b/mod.py\n@@ -1 +1 @@\n-X = 1\n+X = 2\n")
    late = submit_patch(setup.workspace, setup.run_id, "P2", patch, None)
    assert late.phase_state is not None and late.phase_state.value == "FAILED"
    outcomes = run_to_end(setup.workspace, setup.run_id)
    assert outcomes[-1].run_state.value == "DONE_FAILED_REQUIRES_HUMAN_REVIEW"
    # with a builder there is no deadline
    ws = tmp_path / "with-builder"
    ws.mkdir()
    built = _strategy(ws, [_phase("P1", "bugfix")], agents={"builder": "claude"})
    assert built.phases[0].submit_deadline_minutes is None


@pytest.mark.parametrize(
    ("ruleset", "expected"),
    [
        ("severity_upgrades:\n  - {}\n", "$.severity_upgrades[0]: {} should be non-empty"),
        ("project_defaults:\n  default_run_scope: two_tiers\n", "default_run_scope"),
        ("categories:\n  bugfix:\n    aging_runs: 0\n", "aging_runs"),
    ],
)
def test_bad_governance_settings_are_clear_errors_naming_the_file(tmp_path: Path, ruleset: str, expected: str) -> None:
    from pipeline.core.errors import AutopackError

    with pytest.raises(AutopackError) as err:
        _strategy(tmp_path, [_phase("P1", "bugfix")], ruleset=ruleset)
    text = str(err.value.message) + " " + " ".join(getattr(err.value, "problems", []))
    assert "profiles/ruleset.yaml" in text and expected in text, text


def test_a_bad_tests_declaration_is_a_clear_plan_error(tmp_path: Path) -> None:
    from pipeline.core.errors import AutopackError

    with pytest.raises((AutopackError, ValueError)) as err:
        _strategy(tmp_path, [_phase("P1", "bugfix", tests="sometimes")])
    assert "may_change" in str(err.value)


@pytest.mark.parametrize("failpoint", ["after_tampering_review_recorded", "after_test_changes_approved"])
def test_a_run_killed_during_a_test_change_review_converges(tmp_path: Path, failpoint: str) -> None:
    import os
    import subprocess

    from pipeline.run.driver import run_to_end

    auditor = 'result(verdict="approve", notes="the asserts were redundant")'
    setup = _tampering_setup(tmp_path, auditor=auditor)
    env = {**os.environ, "AUTOPACK_FAILPOINT": failpoint}
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "run_phase", "--run", setup.run_id],
        cwd=setup.workspace, env=env, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    run_to_end(setup.workspace, setup.run_id)
    run = finish(setup)
    assert run["state"] == "DONE_SUCCESS", run["failure_reason"]
    rec = setup.phase_json("P1")
    assert (rec["tampering_approved_attempt"], rec["tampering_reason"]) == (1, "the asserts were redundant")
    assert len(setup.commits_with_trailer("Autopack-Phase", "P1")) == 1
