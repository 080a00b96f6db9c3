"""`doit strategy`: the compiled strategy with where each value came from."""

from __future__ import annotations

from pathlib import Path

from pipeline.config.workspace import Workspace
from pipeline.core.jsonio import read_model
from pipeline.models.strategy import Strategy
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
    "ci_max_retries",
    "minors_tolerated",
    "majors_tolerated",
    "incident_token_cap",
    "budget_modifier",
)


def _strategy_for(workspace: Path, run_id: str) -> tuple[Strategy, str]:
    store = RunStore(workspace, run_id)
    if store.strategy_json.exists():
        return read_model(store.strategy_json, Strategy), "frozen at start_run"
    from pipeline.run.start import compile_for, load_valid_plan

    ws = Workspace(workspace)
    return compile_for(ws, store, load_valid_plan(ws, store)), "compiled now (run not started)"


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
                value = getattr(ps, field)
                shown = value.value if hasattr(value, "value") else value
                lines.append(f"    {field:<22} {shown!s:<24} ({ps.why.get(field, 'default')})")
    return "\n".join(lines)
