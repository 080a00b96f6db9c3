"""StrategyEngine and ruleset (docs/architecture.md, Governance): plan + ruleset -> frozen strategy.

Pure compilation over real ruleset files (the built-in one, and workspace overrides
written to a temp dir), plus `python -m pipeline strategy --run R` as a user runs it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.config.profiles import load_ci_profiles, load_ruleset
from pipeline.core.errors import InvalidInput
from pipeline.core.overrides import builtin_path
from pipeline.core.yamlio import load_fast
from pipeline.models.enums import CiProfileName, Complexity
from pipeline.models.plan import Plan
from pipeline.models.strategy import PhaseStrategy, Strategy
from pipeline.policy.strategy import compile_strategy
from testing.runs import make_workspace, phase

HIGH_RISK = {
    "cross_cutting_refactor": "refactor_review",
    "index_registry_change": "schema_review",
    "schema_contract_change": "schema_review",
    "bulk_multi_file_operation": "refactor_review",
    "security_auth_change": "security_review",
    "external_feature_reuse": "external_code_review",
    "external_code_intake": "license_and_security_review",
}
ALIASES = {
    "schema_change": "schema_contract_change",
    "security_auth": "security_auth_change",
    "bulk_operation": "bulk_multi_file_operation",
    "index_registry_maintenance": "index_registry_change",
}


# -- helpers -------------------------------------------------------------------------------


def p(phase_id: str, category: str = "feature_implementation", **fields: Any) -> dict[str, Any]:
    """A plan phase that states only what the test says (the category decides the rest)."""
    return {"phase_id": phase_id, "name": f"Phase {phase_id}", "task_category": category, **fields}


def workspace(tmp_path: Path, ruleset: str | None = None) -> Path:
    if ruleset is not None:
        (tmp_path / "profiles").mkdir(exist_ok=True)
        (tmp_path / "profiles" / "ruleset.yaml").write_text(ruleset)
    return tmp_path


def compile_plan(
    ws: Path,
    phases: Sequence[Mapping[str, Any]] = (),
    *,
    tiers: Sequence[Mapping[str, Any]] | None = None,
    **plan_fields: Any,
) -> Strategy:
    loaded = load_ruleset(ws)
    plan = Plan.model_validate(
        {
            "run_id": "r1",
            "project_id": "sample",
            "tiers": list(tiers) if tiers else [{"tier_id": "T1", "name": "One", "phases": list(phases)}],
            **plan_fields,
        }
    )
    return compile_strategy(
        plan,
        loaded.ruleset,
        plan_sha256="0" * 64,
        ruleset_sha256=loaded.sha256,
        ci_profiles=load_ci_profiles(ws, plan.ci),
        overridden=loaded.overridden,
    )


def one(ws: Path, category: str = "feature_implementation", **fields: Any) -> PhaseStrategy:
    return compile_plan(ws, [p("P1", category, **fields)]).phases[0]


def defaults(ps: PhaseStrategy) -> dict[str, Any]:
    """What a category decides for a phase (identity fields left out)."""
    return ps.model_dump(exclude={"phase_id", "name", "index", "requested_category", "why"})


# -- categories and aliases ----------------------------------------------------------------


@pytest.mark.parametrize(("alias", "category"), sorted(ALIASES.items()))
def test_playbook_task_names_map_to_the_category_defaults(tmp_path: Path, alias: str, category: str) -> None:
    by_alias = one(tmp_path, alias)
    by_key = one(tmp_path, category)
    assert by_alias.task_category == category
    assert by_alias.requested_category == alias
    assert by_alias.why["task_category"] == "alias"
    assert defaults(by_alias) == defaults(by_key)


@pytest.mark.parametrize(("category", "profile"), sorted(HIGH_RISK.items()))
def test_high_risk_category_defaults(tmp_path: Path, category: str, profile: str) -> None:
    ps = one(tmp_path, category)
    assert ps.high_risk is True
    assert ps.complexity == Complexity.high and ps.why["complexity"] == "category"
    assert ps.ci_profile == CiProfileName.strict and ps.why["ci_profile"] == "risk"
    assert ps.default_severity.value == "major"
    assert ps.auto_apply is False
    assert ps.auditor_profile == profile
    assert builtin_path(f"auditors/{profile}.md").is_file(), "each auditor profile ships its prompt"


def test_ordinary_category_defaults_and_plan_choices(tmp_path: Path) -> None:
    ps = one(tmp_path, "bugfix")
    assert (ps.complexity, ps.builder_mode.value, ps.ci_profile, ps.auto_apply) == (
        Complexity.low,
        "tweak_light",
        CiProfileName.normal,
        True,
    )
    # tweak_light caps attempts at 2 (playbook §8.2)
    assert (ps.max_builder_attempts, ps.max_auditor_attempts, ps.incident_token_cap) == (2, 1, 120_000)
    assert ps.why["max_builder_attempts"] == "profile"
    assert ps.why["complexity"] == "category" and ps.why["builder_mode"] == "default"
    # the plan may say otherwise; the builder mode follows the complexity it chose
    ps = one(tmp_path, "bugfix", complexity="high")
    assert ps.complexity == Complexity.high and ps.why["complexity"] == "plan"
    assert ps.builder_mode.value == "refactor_heavy"
    assert ps.max_builder_attempts == 2 and ps.why["max_builder_attempts"] == "profile"  # refactor_heavy: cap 2
    ps = one(tmp_path, "bugfix", max_builder_attempts=7, incident_token_cap=5000, builder_mode="schema_heavy")
    assert (ps.max_builder_attempts, ps.incident_token_cap, ps.builder_mode.value) == (7, 5000, "schema_heavy")
    assert ps.why["max_builder_attempts"] == ps.why["incident_token_cap"] == ps.why["builder_mode"] == "plan"


def test_a_plan_can_switch_auto_apply_off_but_never_on(tmp_path: Path) -> None:
    off = one(tmp_path, "bugfix", auto_apply=False)
    assert off.auto_apply is False and off.why["auto_apply"] == "plan"
    forced = one(tmp_path, "security_auth", auto_apply=True)
    assert forced.auto_apply is False


def test_unknown_category_names_the_choices(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        one(tmp_path, "wizardry")
    assert "unknown task_category 'wizardry'" in err.value.message
    assert "security_auth" in err.value.fix and "security_auth_change" in err.value.fix


# -- CI profile ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "fields", "safety", "profile", "why"),
    [
        ("feature_implementation", {}, "normal", "normal", "category"),
        ("feature_implementation", {"scope": {"allow": ["src/**", "tests/**"]}}, "normal", "normal", "category"),
        ("feature_implementation", {"scope": {"allow": ["**"]}}, "normal", "normal", "category"),
        ("security_auth", {}, "normal", "strict", "risk"),
        ("feature_implementation", {}, "safety_critical", "strict", "profile"),
        ("config_change", {"scope": {"allow": [".github/**"]}}, "normal", "strict", "risk"),
        ("config_change", {"scope": {"allow": ["schemas/extra/**"]}}, "normal", "strict", "risk"),
        ("config_change", {"scope": {"allow": ["src/**", ".github/actions/**"]}}, "normal", "strict", "risk"),
        ("config_change", {"scope": {"allow": ["src/github/**"]}}, "normal", "normal", "category"),
        ("feature_implementation", {"ci_profile": "strict"}, "normal", "strict", "plan"),
        ("security_auth", {"ci_profile": "normal"}, "normal", "strict", "risk"),
    ],
)
def test_ci_profile_is_raised_to_strict(
    tmp_path: Path, category: str, fields: dict[str, Any], safety: str, profile: str, why: str
) -> None:
    ps = compile_plan(tmp_path, [p("P1", category, **fields)], safety_profile=safety).phases[0]
    assert (ps.ci_profile.value, ps.why["ci_profile"]) == (profile, why)


def test_strict_profile_keeps_the_plans_steps_and_its_own_static_checks(tmp_path: Path) -> None:
    ci = {"normal": {"steps": [{"name": "t", "run": "true"}]}}
    strategy = compile_plan(tmp_path, [p("P1", "security_auth")], ci=ci)
    strict = strategy.ci_profiles[CiProfileName.strict]
    assert [s.name for s in strict.steps] == ["t"]
    assert [s.name for s in strict.static_checks] == ["compile"]


# -- budgets -------------------------------------------------------------------------------


def test_run_and_tier_budget_formulas(tmp_path: Path) -> None:
    tiers = [
        {"tier_id": "T1", "name": "One", "phases": [p("A", "bugfix"), p("B", "feature_implementation")]},
        {"tier_id": "T2", "name": "Two", "phases": [p("C", "security_auth")]},
    ]
    s = compile_plan(tmp_path, tiers=tiers)
    rb = s.run_budget
    assert (rb.token_cap, rb.max_phases, rb.max_minor_issues_total, rb.max_duration_minutes) == (5_000_000, 25, 9, 120)
    assert rb.cost_cap_usd is None
    t1, t2 = s.tiers
    assert t1.phase_ids == ["A", "B"]
    assert t1.token_cap == 3 * (120_000 + 250_000)
    assert (t1.ci_run_cap, t1.max_minor_issues, t1.max_major_issues) == (4, 4, 0)
    assert t2.token_cap == 3 * 150_000
    # a high-risk phase tolerates 1 minor issue (playbook §6), not the profile's 2
    assert (t2.ci_run_cap, t2.max_minor_issues, t2.max_major_issues) == (2, 1, 0)
    critical = compile_plan(tmp_path, tiers=tiers, safety_profile="safety_critical")
    assert [t.max_minor_issues for t in critical.tiers] == [2, 1]  # phases, not 2 x phases
    assert critical.run_budget.max_minor_issues_total == 3  # safety_critical: 1 per phase
    assert critical.stop_on_not_clean_tier is True and s.stop_on_not_clean_tier is False


def test_plan_budgets_only_tighten_the_ruleset(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "run_budgets:\n  cost_cap_usd: 5.0\n  token_cap: 1000000\n")
    tight = compile_plan(ws, [p("P1")], budgets={"token_cap": 200_000, "cost_cap_usd": 2.5, "max_duration_minutes": 30})
    assert (tight.run_budget.token_cap, tight.run_budget.cost_cap_usd) == (200_000, 2.5)
    assert tight.run_budget.max_duration_minutes == 30
    loose = compile_plan(ws, [p("P1")], budgets={"token_cap": 9_000_000, "cost_cap_usd": 50.0})
    assert (loose.run_budget.token_cap, loose.run_budget.cost_cap_usd) == (1_000_000, 5.0)
    no_ruleset_cap = compile_plan(tmp_path / "none", [p("P1")], budgets={"cost_cap_usd": 3.0})
    assert no_ruleset_cap.run_budget.cost_cap_usd == 3.0


def test_more_phases_than_max_phases_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        compile_plan(tmp_path, [p(f"P{i}") for i in range(3)], budgets={"max_phases": 2})
    assert "has 3 phases; max_phases is 2" in err.value.message


# -- workspace overrides -------------------------------------------------------------------


def test_an_override_of_one_field_keeps_the_other_built_in_fields(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "categories:\n  bugfix:\n    max_builder_attempts: 5\n")
    loaded = load_ruleset(ws)
    assert loaded.source.endswith("profiles/ruleset.yaml")
    assert "categories.bugfix.max_builder_attempts" in loaded.overridden
    ps = one(ws, "bugfix")
    assert ps.max_builder_attempts == 5 and ps.why["max_builder_attempts"] == "override"
    assert (ps.complexity, ps.incident_token_cap, ps.max_auditor_attempts) == (Complexity.low, 120_000, 1)
    assert ps.why["incident_token_cap"] == "category"
    # everything else is the built-in ruleset
    assert loaded.ruleset.aliases == ALIASES
    assert one(ws, "security_auth").auditor_profile == "security_review"


def test_an_override_of_a_category_reaches_its_alias(tmp_path: Path) -> None:
    ws = workspace(tmp_path, "categories:\n  security_auth_change:\n    max_builder_attempts: 6\n")
    ps = one(ws, "security_auth")
    assert ps.max_builder_attempts == 6  # the project's explicit value: no mode cap
    assert ps.auditor_profile == "security_review" and ps.auto_apply is False


def test_an_older_workspace_ruleset_gets_new_built_in_defaults(tmp_path: Path) -> None:
    # A full project ruleset written before `aliases`, `debt_cleanup`, `on_policy_violation`,
    # the categories' `max_auditor_attempts` and the debt_cleanup category existed.
    old = load_fast(builtin_path("ruleset.yaml"))
    for key in ("aliases", "debt_cleanup", "on_policy_violation"):
        del old[key]
    del old["categories"]["debt_cleanup"]
    for rule in old["categories"].values():
        rule.pop("max_auditor_attempts", None)
    old["categories"]["tests"]["incident_token_cap"] = 90_000
    from pipeline.core.yamlio import dump_new

    ws = workspace(tmp_path, dump_new(old))
    loaded = load_ruleset(ws)
    assert loaded.ruleset.aliases == ALIASES
    assert loaded.ruleset.on_policy_violation == "fail_run"
    assert "debt_cleanup" in loaded.ruleset.categories
    assert one(ws, "tests").incident_token_cap == 90_000
    assert one(ws, "schema_change").max_auditor_attempts == 1


def test_a_project_category_needs_only_the_required_fields(tmp_path: Path) -> None:
    ws = workspace(
        tmp_path,
        "categories:\n  data_migration:\n    complexity: high\n    max_builder_attempts: 2\n"
        "    max_auditor_attempts: 1\n    incident_token_cap: 50000\n"
        "aliases:\n  migration: data_migration\n",
    )
    ps = one(ws, "migration")
    assert (ps.task_category, ps.complexity, ps.incident_token_cap) == ("data_migration", Complexity.high, 50_000)
    # high complexity implies strict CI (playbook §10.1)
    assert ps.auto_apply is True and ps.ci_profile == CiProfileName.strict and ps.why["ci_profile"] == "complexity"
    assert one(ws, "security_auth").task_category == "security_auth_change", "built-in aliases are kept"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("categories:\n  bugfix:\n    max_builder_attempts: many\n", "$.categories.bugfix.max_builder_attempts"),
        ("categories:\n  bugfix:\n    max_builder_attemps: 4\n", "did you mean 'max_builder_attempts'"),
        ("run_budgets:\n  token_cap: 0\n", "$.run_budgets.token_cap"),
        ("categories: [\n", "profiles/ruleset.yaml:2:1"),
        ("- a list\n", "expected a mapping at the top level"),
        ("aliases:\n  auth: no_such_category\n", "aliases ['auth'] point at categories that do not exist"),
    ],
)
def test_an_invalid_workspace_ruleset_is_a_clear_error_naming_the_file(
    tmp_path: Path, text: str, expected: str
) -> None:
    ws = workspace(tmp_path, text)
    with pytest.raises(InvalidInput) as err:
        load_ruleset(ws)
    assert "profiles/ruleset.yaml" in err.value.message
    assert expected in err.value.message


# -- `python -m pipeline strategy --run R` -------------------------------------------------


def strategy_cli(ws: Path, run_id: str = "r1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "strategy", "--run", run_id],
        cwd=ws,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def field_line(out: str, field: str, value: str, why: str) -> bool:
    return re.search(rf"^\s+{field}\s+{re.escape(value)}\s+\({re.escape(why)}\)$", out, re.M) is not None


def test_strategy_task_prints_each_value_and_why(tmp_path: Path) -> None:
    phases = [
        p("P1", "security_auth", scope={"allow": ["src/**"]}),
        p("P2", "bugfix", complexity="medium", scope={"allow": [".github/**"]}),
        phase("P3", task_category="docs"),
    ]
    setup = make_workspace(tmp_path, agent_body="pass", phases=phases)
    (setup.workspace / "profiles").mkdir()
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("categories:\n  docs:\n    incident_token_cap: 7000\n")
    done = strategy_cli(setup.workspace)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "compiled now (run not started)" in out
    assert "run budget: tokens 5000000" in out
    assert field_line(out, "task_category", "security_auth_change", "alias")
    assert field_line(out, "ci_profile", "strict", "risk")
    assert field_line(out, "auto_apply", "False", "category")
    assert field_line(out, "auditor_profile", "security_review", "category")
    assert field_line(out, "complexity", "medium", "plan")
    assert field_line(out, "incident_token_cap", "7000", "override")
    # P2: a bugfix whose scope reaches next to .github/workflows/ is verified strictly
    p2 = out.split("phase P2", 1)[1].split("phase P3", 1)[0]
    assert field_line(p2, "ci_profile", "strict", "risk")
    setup.start()
    done = strategy_cli(setup.workspace)
    assert done.returncode == 0, done.stderr
    assert "frozen at start_run" in done.stdout


def test_strategy_task_with_an_invalid_ruleset_exits_2_naming_the_file(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, agent_body="pass")
    (setup.workspace / "profiles").mkdir()
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("tier_budgets:\n  ci_runs_per_phase: lots\n")
    done = strategy_cli(setup.workspace)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "profiles/ruleset.yaml" in done.stderr and "$.tier_budgets.ci_runs_per_phase" in done.stderr


def test_strategy_output_shows_the_tier_multiplier_the_ruleset_set(tmp_path: Path) -> None:
    from pipeline.commands.explain import explain_strategy
    from testing.runs import make_workspace

    setup = make_workspace(tmp_path, agent_body="pass")
    (setup.workspace / "profiles").mkdir()
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("tier_budgets:\n  token_cap_incident_multiplier: 1\n")
    text = explain_strategy(setup.workspace, setup.run_id)
    assert "(1 x incident caps)" in text and "budget_modifier" in text
