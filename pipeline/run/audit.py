"""The Auditor: a review before apply (auto_apply false) and an escalation when builder
attempts are spent or the same failure repeats (docs/architecture.md: One phase, Governance).

Its verdict is approve | revise (with a patch, which then takes the full gate -> CI ->
snapshot path) | reject. Auditor attempts are bounded; nothing ever waits for a person.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pipeline.agents import runner as agents
from pipeline.agents.owned import drop_owned
from pipeline.core import failpoints
from pipeline.core.jsonio import write_model, write_text_atomic
from pipeline.core.masking import masked
from pipeline.core.overrides import builtin_path
from pipeline.models.enums import IssueSource, RunState
from pipeline.models.results import AttemptRecord, AuditorResult, AuditRecord
from pipeline.models.strategy import PhaseStrategy
from pipeline.run.build import agent_env, classify, outcome_notes, patch_files, patch_sha, undo_ref_changes, write_spec
from pipeline.run.context import RunContext
from pipeline.run.outcomes import (
    EndRun,
    agent_spend,
    attempt_dir,
    audit_records,
    auditor_attempts,
    check_agent_budget,
    escalation_calls,
    fail_phase,
    failed_attempt,
    guard_before,
    guard_violation,
    probe_issue,
    record_agent_spend,
    save_issues,
    suggested_issues,
    with_attempt,
    write_patch,
)
from pipeline.store.events import utc_now

Purpose = Literal["review", "escalation"]


def profile_path(workspace: Path, profile: str | None) -> Path | None:
    if not profile:
        return None
    own = workspace / "profiles" / "auditors" / f"{profile}.md"
    return own if own.exists() else builtin_path(f"auditors/{profile}.md")


def review(ctx: RunContext, ps: PhaseStrategy) -> None:
    """Pre-apply review of the current attempt's patch (auto_apply false)."""
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt
    verdict, patch = _call(ctx, ps, "review", attempt_dir(ctx, ps, k) / "patch.diff")
    if verdict is None:
        _retry_or_fail(ctx, ps, "review")
        return
    if verdict.verdict == "approve" and rec.tampering_review_attempt == k:
        _approve_test_changes(ctx, ps, k, verdict)
    elif verdict.verdict == "approve":
        ctx.rec.note(ps.phase_id, "auditor_approved", attempt=k)
        ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "built", "approved_attempt": k}))
    elif verdict.verdict == "revise" and patch:
        _adopt_patch(ctx, ps, k + 1, patch, verdict)
    else:
        _rejected(ctx, ps, verdict)


def _approve_test_changes(ctx: RunContext, ps: PhaseStrategy, k: int, verdict: AuditorResult) -> None:
    """The auditor approved an attempt the gate refused for changing tests: with a reason
    (its notes), the attempt is gated again with the change recorded; without one, the
    approval does not count and the attempt failed."""
    reason = verdict.notes.strip()
    if not reason:
        failed_attempt(
            ctx,
            ps,
            "gate_failed",
            "the auditor approved the test changes without a reason",
            "the patch deletes, skips or weakens tests; fix the code, not the tests",
            [],
            fingerprint="test_tampering:no_reason",
        )
        return
    ctx.rec.note(ps.phase_id, "test_changes_approved", attempt=k, reason=reason)
    update = {"step": "built", "approved_attempt": k, "tampering_approved_attempt": k, "tampering_reason": reason}
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update=update))
    failpoints.hit("after_test_changes_approved")


def escalate(ctx: RunContext, ps: PhaseStrategy) -> None:
    """The builder could not make it: the auditor may revise (with a patch) or reject."""
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt
    previous = attempt_dir(ctx, ps, k - 1) / "patch.diff" if k > 1 else None
    verdict, patch = _call(ctx, ps, "escalation", previous)
    if verdict is None:
        _retry_or_fail(ctx, ps, "escalation")
        return
    if verdict.verdict == "revise" and patch:
        _adopt_patch(ctx, ps, k, patch, verdict)
    elif verdict.verdict == "reject":
        _rejected(ctx, ps, verdict)
    else:
        _record_attempt(ctx, ps, k, "", verdict)
        failed_attempt(
            ctx,
            ps,
            "no_change",
            "the auditor proposed no fix",
            "the auditor approved without a patch",
            [],
            fingerprint="auditor:no_fix",
        )


def _call(ctx: RunContext, ps: PhaseStrategy, purpose: Purpose, patch: Path | None) -> tuple[AuditorResult | None, str]:
    """Run the auditor once; returns its validated result (None if it misbehaved) and its patch."""
    assert ps.auditor is not None
    check_agent_budget(ctx, ps)
    rec = ctx.rec.phase(ps.phase_id)
    n = auditor_attempts(rec) + 1
    adir = ctx.store.audit_dir(ps.index, ps.phase_id, n)
    adir.mkdir(parents=True, exist_ok=True)
    write_spec(ctx, ps, rec.feedback, rec.current_attempt)
    base = ctx.git.head(ctx.worktree)
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    env = agent_env(ctx, ps, rec.current_attempt, adir / "result.json", rec.feedback)
    profile = profile_path(ctx.workspace, ps.auditor_profile)
    env |= {
        "AUTOPACK_AUDIT_PURPOSE": purpose,
        "AUTOPACK_AUDITOR_PROFILE": str(profile or ""),
        "AUTOPACK_PATCH": str(patch) if patch and patch.exists() else "",
    }
    started = utc_now()
    confinement = ctx.confinement()
    refs_before = ctx.git.refs_state()
    snap = guard_before(ctx, [adir / "auditor.log", adir])
    outcome = agents.run_agent(
        spec=ps.auditor,
        role="auditor",
        worktree=ctx.worktree,
        env_vars=env,
        timeout_s=ps.auditor.timeout_s or ps.builder_timeout_s,
        log_path=adir / "auditor.log",
        result_path=adir / "result.json",
        presets=ctx.ws.agent_presets,
        confinement=confinement,
    )
    violation = guard_violation(ctx, ps, rec.current_attempt, snap, "auditor")
    presets = ctx.ws.agent_presets
    owned = presets[outcome.preset].owned_files if outcome.preset in presets else []
    worktree_patch, _excluded = drop_owned(ctx.git.collect_patch(ctx.worktree, base), owned)
    result = outcome.result if isinstance(outcome.result, AuditorResult) else None
    # Read the suggested patch before the reset: a `patch` the auditor wrote inside the
    # worktree (a path relative to its cwd) is deleted by `git clean` in reset_to.
    suggested = _suggested_patch(ctx, result, worktree_patch)
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    undo_ref_changes(ctx, ps, rec.current_attempt, refs_before, adir / "auditor.log")
    if violation is not None:
        raise violation
    kind, reason = classify(outcome, "x", who="auditor")
    if kind is None and result is not None and result.verdict == "revise" and not suggested.strip():
        # A revision with nothing in it is an invalid result (counted and retried like a
        # crash), not a rejection: the auditor asked for a change it did not hand in.
        missing = f"its patch {result.patch} is missing or empty" if result.patch else "it changed nothing"
        kind, reason = "bad_result", f"the auditor's verdict is revise but it handed in no patch ({missing})"
    audit = AuditRecord(
        k=n,
        purpose=purpose,
        profile=ps.auditor_profile,
        command=outcome.command or ps.auditor.command,
        started_at=started,
        finished_at=utc_now(),
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        usage=outcome.usage,
        verdict=result.verdict if result else None,
        patch_sha256=patch_sha(suggested),
        notes=outcome_notes(outcome),
        error=reason,
    )
    write_model(adir / "auditor.json", audit)
    if suggested:
        write_text_atomic(adir / "suggested.diff", suggested)
    record_agent_spend(ctx, ps, agent_spend(ctx, ps, ps.auditor, outcome.usage, auditor_attempts=1))
    ctx.rec.note(ps.phase_id, "auditor", purpose=purpose, audit=n, verdict=audit.verdict, error=reason)
    if kind is not None or result is None:
        save_issues(
            ctx,
            ps,
            [probe_issue(ctx, ps, kind or "bad_result", reason or "no verdict", adir / "auditor.log", who="auditor")],
        )
        if outcome.missing_command:  # a missing auditor program stays missing: no retry
            fail_phase(ctx, ps, reason)
            raise EndRun(RunState.DONE_FAILED_ENVIRONMENT, f"phase {ps.phase_id}: {reason}")
        return None, ""
    save_issues(ctx, ps, suggested_issues(ctx, ps, result.issues, IssueSource.auditor, adir / "result.json"))
    return result, suggested


def _suggested_patch(ctx: RunContext, result: AuditorResult | None, worktree_patch: str) -> str:
    if result is None or result.verdict != "revise":
        return ""
    if result.patch:
        path = Path(result.patch)
        path = path if path.is_absolute() else ctx.worktree / path
        return path.read_text(errors="surrogateescape") if path.is_file() else ""
    return worktree_patch


def _adopt_patch(ctx: RunContext, ps: PhaseStrategy, k: int, patch: str, result: AuditorResult) -> None:
    """The auditor's revision becomes attempt k, approved, and goes to the gate; a reviewed
    attempt it replaces is superseded (it no longer stays "running")."""
    rec = ctx.rec.phase(ps.phase_id)
    replaced = next((a for a in rec.attempts if a.k == k - 1 and a.outcome == "running"), None)
    if replaced is not None:
        done = replaced.model_copy(update={"outcome": "superseded", "reason": f"replaced by the auditor's attempt {k}"})
        write_model(attempt_dir(ctx, ps, done.k) / "builder.json", done)
        ctx.rec.save_phase(with_attempt(rec, done))
    _record_attempt(ctx, ps, k, patch, result)
    ctx.rec.save_phase(
        ctx.rec.phase(ps.phase_id).model_copy(update={"step": "built", "current_attempt": k, "approved_attempt": k})
    )


def _record_attempt(ctx: RunContext, ps: PhaseStrategy, k: int, patch: str, result: AuditorResult) -> None:
    adir = attempt_dir(ctx, ps, k)
    write_patch(ctx, ps, k, patch)
    now = utc_now()
    assert ps.auditor is not None
    attempt = AttemptRecord(
        k=k,
        role="auditor",
        agent=ps.auditor.preset or "command",
        command=ps.auditor.command,
        base_commit=ctx.git.head(ctx.worktree),
        started_at=now,
        finished_at=now,
        usage=result.usage,
        patch_sha256=patch_sha(patch),
        patch_files=patch_files(patch),
        result_notes=masked(result.notes),
    )
    write_model(adir / "builder.json", attempt)
    ctx.rec.save_phase(with_attempt(ctx.rec.phase(ps.phase_id), attempt))


def _rejected(ctx: RunContext, ps: PhaseStrategy, result: AuditorResult) -> None:
    reason = f"the auditor rejected phase {ps.phase_id}" + (f": {masked(result.notes)}" if result.notes else "")
    fail_phase(ctx, ps, reason)
    raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, reason)


def _retry_or_fail(ctx: RunContext, ps: PhaseStrategy, purpose: Purpose) -> None:
    """A crashed or invalid auditor counts as an attempt; when they are spent, a person must look.

    A review is retried until `max_auditor_attempts` calls in a row have failed (earlier
    successful reviews of other builder attempts do not count against it); an escalation
    is bounded by its own calls (`escalation_calls`), failed or not.
    """
    records = audit_records(ctx, ps)
    failures = 0
    for record in reversed(records):
        if record.verdict is not None and not record.error:
            break
        failures += 1
    spent = escalation_calls(records) if purpose == "escalation" else failures
    if spent < ps.max_auditor_attempts:
        return
    reason = f"the auditor failed its {purpose} {failures} time(s) for phase {ps.phase_id}"
    fail_phase(ctx, ps, reason)
    raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, reason)
