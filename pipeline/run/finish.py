"""Ending a run: tier cleanliness, promotion verdict, RUN_SUMMARY.md, tier pages, incident pack.

Called once when a run reaches a terminal state.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.jsonio import canonical_json, write_text_atomic
from pipeline.core.masking import masked
from pipeline.issues.rules import distinct_counts
from pipeline.models.enums import PhaseState, RunState, TierState
from pipeline.models.run import Spend, TierSummary
from pipeline.reporting.inspect.page import PAGE, write_inspect

if TYPE_CHECKING:
    from pipeline.run.context import RunContext


def finish_run(ctx: RunContext, state: RunState, reason: str) -> None:
    _settle_leftovers(ctx, state)
    tiers = [tier_cleanliness(ctx, t) for t in ctx.rec.run.tiers]
    eligible, why = _promotion(state, tiers)
    minor, major = distinct_counts(ctx.rec.issues(p.phase_id) for p in ctx.rec.strategy.phases)
    ctx.rec.run = ctx.rec.run.model_copy(
        update={
            "tiers": tiers,
            "failure_reason": None if state == RunState.DONE_SUCCESS else reason,
            "promotion_eligible_to_main": eligible,
            "promotion_reasons": why,
            "debt_status": "has_major_debt" if major else ("has_minor_debt" if minor else "clean"),
            "current_phase": None,
        }
    )
    ctx.rec.run_to(state, reason=reason, promotion_eligible=eligible)
    for tier in ctx.rec.run.tiers:
        write_text_atomic(ctx.store.tiers_dir / f"{tier.tier_id}.md", masked(_tier_page(ctx, tier)))
    if state != RunState.DONE_SUCCESS:
        _incident_pack(ctx, state, reason)
    write_text_atomic(ctx.store.summary_md, masked(_summary(ctx)))
    # Last, so nothing above depends on it; a step killed before it gets it on the next step.
    ctx.rec.flush()  # the page reads the record from disk
    write_inspect(ctx.store.run_dir)


def _settle_leftovers(ctx: RunContext, state: RunState) -> None:
    """Phases never started are SKIPPED; tiers are closed so the record has no loose ends."""
    for ps in ctx.rec.strategy.phases:
        rec = ctx.rec.phase(ps.phase_id)
        if rec.state == PhaseState.QUEUED:
            ctx.rec.phase_to(ps.phase_id, PhaseState.SKIPPED, reason=f"run ended {state.value}")
        elif not rec.state.terminal:
            ctx.rec.phase_to(ps.phase_id, PhaseState.FAILED, reason=f"run ended {state.value}")
    for tier in ctx.rec.run.tiers:
        budget = next(t for t in ctx.rec.strategy.tiers if t.tier_id == tier.tier_id)
        phase_states = {ctx.rec.phase(pid).state for pid in budget.phase_ids}
        if tier.state == TierState.PENDING:
            ctx.rec.tier_to(tier.tier_id, TierState.SKIPPED)
        elif tier.state == TierState.IN_PROGRESS:
            done = phase_states == {PhaseState.COMPLETE}
            ctx.rec.tier_to(tier.tier_id, TierState.COMPLETE if done else TierState.FAILED)


def tier_cleanliness(ctx: RunContext, tier: TierSummary) -> TierSummary:
    """Judge a tier on its distinct issue_keys (playbook §5.2) and its caps (§10.3)."""
    budget = next(t for t in ctx.rec.strategy.tiers if t.tier_id == tier.tier_id)
    minor, major = distinct_counts(ctx.rec.issues(pid) for pid in budget.phase_ids)
    reasons = []
    if tier.state != TierState.COMPLETE:
        reasons.append(f"tier is {tier.state.value}")
    if major > budget.max_major_issues:
        reasons.append(f"{major} major issue(s) > {budget.max_major_issues} tolerated")
    if minor > budget.max_minor_issues:
        reasons.append(f"{minor} minor issue(s) > {budget.max_minor_issues} tolerated")
    if tier.spend.ci_runs > budget.ci_run_cap:
        reasons.append(f"{tier.spend.ci_runs} CI runs > cap {budget.ci_run_cap}")
    if tier.spend.tokens > budget.token_cap:
        reasons.append(f"{tier.spend.tokens} tokens > cap {budget.token_cap}")
    return tier.model_copy(
        update={
            "cleanliness": "not_clean" if reasons else "clean",
            "cleanliness_reasons": reasons,
            "minor_issue_count": minor,
            "major_issue_count": major,
            "token_cap_hit": tier.spend.tokens > budget.token_cap,
            "ci_cap_hit": tier.spend.ci_runs >= budget.ci_run_cap,
        }
    )


def _promotion(state: RunState, tiers: list[TierSummary]) -> tuple[bool, list[str]]:
    reasons = []
    if state != RunState.DONE_SUCCESS:
        reasons.append(f"run ended {state.value}")
    reasons += [
        f"tier {t.tier_id} not_clean: {'; '.join(t.cleanliness_reasons)}" for t in tiers if t.cleanliness == "not_clean"
    ]
    if state == RunState.DONE_FAILED_BUDGET_EXHAUSTED:
        reasons.append("a budget was exhausted")
    return (not reasons), (reasons or ["DONE_SUCCESS, every tier clean, no budget failure"])


def _tier_page(ctx: RunContext, tier: TierSummary) -> str:
    budget = next(t for t in ctx.rec.strategy.tiers if t.tier_id == tier.tier_id)
    rows = [
        f"| {p.phase_id} | {p.name} | {p.state.value} | {p.attempts} | {p.tokens} | {p.tag or ''} |"
        for p in ctx.rec.run.phases
        if p.tier_id == tier.tier_id
    ]
    return "\n".join(
        [
            f"# Tier {tier.tier_id}: {tier.name}",
            "",
            f"State **{tier.state.value}**, cleanliness **{tier.cleanliness}**"
            + (f" ({'; '.join(tier.cleanliness_reasons)})" if tier.cleanliness_reasons else ""),
            "",
            f"Tokens {tier.spend.tokens} of {budget.token_cap}; CI runs {tier.spend.ci_runs} of {budget.ci_run_cap}; "
            f"distinct minor issues {tier.minor_issue_count} of {budget.max_minor_issues}; "
            f"distinct major issues {tier.major_issue_count} of {budget.max_major_issues}.",
            "",
            f"Cap flags: token cap {'hit' if tier.token_cap_hit else 'not hit'}; "
            f"CI-run cap {'hit' if tier.ci_cap_hit else 'not hit'}.",
            "",
            "| phase | name | state | attempts | tokens | tag |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _summary(ctx: RunContext) -> str:
    run = ctx.rec.run
    rows = [
        f"| {p.phase_id} | {p.tier_id} | {p.name} | {p.state.value} | {p.attempts} | {p.tokens} | {p.tag or ''} |"
        for p in run.phases
    ]
    issues = []
    for ps in ctx.rec.strategy.phases:
        for issue in ctx.rec.issues(ps.phase_id).issues:
            issues.append(
                f"- `{issue.issue_key}` ({issue.effective_severity.value}, {issue.source.value}) in "
                f"{ps.phase_id}: {issue.message}"
            )
    verdict = "eligible" if run.promotion_eligible_to_main else "not eligible"
    return "\n".join(
        [
            f"# Run {run.run_id}: {run.state.value}",
            "",
            f"Project `{run.project_id}`, branch `{run.branch}` from `{run.base_ref}` ({run.base_commit[:12]}).",
            f"Safety profile {run.safety_profile.value}, scope {run.run_scope.value}.",
            f"Isolation of untrusted steps: {run.isolation or 'no step ran'}.",
            "",
            f"**Outcome:** {run.state.value}" + (f" — {run.failure_reason}" if run.failure_reason else ""),
            "",
            f"**Promotion:** {verdict} — {'; '.join(run.promotion_reasons)}",
            "",
            f"**Inspect:** [{PAGE}]({PAGE}) — the whole run on one offline page: timeline, every attempt's "
            "diff and gate checks, CI, spend against budgets, issues.",
            "",
            f"Spend: {run.spend.tokens} tokens (cap {run.budgets.token_cap}), ${run.spend.cost_usd:.2f}, "
            f"{run.spend.builder_attempts} builder attempts, {run.spend.ci_runs} CI runs, "
            f"{run.spend.active_seconds:.0f}s active.",
            spend_sources(run.spend),
            "",
            "| phase | tier | name | state | attempts | tokens | tag |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Issues",
            "",
            *(issues or ["None."]),
            "",
        ]
    )


def _incident_pack(ctx: RunContext, state: RunState, reason: str) -> None:
    """What failed and why, the last patch, gate and CI evidence, and how to inspect."""
    incident = ctx.store.incident_dir
    incident.mkdir(parents=True, exist_ok=True)
    failed = [p for p in ctx.rec.strategy.phases if ctx.rec.phase(p.phase_id).state == PhaseState.FAILED]
    ps = failed[-1] if failed else None
    facts: dict[str, object] = {
        "run_id": ctx.rec.run.run_id,
        "state": state.value,
        "reason": reason,
        "phase_id": ps.phase_id if ps else None,
        "inspect": f"git -C {ctx.rec.run.target_repo} log --stat {ctx.rec.run.branch}",
        "worktree": ctx.rec.run.worktree,
        "budgets": ctx.rec.run.budgets.model_dump(mode="json"),
        "spend": ctx.rec.run.spend.model_dump(mode="json"),
    }
    write_text_atomic(incident / "incident.json", masked(canonical_json(facts)))
    if ps is None:
        return
    rec = ctx.rec.phase(ps.phase_id)
    phase_dir = ctx.rec.phase_dir(ps)
    # The newest of each: an attempt stopped before its agent ran (a budget refused the
    # call) has no patch, so older attempts are looked at too.
    for name in ("patch.diff", "builder.log", "gate.json"):
        for attempt in reversed(rec.attempts):
            path = ctx.store.attempt_dir(ps.index, ps.phase_id, attempt.k) / name
            if path.is_file() and path.stat().st_size:
                shutil.copyfile(path, incident / f"last-{name}")
                break
    for kind in ("ci", "audit"):
        _copy_newest(phase_dir / kind, incident / f"last-{kind}")
    for name in ("issues.json", "gate.json"):
        if (phase_dir / name).exists():
            shutil.copyfile(phase_dir / name, incident / name)


def _copy_newest(root: Path, dest: Path) -> None:
    """The newest numbered folder under `root` (ci/<k>, audit/<n>: reports and logs)."""
    numbered = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    if not numbered:
        return
    newest = max(numbered, key=lambda p: int(p.name))
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(newest, dest)


def spend_sources(spend: Spend) -> str:
    """How much of the spend the CLIs reported, the supervisor estimated from a price
    table, or charged as the reservation of calls whose usage was unknown."""
    reported = spend.cost_usd - spend.cost_estimated_usd - spend.cost_reserved_usd
    return (
        f"Cost by source: ${max(reported, 0.0):.4f} reported, ${spend.cost_estimated_usd:.4f} estimated, "
        f"${spend.cost_reserved_usd:.4f} reserved (unknown); tokens: {spend.tokens - spend.tokens_reserved} "
        f"reported, {spend.tokens_reserved} reserved (unknown)."
    )
