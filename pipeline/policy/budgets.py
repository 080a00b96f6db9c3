"""Budget checks at run, tier and phase level (docs/architecture.md, Governance) — pure functions.

A check returns an `Exhaustion` naming the budget, the level and the slice
(`task_category:complexity`) that spent most of it, or None. The runner acts on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.models.results import Usage
from pipeline.models.run import RunRecord, Spend
from pipeline.models.strategy import PhaseStrategy, Strategy


@dataclass(frozen=True)
class Exhaustion:
    budget: str  # tokens | cost_usd | ci_runs | minor_issues | duration | incident_tokens
    level: str  # run | tier | phase
    scope: str  # the run, tier or phase id
    used: float
    cap: float
    slice: str  # task_category:complexity that spent most of it

    def reason(self) -> str:
        return (
            f"budget exhausted: {self.budget} at {self.level} {self.scope} "
            f"({_num(self.used)} used of {_num(self.cap)}); spent most by {self.slice}"
        )


def _num(value: float) -> str:
    return f"{value:.2f}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def dominant_slice(
    strategy: Strategy, spends: dict[str, Spend], field: str, phase_ids: Iterable[str] | None = None
) -> str:
    """The `task_category:complexity` slice with the largest share of `field`."""
    wanted = set(phase_ids) if phase_ids is not None else None
    totals: dict[str, float] = defaultdict(float)
    for ps in strategy.phases:
        if wanted is not None and ps.phase_id not in wanted:
            continue
        totals[slice_of(ps)] += float(getattr(spends.get(ps.phase_id, Spend()), field))
    if not totals:
        return "none"
    return max(sorted(totals), key=lambda k: totals[k])


def slice_of(ps: PhaseStrategy) -> str:
    return f"{ps.task_category}:{ps.complexity.value}"


def before_agent_call(
    strategy: Strategy, run: RunRecord, spends: dict[str, Spend], ps: PhaseStrategy
) -> Exhaustion | None:
    """Can one more agent call of `ps` (up to its incident cap) fit in every budget?"""
    budget = run.budgets
    call = ps.incident_token_cap
    tier = next(t for t in strategy.tiers if t.tier_id == ps.tier_id)
    tier_tokens = sum(spends.get(pid, Spend()).tokens for pid in tier.phase_ids)
    phase_tokens = spends.get(ps.phase_id, Spend()).tokens
    checks = [
        (
            "tokens",
            "run",
            run.run_id,
            run.spend.tokens,
            budget.token_cap,
            run.spend.tokens + call > budget.token_cap,
            None,
        ),
        (
            "tokens",
            "tier",
            tier.tier_id,
            tier_tokens,
            tier.token_cap,
            tier_tokens + call > tier.token_cap,
            tier.phase_ids,
        ),
        ("incident_tokens", "phase", ps.phase_id, phase_tokens, call, phase_tokens >= call, [ps.phase_id]),
        (
            "duration",
            "run",
            run.run_id,
            run.spend.active_seconds,
            budget.max_duration_minutes * 60.0,
            run.spend.active_seconds >= budget.max_duration_minutes * 60.0,
            None,
        ),
    ]
    if budget.cost_cap_usd is not None:
        checks.append(
            (
                "cost_usd",
                "run",
                run.run_id,
                run.spend.cost_usd,
                budget.cost_cap_usd,
                run.spend.cost_usd >= budget.cost_cap_usd,
                None,
            )
        )
    for name, level, scope, used, cap, exhausted, members in checks:
        if exhausted:
            field = {"duration": "active_seconds", "incident_tokens": "tokens"}.get(name, name)
            return Exhaustion(name, level, scope, used, cap, dominant_slice(strategy, spends, field, members))
    return None


def before_ci(strategy: Strategy, spends: dict[str, Spend], ps: PhaseStrategy) -> Exhaustion | None:
    tier = next(t for t in strategy.tiers if t.tier_id == ps.tier_id)
    used = sum(spends.get(pid, Spend()).ci_runs for pid in tier.phase_ids)
    if used >= tier.ci_run_cap:
        return Exhaustion(
            "ci_runs",
            "tier",
            tier.tier_id,
            used,
            tier.ci_run_cap,
            dominant_slice(strategy, spends, "ci_runs", tier.phase_ids),
        )
    return None


def after_issues(strategy: Strategy, run: RunRecord, spends: dict[str, Spend], minor: int) -> Exhaustion | None:
    """`minor` is the run's count of distinct minor issue_keys (a key seen in several
    phases counts once, playbook §5.2), not the phases' counts added up."""
    cap = run.budgets.max_minor_issues_total
    if minor > cap:
        return Exhaustion(
            "minor_issues", "run", run.run_id, minor, cap, dominant_slice(strategy, spends, "minor_issues")
        )
    return None


def after_agent_call(
    strategy: Strategy, run: RunRecord, spends: dict[str, Spend], ps: PhaseStrategy
) -> Exhaustion | None:
    """Did the call just made overspend a hard cap (run tokens, tier tokens, run cost)?

    Admission control (`before_agent_call`) bounds what a call may take; an agent can
    still report more than it was allowed, and a run that overspent must not end as a
    clean success."""
    tier = next(t for t in strategy.tiers if t.tier_id == ps.tier_id)
    tier_tokens = sum(spends.get(pid, Spend()).tokens for pid in tier.phase_ids)
    budget = run.budgets
    if run.spend.tokens > budget.token_cap:
        return Exhaustion(
            "tokens", "run", run.run_id, run.spend.tokens, budget.token_cap, dominant_slice(strategy, spends, "tokens")
        )
    if tier_tokens > tier.token_cap:
        return Exhaustion(
            "tokens",
            "tier",
            tier.tier_id,
            tier_tokens,
            tier.token_cap,
            dominant_slice(strategy, spends, "tokens", tier.phase_ids),
        )
    if budget.cost_cap_usd is not None and run.spend.cost_usd > budget.cost_cap_usd:
        return Exhaustion(
            "cost_usd",
            "run",
            run.run_id,
            run.spend.cost_usd,
            budget.cost_cap_usd,
            dominant_slice(strategy, spends, "cost_usd"),
        )
    return None


def reservation_cost(run: RunRecord, max_cost_usd: float | None, estimated: float | None) -> float:
    """The cost an agent call is reserved before it runs: the agent's own `max_cost_usd`,
    else the price of its token reservation where the model's price is known, else what
    is left of the run's cost cap (none: nothing to protect)."""
    if max_cost_usd is not None:
        return float(max_cost_usd)
    if estimated is not None:
        return estimated
    cap = run.budgets.cost_cap_usd
    return max(0.0, cap - run.spend.cost_usd) if cap is not None else 0.0


def charge(usage: Usage, reserved_tokens: int, reserved_cost: float, **counts: int) -> Spend:
    """What one agent call costs the budgets: its reported or estimated figures, and for a
    figure that is unknown the reservation made before the call, never zero."""
    tokens = usage.tokens if usage.tokens_known else max(usage.tokens, reserved_tokens)
    if usage.cost_usd is None:
        cost, estimated, reserved = reserved_cost, 0.0, reserved_cost
    else:
        estimated = usage.cost_usd if usage.sources.cost_usd == "estimated" else 0.0
        cost, reserved = usage.cost_usd, 0.0
    return Spend(
        tokens=tokens,
        cost_usd=cost,
        tokens_reserved=tokens - usage.tokens,
        cost_estimated_usd=estimated,
        cost_reserved_usd=reserved,
        **counts,
    )
