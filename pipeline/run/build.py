"""A builder attempt (or a submitted patch) becomes `attempts/<k>/patch.diff`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.agents import runner as agents
from pipeline.agents.owned import drop_owned
from pipeline.core import failpoints
from pipeline.core.errors import AutopackError
from pipeline.core.jsonio import write_model, write_text_atomic
from pipeline.core.masking import masked
from pipeline.gate.patch import parse_patch
from pipeline.gate.verdict import CHECK_ORDER
from pipeline.models.enums import IssueSource, RunState, Severity
from pipeline.models.reports import GateCheck, GateReport
from pipeline.models.results import AttemptOutcome, AttemptRecord, BuilderResult, Usage
from pipeline.models.strategy import PhaseStrategy
from pipeline.policy.budgets import charge
from pipeline.run.context import RunContext
from pipeline.run.outcomes import (
    EndRun,
    agent_spend,
    attempt_dir,
    check_agent_budget,
    fail_phase,
    failed_attempt,
    guard_before,
    guard_violation,
    make_issue,
    probe_issue,
    record_agent_spend,
    rel,
    save_issues,
    suggested_issues,
    with_attempt,
    write_patch,
)
from pipeline.run.spec import render_spec
from pipeline.store.events import utc_now
from pipeline.vcs.adapter import RefsState


def agent_env(ctx: RunContext, ps: PhaseStrategy, k: int, result_path: Path, feedback: str | None) -> dict[str, str]:
    phase_dir = ctx.rec.phase_dir(ps)
    return {
        "AUTOPACK_RUN_ID": ctx.rec.run.run_id,
        "AUTOPACK_PHASE_ID": ps.phase_id,
        "AUTOPACK_ATTEMPT": str(k),
        "AUTOPACK_PHASE_SPEC": str(phase_dir / "spec.md"),
        "AUTOPACK_PHASE_JSON": str(phase_dir / "phase.json"),
        "AUTOPACK_FEEDBACK": feedback or "",
        "AUTOPACK_RESULT": str(result_path),
    }


def patch_files(patch: str) -> list[str]:
    try:
        return sorted({f.path for f in parse_patch(patch).files}) if patch.strip() else []
    except AutopackError:
        return []


def patch_sha(patch: str) -> str | None:
    return hashlib.sha256(patch.encode("utf-8", "surrogateescape")).hexdigest() if patch else None


def write_spec(ctx: RunContext, ps: PhaseStrategy, feedback: str | None, k: int) -> None:
    description = ctx.phase_description(ps.phase_id)
    write_text_atomic(ctx.rec.phase_dir(ps) / "spec.md", render_spec(ctx.rec.strategy, ps, description, feedback, k))


def outward_symlinks(ctx: RunContext) -> list[str]:
    """Committed symlinks of the worktree that lead outside it (ignored files such as a
    .venv are not the repository's and are not looked at)."""
    root = ctx.worktree.resolve()
    found = []
    for rel_path in ctx.git.tracked_symlinks(ctx.worktree):
        path = ctx.worktree / rel_path
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            found.append(f"{rel_path} -> {os.readlink(path)}")
    return found


def refuse_outward_symlinks(ctx: RunContext, ps: PhaseStrategy, k: int) -> None:
    """An agent could write through such a link and git would never show it, so no agent
    runs in this worktree: the run ends as a policy violation before any call."""
    escapes = outward_symlinks(ctx)
    if not escapes:
        return
    message = "the repository has symlinks leading outside it; an agent could write through them unseen"
    failed = GateCheck(name="paths_safe", verdict="fail", message=message, evidence=escapes, policy=True)
    # Same shape as a gate report: every check named, the ones after the failure skipped.
    checks = [
        failed if name == "paths_safe" else GateCheck(name=name, verdict="skip", message="not run: paths_safe failed")
        for name in CHECK_ORDER
    ]
    report = GateReport(phase_id=ps.phase_id, attempt=k, verdict="fail", checks=checks)
    write_model(attempt_dir(ctx, ps, k) / "gate.json", report)
    write_model(ctx.rec.phase_dir(ps) / "gate.json", report)
    issue = make_issue(
        ctx,
        ps,
        key="gate:paths_safe",
        source=IssueSource.gate,
        category="gate_paths_safe",
        severity=Severity.major,
        evidence=escapes[:5],
        message=message,
    )
    save_issues(ctx, ps, [issue])
    fail_phase(ctx, ps, f"{message}: {', '.join(escapes[:3])}")
    raise EndRun(RunState.DONE_FAILED_POLICY_VIOLATION, f"phase {ps.phase_id}: {message}")


def undo_ref_changes(ctx: RunContext, ps: PhaseStrategy, k: int, before: RefsState, log: Path) -> None:
    """Branches, tags and stash entries an agent made in its worktree live in the user's
    repository too; they are put back (the agent's refs kept under refs/autopack/) and
    the change is recorded as an issue."""
    quarantine = f"refs/autopack/quarantine/{ctx.rec.run.run_id}/{ps.phase_id}/{k}"
    changes = ctx.git.restore_refs(before, keep={f"refs/heads/{ctx.branch}"}, quarantine=quarantine)
    if not changes:
        return
    ctx.rec.note(ps.phase_id, "agent_refs_restored", attempt=k, changes=changes)
    issue = make_issue(
        ctx,
        ps,
        key="builder:git_refs",
        source=IssueSource.probe,
        category="builder_git_refs",
        severity=Severity.minor,
        evidence=[rel(ctx, log), *changes[:5]],
        message="the agent changed branches, tags or the stash of the shared repository; restored",
    )
    save_issues(ctx, ps, [issue])


def build(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt or 1
    assert ps.builder is not None
    base = ctx.git.head(ctx.worktree)
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    refuse_outward_symlinks(ctx, ps, k)
    check_agent_budget(ctx, ps)
    adir = attempt_dir(ctx, ps, k)
    write_spec(ctx, ps, rec.feedback, k)
    attempt = AttemptRecord(
        k=k,
        role="builder",
        agent=ps.builder.preset or "command",
        command=ps.builder.command,
        base_commit=base,
        started_at=utc_now(),
    )
    rec = ctx.rec.save_phase(with_attempt(rec, attempt).model_copy(update={"step": "building"}))
    result_path = adir / "result.json"
    confinement = ctx.confinement()
    refs_before = ctx.git.refs_state()
    snap = guard_before(ctx, [adir / "builder.log", result_path.parent])
    failpoints.hit("before_agent")
    outcome = agents.run_agent(
        spec=ps.builder,
        role="builder",
        worktree=ctx.worktree,
        env_vars=agent_env(ctx, ps, k, result_path, rec.feedback),
        timeout_s=ps.builder.timeout_s or ps.builder_timeout_s,
        log_path=adir / "builder.log",
        result_path=result_path,
        presets=ctx.ws.agent_presets,
        confinement=confinement,
    )
    # The shared git state is checked (and put back) before git runs in the worktree
    # again: a filter driver or hook the agent planted must never run.
    violation = guard_violation(ctx, ps, k, snap, "builder")
    presets = ctx.ws.agent_presets
    owned = presets[outcome.preset].owned_files if outcome.preset in presets else []
    patch, excluded = drop_owned(ctx.git.collect_patch(ctx.worktree, base), owned)
    failpoints.hit("after_agent")
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    undo_ref_changes(ctx, ps, k, refs_before, adir / "builder.log")
    if violation is not None:
        raise violation
    write_patch(ctx, ps, k, patch)
    kind, reason = classify(outcome, patch)
    attempt = attempt.model_copy(
        update={
            "finished_at": utc_now(),
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "usage": outcome.usage,
            "patch_sha256": patch_sha(patch),
            "patch_files": patch_files(patch),
            "excluded_files": excluded,
            "transient_errors": outcome.transient_errors,
            "outcome": kind or "running",
            "reason": reason,
            "result_notes": masked(outcome_notes(outcome)),
            "command": outcome.command or attempt.command,
        }
    )
    write_model(adir / "builder.json", attempt)
    ctx.rec.save_phase(with_attempt(ctx.rec.phase(ps.phase_id), attempt))
    record_agent_spend(ctx, ps, agent_spend(ctx, ps, ps.builder, outcome.usage, builder_attempts=1))
    suggested = outcome.result.suggested_issues if isinstance(outcome.result, BuilderResult) else []
    save_issues(ctx, ps, suggested_issues(ctx, ps, suggested, IssueSource.builder_self_doubt, result_path))
    if kind is not None:
        issue = probe_issue(ctx, ps, kind, reason, adir / "builder.log")
        # A missing agent program stays missing: retrying only burns attempts (like CI's).
        end = RunState.DONE_FAILED_ENVIRONMENT if outcome.missing_command else None
        failed_attempt(ctx, ps, kind, reason, f"builder attempt {k}: {reason}", [issue], end=end, fingerprint=kind)
        return
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "built"}))


def outcome_notes(outcome: agents.AgentOutcome) -> str:
    """The agent's own notes (result file) and the supervisor's (usage parsing, options)."""
    own = outcome.result.notes if outcome.result else ""
    return "\n".join([*([own] if own else []), *(f"[autopack] {n}" for n in outcome.notes)])


def classify(outcome: agents.AgentOutcome, patch: str, who: str = "builder") -> tuple[AttemptOutcome | None, str]:
    if outcome.missing_command:
        return "agent_failed", outcome.problem or f"the {who} command was not found (exit {outcome.exit_code})"
    if outcome.timed_out:
        return "timed_out", f"the {who} timed out after {outcome.duration_s:.0f}s"
    if outcome.exit_code not in (0, None):
        return "agent_failed", f"the {who} exited with {outcome.exit_code}"
    if outcome.final_error:
        return "agent_failed", f"the {who}'s CLI ended with an error: {outcome.final_error}"
    if outcome.result_error:
        return "bad_result", f"the {who}'s result file is invalid: {outcome.result_error}"
    if not patch.strip():
        return "no_change", f"the {who} changed nothing"
    return None, ""


def record_submission(ctx: RunContext, ps: PhaseStrategy, text: str, usage: Usage) -> None:
    """An external builder's patch (checked by the caller) becomes the next attempt, ready for the gate."""
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt if rec.step == "building" and rec.current_attempt else len(rec.attempts) + 1
    adir = attempt_dir(ctx, ps, k)
    write_patch(ctx, ps, k, text)
    now = utc_now()
    attempt = AttemptRecord(
        k=k,
        role="submit",
        agent="submit",
        command=None,
        base_commit=ctx.git.head(ctx.worktree),
        started_at=now,
        finished_at=now,
        usage=usage,
        patch_sha256=patch_sha(text),
        patch_files=patch_files(text),
    )
    write_model(adir / "builder.json", attempt)
    ctx.rec.save_phase(with_attempt(rec, attempt).model_copy(update={"step": "built", "current_attempt": k}))
    record_agent_spend(ctx, ps, charge(usage, ps.incident_token_cap, 0.0, builder_attempts=1))
