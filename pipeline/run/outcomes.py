"""What happens after an attempt: issues, failed attempts, escalation, phase failure.

A decision that ends the run is
raised as `EndRun` and turned into a terminal state by the runner.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import jsonio
from pipeline.core.jsonio import read_model, write_model, write_text_atomic
from pipeline.core.masking import masked
from pipeline.issues.rules import build_run_index, distinct_counts, effective, record_issues, resolve_fixed
from pipeline.models.enums import IssueSource, PhaseState, RunState, Severity
from pipeline.models.issues import Issue, PhaseIssueFile
from pipeline.models.plan import AgentSpec
from pipeline.models.results import AttemptOutcome, AttemptRecord, AuditRecord, SuggestedIssue, Usage
from pipeline.models.run import PhaseRecord, Spend
from pipeline.models.strategy import PhaseStrategy
from pipeline.policy import budgets
from pipeline.run import guard
from pipeline.run.context import RunContext


class EndRun(Exception):
    """The phase decided the run must end in a terminal state."""

    def __init__(self, state: RunState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


def attempt_dir(ctx: RunContext, ps: PhaseStrategy, k: int) -> Path:
    path = ctx.store.attempt_dir(ps.index, ps.phase_id, k)
    path.mkdir(parents=True, exist_ok=True)
    return path


def with_attempt(rec: PhaseRecord, attempt: AttemptRecord) -> PhaseRecord:
    others = [a for a in rec.attempts if a.k != attempt.k]
    return rec.model_copy(update={"attempts": sorted([*others, attempt], key=lambda a: a.k)})


def rel(ctx: RunContext, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.store.run_dir))
    except ValueError:
        return str(path)


def spends(ctx: RunContext) -> dict[str, Spend]:
    return {p.phase_id: ctx.rec.phase(p.phase_id).spend for p in ctx.rec.strategy.phases}


def add_phase_spend(ctx: RunContext, ps: PhaseStrategy, extra: Spend) -> PhaseRecord:
    from pipeline.run.recorder import add_spend

    rec = ctx.rec.phase(ps.phase_id)
    return ctx.rec.save_phase(rec.model_copy(update={"spend": add_spend(rec.spend, extra)}))


# -- issues ------------------------------------------------------------------------------


def make_issue(
    ctx: RunContext,
    ps: PhaseStrategy,
    *,
    key: str,
    source: IssueSource,
    category: str,
    severity: Severity | None,
    evidence: list[str],
    message: str,
    expected_fail: bool = False,
) -> Issue:
    base = severity or ps.default_severity
    run_id = ctx.rec.run.run_id
    k = ctx.rec.phase(ps.phase_id).current_attempt
    upgraded = any(u.matches(key, category, ps.task_category) for u in ctx.rec.strategy.severity_upgrades)
    return Issue(
        seen_in_attempts=[k] if k else [],
        expected_fail=expected_fail,
        issue_key=key,
        severity=base,
        effective_severity=Severity.major if upgraded else effective(base, key, ctx.rec.strategy.effective_severity),
        source=source,
        category=category,
        task_category=ps.task_category,
        complexity=ps.complexity,
        first_seen_run=run_id,
        last_seen_run=run_id,
        evidence_refs=[masked(e) for e in evidence],
        message=masked(message),
    )


QUARANTINE = Path(".autopack") / "quarantine"


def quarantine_path(ctx: RunContext, ps: PhaseStrategy, k: int) -> Path:
    """Where the raw text of attempt `k`'s patch is kept when it holds a secret: beside the
    worktrees, git-ignored, never part of the record or the branch."""
    return ctx.workspace / QUARANTINE / ctx.rec.run.run_id / ps.phase_id / f"{k}.diff"


def write_patch(ctx: RunContext, ps: PhaseStrategy, k: int, patch: str) -> None:
    """attempts/<k>/patch.diff, masked; the raw text, when it differs, only in the quarantine."""
    safe = masked(patch)
    raw = quarantine_path(ctx, ps, k)
    if safe != patch:
        write_text_atomic(raw, patch)
    else:
        raw.unlink(missing_ok=True)
    write_text_atomic(attempt_dir(ctx, ps, k) / "patch.diff", safe)


def raw_patch_path(ctx: RunContext, ps: PhaseStrategy, k: int) -> Path:
    """The patch attempt `k` handed in, as it was: what the gate checks and applies."""
    raw = quarantine_path(ctx, ps, k)
    return raw if raw.is_file() else attempt_dir(ctx, ps, k) / "patch.diff"


def probe_issue(ctx: RunContext, ps: PhaseStrategy, kind: str, reason: str, log: Path, who: str = "builder") -> Issue:
    return make_issue(
        ctx,
        ps,
        key=f"{who}:{kind}",
        source=IssueSource.probe,
        category=f"{who}_{kind}",
        severity=Severity.minor,
        evidence=[rel(ctx, log)],
        message=reason,
    )


def suggested_issues(
    ctx: RunContext, ps: PhaseStrategy, suggested: list[SuggestedIssue], source: IssueSource, result: Path
) -> list[Issue]:
    return [
        make_issue(
            ctx,
            ps,
            key=s.issue_key,
            source=source,
            category=s.category,
            severity=s.severity,
            evidence=[*s.evidence_refs, rel(ctx, result)],
            message=s.message,
            expected_fail=s.expected_fail,
        )
        for s in suggested
    ]


def save_issues(ctx: RunContext, ps: PhaseStrategy, issues: list[Issue]) -> None:
    """Fold issues into the phase file, rebuild the run index, and enforce the run's minor cap."""
    if not issues:
        return
    _store_issues(ctx, ps, issues)
    minor, _ = run_issue_counts(ctx)
    exhausted = budgets.after_issues(ctx.rec.strategy, ctx.rec.run, spends(ctx), minor)
    if exhausted:
        end_for_budget(ctx, ps, exhausted)


def run_issue_counts(ctx: RunContext, phase_ids: list[str] | None = None) -> tuple[int, int]:
    """(minor, major) distinct issue_keys of the run, or of the phases `phase_ids` (a tier)."""
    wanted = phase_ids if phase_ids is not None else [p.phase_id for p in ctx.rec.strategy.phases]
    return distinct_counts(ctx.rec.issues(pid) for pid in wanted)


def _store_issues(
    ctx: RunContext, ps: PhaseStrategy, issues: list[Issue], file: PhaseIssueFile | None = None
) -> None:
    """Phase file, run index and the phase's issue counts, without any budget check."""
    file = record_issues(file or ctx.rec.issues(ps.phase_id), issues)
    ctx.rec.save_issues(file)
    index = build_run_index(
        ctx.rec.run.run_id, [(p.index, ctx.rec.issues(p.phase_id)) for p in ctx.rec.strategy.phases]
    )
    write_model(ctx.store.issue_index_path, index)
    rec = ctx.rec.phase(ps.phase_id)
    spend = rec.spend.model_copy(
        update={"minor_issues": file.minor_issue_count, "major_issues": file.major_issue_count}
    )
    ctx.rec.save_phase(rec.model_copy(update={"spend": spend}))


def resolve_fixed_issues(ctx: RunContext, ps: PhaseStrategy, accepted: int) -> None:
    """The accepted attempt passed gate and CI: what earlier attempts recorded from their
    gate and CI and this one did not is resolved (fixed within the run)."""
    file = ctx.rec.issues(ps.phase_id)
    resolved = resolve_fixed(file, accepted)
    if resolved == file:
        return
    keys = sorted(i.issue_key for i in resolved.issues if i.resolved_in_attempt == accepted)
    ctx.rec.note(ps.phase_id, "issues_resolved", attempt=accepted, issue_keys=keys)
    _store_issues(ctx, ps, [], file=resolved)


def submit_overdue(ctx: RunContext, ps: PhaseStrategy) -> str | None:
    """Why a phase waiting for `doit submit` is past its deadline, or None. The wait began
    with the run's newest event: nothing has happened in the run since (it waits)."""
    from datetime import UTC, datetime

    minutes = ps.submit_deadline_minutes
    if minutes is None:
        return None
    events = ctx.store.events.read()
    since = events[-1].ts if events else ctx.rec.run.created_at
    started = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if (datetime.now(UTC) - started).total_seconds() < minutes * 60:
        return None
    return f"no patch was submitted within {minutes} min of {since} (submit_deadline_minutes); the phase fails"


def needs_review(ctx: RunContext, ps: PhaseStrategy, rec: PhaseRecord) -> bool:
    """Does the current attempt need the auditor's review before apply? When the phase
    may not auto-apply, and (playbook §2.3: the auditor is invoked when major issues
    appear) when the phase has an open major issue and an auditor that may be called."""
    if rec.approved_attempt == rec.current_attempt:
        return False
    if not ps.auto_apply:
        return True
    if ps.auditor is None or ps.max_auditor_attempts == 0:
        return False
    return ctx.rec.issues(ps.phase_id).major_issue_count > 0


def end_for_budget(ctx: RunContext, ps: PhaseStrategy, exhausted: budgets.Exhaustion) -> None:
    """Record the budget issue, fail the phase and end the run BUDGET_EXHAUSTED."""
    issue = make_issue(
        ctx,
        ps,
        key=f"budget:{exhausted.level}:{exhausted.budget}",
        source=IssueSource.budget,
        category="budget_exhausted",
        severity=Severity.major,
        evidence=[exhausted.slice],
        message=exhausted.reason(),
    )
    # Through the run index and the phase's counts too (it used to reach the phase file
    # only, leaving run_issue_index.json without it); no budget check: the run is ending.
    _store_issues(ctx, ps, [issue])
    ctx.rec.note(
        ps.phase_id,
        "budget_exhausted",
        budget=exhausted.budget,
        level=exhausted.level,
        scope=exhausted.scope,
        slice=exhausted.slice,
    )
    fail_phase(ctx, ps, exhausted.reason())
    raise EndRun(RunState.DONE_FAILED_BUDGET_EXHAUSTED, exhausted.reason())


def check_agent_budget(ctx: RunContext, ps: PhaseStrategy) -> None:
    """A call that cannot fit in the remaining budgets is not made."""
    exhausted = budgets.before_agent_call(ctx.rec.strategy, ctx.rec.run, spends(ctx), ps)
    if exhausted:
        end_for_budget(ctx, ps, exhausted)


def agent_spend(ctx: RunContext, ps: PhaseStrategy, spec: AgentSpec, usage: Usage, **counts: int) -> Spend:
    """One agent call's charge: unknown tokens or cost are charged the call's reservation."""
    from pipeline.agents.prices import estimate_cost

    reserved = ps.incident_token_cap
    cost = 0.0
    if usage.cost_usd is None:  # only then is the cost reservation charged (and worth pricing)
        priced = estimate_cost(spec.model, reserved, 0) if spec.model else None
        cost = budgets.reservation_cost(ctx.rec.run, spec.max_cost_usd, priced)
    return budgets.charge(usage, reserved, cost, **counts)


def record_agent_spend(ctx: RunContext, ps: PhaseStrategy, spend: Spend) -> None:
    """Add what an agent call spent, then end the run if it overspent a hard cap."""
    add_phase_spend(ctx, ps, spend)
    exhausted = budgets.after_agent_call(ctx.rec.strategy, ctx.rec.run, spends(ctx), ps)
    if exhausted:
        end_for_budget(ctx, ps, exhausted)


# -- attempts ----------------------------------------------------------------------------


def mark_attempt(
    ctx: RunContext, ps: PhaseStrategy, kind: AttemptOutcome, reason: str, fingerprint: str | None = None
) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    attempt = rec.attempts[-1].model_copy(update={"outcome": kind, "reason": reason, "fingerprint": fingerprint})
    write_model(attempt_dir(ctx, ps, attempt.k) / "builder.json", attempt)
    ctx.rec.save_phase(with_attempt(rec, attempt))


def fail_phase(ctx: RunContext, ps: PhaseStrategy, reason: str) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    if rec.state.terminal:
        return
    ctx.rec.phase_to(ps.phase_id, PhaseState.FAILED, reason=reason)
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"failure_reason": reason, "step": "done"}))


def _repeats(rec: PhaseRecord) -> bool:
    """The last two builder attempts failed the same way (or handed in the same patch)."""
    tried = [a for a in rec.attempts if a.role != "auditor" and a.outcome not in ("running", "passed")]
    if len(tried) < 2:
        return False
    a, b = tried[-2], tried[-1]
    return bool(
        (a.fingerprint and a.fingerprint == b.fingerprint) or (a.patch_sha256 and a.patch_sha256 == b.patch_sha256)
    )


def builder_attempts(rec: PhaseRecord) -> int:
    return sum(1 for a in rec.attempts if a.role != "auditor")


def auditor_attempts(rec: PhaseRecord) -> int:
    """Every auditor call of the phase (reviews and escalations): numbers audit/<n>/."""
    return rec.spend.auditor_attempts


def audit_records(ctx: RunContext, ps: PhaseStrategy) -> list[AuditRecord]:
    """The phase's auditor calls as recorded in audit/<n>/auditor.json, oldest first."""
    records = []
    for n in range(1, auditor_attempts(ctx.rec.phase(ps.phase_id)) + 1):
        path = ctx.store.audit_dir(ps.index, ps.phase_id, n) / "auditor.json"
        if path.exists():
            records.append(read_model(path, AuditRecord))
    return records


def escalation_calls(records: list[AuditRecord]) -> int:
    """Escalation calls made so far. `max_auditor_attempts` bounds these (and failed calls
    in a row), not the pre-apply reviews, which come one per builder attempt of a
    high-risk phase and are bounded by the builder attempts."""
    return sum(1 for r in records if r.purpose == "escalation")


def failed_attempt(
    ctx: RunContext,
    ps: PhaseStrategy,
    kind: AttemptOutcome,
    reason: str,
    feedback: str,
    issues: list[Issue],
    *,
    end: RunState | None = None,
    fingerprint: str | None = None,
) -> None:
    """Record the failure and choose what comes next: another builder attempt, the
    auditor (attempts spent, or the same failure twice), or the end of the phase."""
    save_issues(ctx, ps, issues)
    mark_attempt(ctx, ps, kind, reason, fingerprint)
    rec = ctx.rec.phase(ps.phase_id)
    ctx.git.reset_to(ctx.worktree, ctx.branch, rec.attempts[-1].base_commit or ctx.git.head(ctx.worktree))
    if end is not None:
        fail_phase(ctx, ps, reason)
        raise EndRun(end, f"phase {ps.phase_id}: {reason}")
    next_step = _next_step(ctx, ps, rec, reason)
    if next_step is None:
        return
    k = rec.current_attempt + 1
    ctx.rec.phase_to(ps.phase_id, PhaseState.EXECUTING, attempt=k, after=kind, next=next_step)
    if ctx.rec.run.state != RunState.PHASE_EXECUTION:
        ctx.rec.run_to(RunState.PHASE_EXECUTION, phase=ps.phase_id, attempt=k)
    rec = ctx.rec.phase(ps.phase_id)
    ctx.rec.save_phase(
        rec.model_copy(
            update={
                "step": next_step,
                "current_attempt": k,
                "feedback": feedback,
                "escalated": rec.escalated or next_step == "escalating",
            }
        )
    )
    commit_record(ctx, f"phase {ps.phase_id} attempt {k - 1} {kind}")


def _next_step(ctx: RunContext, ps: PhaseStrategy, rec: PhaseRecord, reason: str) -> str | None:
    """'building', 'escalating', or None when the phase failed (raises EndRun if the run must end)."""
    if rec.escalated:
        if escalation_calls(audit_records(ctx, ps)) < ps.max_auditor_attempts:
            return "escalating"
        # Playbook §9.3: repeated low-signal auditor attempts end the run with an incident;
        # later phases are not run on top of a phase nobody could make pass.
        why = f"{reason}; {ps.max_auditor_attempts} auditor attempt(s) spent"
        fail_phase(ctx, ps, why)
        raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, f"phase {ps.phase_id}: {why}")
    spent = builder_attempts(rec) >= ps.max_builder_attempts
    repeated = _repeats(rec)
    if not spent and not repeated:
        return "building"
    why = (
        f"{reason}; {builder_attempts(rec)} of {ps.max_builder_attempts} builder attempts spent"
        if spent
        else f"{reason}; the same failure repeated"
    )
    if ps.auditor is None or ps.max_auditor_attempts == 0:
        fail_phase(ctx, ps, why)
        missing = "no auditor is configured" if ps.auditor is None else "the category allows no auditor attempts"
        raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, f"phase {ps.phase_id}: {why}; {missing}")
    ctx.rec.note(ps.phase_id, "escalated", why=why)
    return "escalating"


# -- the record on the branch ------------------------------------------------------------


def commit_record(ctx: RunContext, what: str) -> None:
    """Record-only commit so the branch alone is a complete audit trail (docs/architecture.md, The run directory)."""
    if not ctx.record_in_branch or not ctx.worktree.exists():
        return
    ctx.copy_record_into_worktree()
    ctx.git.commit_changes(
        ctx.worktree,
        f"autopack: record {ctx.rec.run.run_id}: {what}",
        {"Autopack-Run": ctx.rec.run.run_id, "Autopack-Event": str(ctx.rec.run.events_count)},
    )


# -- defence in depth around untrusted steps ----------------------------------------------


def guard_before(ctx: RunContext, allowed: list[Path]) -> guard.Snapshot:
    """The record and shared git state as they stand before an untrusted step (everything
    the recorder holds back written first)."""
    ctx.rec.flush()
    jsonio.barrier()
    return guard.take(ctx.store.run_dir, ctx.worktree, allowed)


def guard_after(ctx: RunContext, ps: PhaseStrategy, k: int, snap: guard.Snapshot, who: str) -> None:
    """After an untrusted step: anything it changed in the record or the shared git state
    is put back, and the run ends as a policy violation naming the file."""
    found = guard.changes(snap)
    if not found:
        return
    lost = guard.restore(snap)
    shown = [_shown(ctx, line) for line in found]
    message = f"the {who} changed what it must not touch: {', '.join(shown[:3])}" + (
        f" (+{len(shown) - 3} more)" if len(shown) > 3 else ""
    )
    evidence = [*shown[:20], *(f"could not restore (its kept copy is gone): {_shown(ctx, p)}" for p in lost)]
    ctx.rec.note(ps.phase_id, "guard_violation", attempt=k, who=who, changes=shown[:50], unrestored=lost[:50])
    issue = make_issue(
        ctx,
        ps,
        key=f"guard:{who}",
        source=IssueSource.probe,
        category="sandbox_escape",
        severity=Severity.major,
        evidence=evidence,
        message=message,
    )
    _store_issues(ctx, ps, [issue])
    fail_phase(ctx, ps, message)
    raise EndRun(RunState.DONE_FAILED_POLICY_VIOLATION, f"phase {ps.phase_id}: {message}")


def guard_violation(ctx: RunContext, ps: PhaseStrategy, k: int, snap: guard.Snapshot, who: str) -> EndRun | None:
    """`guard_after`'s policy violation returned instead of raised, so the caller puts the
    worktree and the refs back before the run ends."""
    try:
        guard_after(ctx, ps, k, snap, who)
    except EndRun as end:
        return end
    return None


def _shown(ctx: RunContext, line: str) -> str:
    """A change line with its path relative to the workspace where it lies inside it."""
    verb, _, path = line.partition(" ")
    if not path:
        verb, path = "", line
    root = ctx.workspace.resolve()
    shown = str(Path(path).relative_to(root)) if Path(path).is_relative_to(root) else path
    return f"{verb} {shown}".strip()
