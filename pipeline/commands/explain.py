"""`doit strategy`: the compiled strategy with where each value came from."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.workspace import Workspace
from pipeline.core.jsonio import read_model
from pipeline.models.strategy import PhaseStrategy, Strategy
from pipeline.store.rundir import RunStore

_FIELDS = (
    "task_category",
    "complexity",
    "builder_mode",
    "ci_profile",
    "auto_apply",
    "auditor_profile",
    "max_builder_attempts",
    "max_auditor_attempts",
    "tests_may_change",
    "ci_max_retries",
    "minors_tolerated",
    "majors_tolerated",
    "incident_token_cap",
    "budget_modifier",
    "allows",
)


# Where the playbook is ambiguous, the rule chosen and why (docs/governance.md, the same list).
CHOICES = (
    "aging: an issue ages when age_in_runs OR age_in_tiers reaches its threshold "
    "(reaching counts as exceeding: the defaults read 'seen in 3 runs', 'seen in 2 tiers')",
    "age_in_tiers counts distinct tier ids (spread over the plan), age_in_runs distinct runs (persistence)",
    "an aged issue is major where it reappears (the auditor reviews that phase); a phase whose scope "
    "covers its code runs strict CI; its debt phase runs strict CI under the auditor",
    "an issue from gate, CI, tests, static checks or a failed attempt that the accepted attempt did not "
    "record is resolved; builder and auditor reports stay open",
    "high-risk work: 2 builder attempts, 1 auditor attempt, 1 CI retry, 150k incident cap (ordinary work: "
    "2-3 attempts, 60k-250k); explicit plan or workspace values are kept as written",
    "builder modes only tighten (attempt caps, strict CI for refactor_heavy/schema_heavy); "
    "safety_critical caps attempts at 2 and run minors at 1 per phase",
    "single_tier: one tier per run, further tiers become chained runs; a chained run promotes to the "
    "chain's base once every earlier run of the chain is eligible",
    "reuse budgets start from the greenfield budget of the same feature (reuse.greenfield_category)",
    "test changes are refused unless the phase declares tests: may_change or the auditor approves "
    "with a reason",
)


def _strategy_for(workspace: Path, run_id: str) -> tuple[Strategy, str]:
    store = RunStore(workspace, run_id)
    if store.strategy_json.exists():
        return read_model(store.strategy_json, Strategy), "frozen at start_run"
    from pipeline.run.start import compile_for, load_valid_plan

    ws = Workspace(workspace)
    return compile_for(ws, store, load_valid_plan(ws, store)), "compiled now (run not started)"


def _field_line(ps: PhaseStrategy, field: str) -> str:
    value = getattr(ps, field)
    if field == "allows":  # only the plan declares it, so its origin is known without `why`
        shown, origin = ", ".join(value) or "nothing", "plan" if value else "default"
    else:
        shown, origin = (value.value if hasattr(value, "value") else value), ps.why.get(field, "default")
    return f"    {field:<22} {shown!s:<24} ({origin})"


def explain_strategy(workspace: Path, run_id: str) -> str:
    strategy, origin = _strategy_for(workspace, run_id)
    b = strategy.run_budget
    cost = f"${b.cost_cap_usd:.2f}" if b.cost_cap_usd else "no cap"
    lines = [
        f"strategy of run {run_id} ({origin}); safety {strategy.safety_profile.value}, "
        f"scope {strategy.run_scope.value}",
        f"run budget: tokens {b.token_cap}, cost {cost}, "
        f"max phases {b.max_phases}, max minor issues {b.max_minor_issues_total}, {b.max_duration_minutes} min active",
    ]
    for tier in strategy.tiers:
        # The ruleset's multiplier is not frozen on its own; it is what the caps imply.
        caps = sum(p.incident_token_cap for p in strategy.phases if p.tier_id == tier.tier_id)
        lines.append(
            f"tier {tier.tier_id}: tokens {tier.token_cap} ({tier.token_cap // caps if caps else 0} x incident caps), "
            f"CI runs {tier.ci_run_cap}, "
            f"minor {tier.max_minor_issues}, major {tier.max_major_issues}"
        )
        for ps in strategy.phases:
            if ps.tier_id != tier.tier_id:
                continue
            lines.append(f"  phase {ps.phase_id} {ps.name}")
            for field in _FIELDS:
                lines.append(_field_line(ps, field))
    lines.append("rules chosen where the playbook is ambiguous (docs/governance.md):")
    lines += [f"  - {choice}" for choice in CHOICES]
    return "\n".join(lines)
