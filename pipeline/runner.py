"""Drive a run: one phase through EXECUTING -> GATE -> CI_RUNNING -> COMPLETE / FAILED.

Layer L5. Every step is recorded before the next begins (`PhaseRecord.step`), so a rerun
after a crash continues from the last recorded step and never repeats a committed
snapshot: before committing, the branch is searched for a commit already carrying this
phase's trailer.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import agents, ci, gate
from pipeline.context import RunContext, open_context, tag_name
from pipeline.errors import AutopackError, GitError, InvalidInput
from pipeline.issues import build_run_index, effective, record_issues
from pipeline.jsonio import write_model, write_text_atomic
from pipeline.models.enums import IssueSource, PhaseState, RunState, Severity, TierState
from pipeline.models.issues import Issue
from pipeline.models.results import AttemptOutcome, AttemptRecord, BuilderResult, SuggestedIssue, Usage
from pipeline.models.run import PhaseRecord, Spend
from pipeline.models.strategy import PhaseStrategy
from pipeline.planfile import plan_sha256
from pipeline.recorder import add_spend
from pipeline.spec import render_spec
from pipeline.store import RunStore, utc_now
from pipeline.terminal import finish_run

_EXECUTION_STATES = (RunState.PHASE_EXECUTION, RunState.GATE, RunState.CI_RUNNING, RunState.SNAPSHOT_CREATED)


@dataclass(frozen=True)
class StepOutcome:
    """What one `run_phase` did, for the task to print."""

    run_id: str
    phase_id: str | None
    phase_state: PhaseState | None
    run_state: RunState
    message: str


class EndRun(Exception):
    """Internal: the phase decided the run must end in a terminal state."""

    def __init__(self, state: RunState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


# -- entry points ----------------------------------------------------------------------


def run_phase(workspace: Path, run_id: str, phase_id: str | None = None) -> StepOutcome:
    store = RunStore(workspace, run_id)
    _require_started(store)
    with store.lock():
        ctx = open_context(workspace, run_id)
        return _run_phase_locked(ctx, phase_id)


def run_to_end(workspace: Path, run_id: str, max_steps: int = 1000) -> list[StepOutcome]:
    outcomes: list[StepOutcome] = []
    for _ in range(max_steps):
        outcome = run_phase(workspace, run_id)
        outcomes.append(outcome)
        if outcome.run_state.terminal or outcome.phase_state is None:
            return outcomes
    return outcomes


def submit_patch(workspace: Path, run_id: str, phase_id: str, patch: Path, result: Path | None) -> StepOutcome:
    """Hand in an external builder's patch; it takes the same gated path."""
    store = RunStore(workspace, run_id)
    _require_started(store)
    if not patch.is_file():
        raise InvalidInput(f"patch file {patch} does not exist", "pass the path of a unified diff with --patch")
    with store.lock():
        ctx = open_context(workspace, run_id)
        _check_running(ctx)
        ps = _strategy_phase(ctx, phase_id)
        rec = ctx.rec.phase(ps.phase_id)
        if rec.state.terminal:
            raise InvalidInput(
                f"phase {phase_id} is already {rec.state.value}", "submit to a phase that is not finished"
            )
        _enter_phase(ctx, ps)
        _record_submission(ctx, ps, patch, result)
        return _drive_and_finish(ctx, ps)


# -- the phase loop ----------------------------------------------------------------------


def _require_started(store: RunStore) -> None:
    if not store.run_json.exists():
        raise InvalidInput(f"run {store.run_id} is not started", f"start it with `doit start_run --run {store.run_id}`")


def _check_running(ctx: RunContext) -> None:
    sha = plan_sha256(ctx.store.plan_path)
    if sha != ctx.rec.run.plan_sha256:
        raise InvalidInput(
            f"{ctx.store.plan_path} changed after start_run "
            f"(sha256 {sha[:12]} != frozen {ctx.rec.run.plan_sha256[:12]})",
            "a started run's plan is frozen: restore it with `git checkout` or start a new run",
        )


def _run_phase_locked(ctx: RunContext, phase_id: str | None) -> StepOutcome:
    _check_running(ctx)
    run = ctx.rec.run
    if run.state.terminal:
        return StepOutcome(run.run_id, None, None, run.state, f"run {run.run_id} is finished: {run.state.value}")
    ps = _strategy_phase(ctx, phase_id) if phase_id else _next_phase(ctx)
    if ps is None:
        return _finish(ctx, None, RunState.DONE_SUCCESS, "every phase is complete")
    if ps.builder is None and ctx.rec.phase(ps.phase_id).step in ("queued", "building"):
        return StepOutcome(
            run.run_id,
            ps.phase_id,
            ctx.rec.phase(ps.phase_id).state,
            run.state,
            f"phase {ps.phase_id} has no builder: hand in a patch with "
            f"`doit submit --run {run.run_id} --phase {ps.phase_id} --patch FILE`",
        )
    _enter_phase(ctx, ps)
    return _drive_and_finish(ctx, ps)


def _drive_and_finish(ctx: RunContext, ps: PhaseStrategy) -> StepOutcome:
    started = time.monotonic()
    try:
        _drive_phase(ctx, ps)
    except EndRun as end:
        ctx.rec.add_active_seconds(time.monotonic() - started)
        return _finish(ctx, ps, end.state, end.reason)
    except GitError as exc:
        ctx.rec.add_active_seconds(time.monotonic() - started)
        _fail_phase(ctx, ps, f"git failed: {exc.message}")
        return _finish(ctx, ps, RunState.DONE_FAILED_ENVIRONMENT, f"git failed: {exc.message}")
    ctx.rec.add_active_seconds(time.monotonic() - started)
    _close_tier_if_done(ctx, ps.tier_id)
    if _next_phase(ctx) is None:
        return _finish(ctx, ps, RunState.DONE_SUCCESS, "every phase is complete")
    _commit_record(ctx, f"phase {ps.phase_id} {ctx.rec.phase(ps.phase_id).state.value}")
    rec = ctx.rec.phase(ps.phase_id)
    return StepOutcome(ctx.rec.run.run_id, ps.phase_id, rec.state, ctx.rec.run.state, _phase_message(rec))


def _phase_message(rec: PhaseRecord) -> str:
    if rec.state == PhaseState.COMPLETE:
        return (
            f"phase {rec.phase_id} COMPLETE in {len(rec.attempts)} attempt(s): {rec.tag} at {(rec.commit or '')[:12]}"
        )
    return f"phase {rec.phase_id} {rec.state.value}: {rec.failure_reason or ''}"


def _strategy_phase(ctx: RunContext, phase_id: str) -> PhaseStrategy:
    try:
        return ctx.rec.strategy.phase(phase_id)
    except KeyError:
        known = ", ".join(p.phase_id for p in ctx.rec.strategy.phases)
        raise InvalidInput(f"run {ctx.rec.run.run_id} has no phase {phase_id!r}", f"use one of: {known}") from None


def _next_phase(ctx: RunContext) -> PhaseStrategy | None:
    current = ctx.rec.run.current_phase
    if current and not ctx.rec.phase(current).state.terminal:
        return ctx.rec.strategy.phase(current)
    for ps in ctx.rec.strategy.phases:
        if not ctx.rec.phase(ps.phase_id).state.terminal:
            return ps
    return None


def _enter_phase(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    if ctx.rec.run.state == RunState.PHASE_QUEUEING:
        _start_tier_if_pending(ctx, ps.tier_id)
        ctx.rec.run = ctx.rec.run.model_copy(update={"current_phase": ps.phase_id})
        ctx.rec.run_to(RunState.PHASE_EXECUTION, phase=ps.phase_id)
    if rec.state == PhaseState.QUEUED:
        _guard_review(ctx, ps)
        rec = ctx.rec.phase_to(ps.phase_id, PhaseState.EXECUTING, attempt=1)
        ctx.rec.save_phase(rec.model_copy(update={"step": "building", "current_attempt": 1}))


def _guard_review(ctx: RunContext, ps: PhaseStrategy) -> None:
    """High-risk phases need an auditor before apply; the run never waits for a person."""
    if ps.auto_apply:
        return
    if ps.auditor is None:
        reason = (
            f"phase {ps.phase_id} ({ps.task_category}) needs auditor approval before apply and no auditor is configured"
        )
    else:
        reason = f"phase {ps.phase_id} needs auditor review, which this version cannot run yet"
    ctx.rec.phase_to(ps.phase_id, PhaseState.FAILED, reason=reason)
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"failure_reason": reason, "step": "done"}))
    raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, reason)


def _start_tier_if_pending(ctx: RunContext, tier_id: str) -> None:
    for tier in ctx.rec.run.tiers:
        if tier.tier_id == tier_id and tier.state == TierState.PENDING:
            ctx.rec.tier_to(tier_id, TierState.IN_PROGRESS)


def _close_tier_if_done(ctx: RunContext, tier_id: str) -> None:
    budget = next(t for t in ctx.rec.strategy.tiers if t.tier_id == tier_id)
    phase_states = [ctx.rec.phase(pid).state for pid in budget.phase_ids]
    if not all(s.terminal for s in phase_states):
        return
    tier = next(t for t in ctx.rec.run.tiers if t.tier_id == tier_id)
    if tier.state != TierState.IN_PROGRESS:
        return
    failed = any(s == PhaseState.FAILED for s in phase_states)
    ctx.rec.tier_to(tier_id, TierState.FAILED if failed else TierState.COMPLETE)


def _drive_phase(ctx: RunContext, ps: PhaseStrategy) -> None:
    while True:
        rec = ctx.rec.phase(ps.phase_id)
        if rec.state.terminal:
            return
        if rec.step in ("queued", "building"):
            _build(ctx, ps)
        elif rec.step in ("built", "gated"):
            _gate_and_verify(ctx, ps)
        elif rec.step == "ci_passed":
            _snapshot(ctx, ps)
        elif rec.step == "committed":
            _complete(ctx, ps)
        else:
            return


# -- building ----------------------------------------------------------------------------


def _attempt_paths(ctx: RunContext, ps: PhaseStrategy, k: int) -> Path:
    path = ctx.store.attempt_dir(ps.index, ps.phase_id, k)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt or 1
    assert ps.builder is not None
    base = ctx.git.head(ctx.worktree)
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    _check_budget(ctx, ps)
    adir = _attempt_paths(ctx, ps, k)
    phase_dir = ctx.rec.phase_dir(ps)
    spec_path = phase_dir / "spec.md"
    plan_desc = _phase_description(ctx, ps)
    write_text_atomic(spec_path, render_spec(ctx.rec.strategy, ps, plan_desc, rec.feedback, k))
    attempt = AttemptRecord(
        k=k,
        role="builder",
        agent=ps.builder.preset or "command",
        command=ps.builder.command,
        base_commit=base,
        started_at=utc_now(),
    )
    rec = ctx.rec.save_phase(_with_attempt(rec, attempt).model_copy(update={"step": "building"}))
    result_path = adir / "result.json"
    outcome = agents.run_agent(
        spec=ps.builder,
        role="builder",
        worktree=ctx.worktree,
        env_vars={
            "AUTOPACK_RUN_ID": ctx.rec.run.run_id,
            "AUTOPACK_PHASE_ID": ps.phase_id,
            "AUTOPACK_ATTEMPT": str(k),
            "AUTOPACK_PHASE_SPEC": str(spec_path),
            "AUTOPACK_PHASE_JSON": str(phase_dir / "phase.json"),
            "AUTOPACK_FEEDBACK": rec.feedback or "",
            "AUTOPACK_RESULT": str(result_path),
        },
        timeout_s=ps.builder.timeout_s or ps.builder_timeout_s,
        log_path=adir / "builder.log",
        result_path=result_path,
    )
    patch = ctx.git.collect_patch(ctx.worktree, base)
    ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    write_text_atomic(adir / "patch.diff", patch)
    kind, reason = _classify_builder(outcome, patch)
    files = _patch_files(patch)
    attempt = attempt.model_copy(
        update={
            "finished_at": utc_now(),
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "usage": outcome.usage,
            "patch_sha256": hashlib.sha256(patch.encode()).hexdigest() if patch else None,
            "patch_files": files,
            "outcome": kind or "running",
            "reason": reason,
            "result_notes": outcome.result.notes if outcome.result else "",
        }
    )
    write_model(adir / "builder.json", attempt)
    rec = _with_attempt(ctx.rec.phase(ps.phase_id), attempt)
    rec = rec.model_copy(
        update={
            "spend": add_spend(
                rec.spend, Spend(tokens=outcome.usage.tokens, cost_usd=outcome.usage.cost_usd, builder_attempts=1)
            )
        }
    )
    ctx.rec.save_phase(rec)
    suggested = outcome.result.suggested_issues if isinstance(outcome.result, BuilderResult) else []
    _record_suggested(ctx, ps, suggested, adir)
    if kind is not None:
        _failed_attempt(
            ctx, ps, kind, reason, f"builder attempt {k}: {reason}", [_probe_issue(ctx, ps, kind, reason, adir)]
        )
        return
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "built"}))


def _record_submission(ctx: RunContext, ps: PhaseStrategy, patch: Path, result: Path | None) -> None:
    from pipeline.jsonio import read_model

    rec = ctx.rec.phase(ps.phase_id)
    k = len(rec.attempts) + 1 if rec.step not in ("building",) else rec.current_attempt
    usage = read_model(result, BuilderResult).usage if result else Usage()
    adir = _attempt_paths(ctx, ps, k)
    text = patch.read_text(errors="replace")
    write_text_atomic(adir / "patch.diff", text)
    base = ctx.git.head(ctx.worktree)
    attempt = AttemptRecord(
        k=k,
        role="submit",
        agent="submit",
        command=None,
        base_commit=base,
        started_at=utc_now(),
        finished_at=utc_now(),
        usage=usage,
        patch_sha256=hashlib.sha256(text.encode()).hexdigest(),
        patch_files=_patch_files(text),
    )
    write_model(adir / "builder.json", attempt)
    rec = _with_attempt(rec, attempt)
    rec = rec.model_copy(
        update={
            "step": "built",
            "current_attempt": k,
            "spend": add_spend(rec.spend, Spend(tokens=usage.tokens, cost_usd=usage.cost_usd, builder_attempts=1)),
        }
    )
    ctx.rec.save_phase(rec)


def _classify_builder(outcome: agents.AgentOutcome, patch: str) -> tuple[AttemptOutcome | None, str]:
    if outcome.missing_command:
        return "agent_failed", f"the builder command was not found (exit {outcome.exit_code}); see builder.log"
    if outcome.timed_out:
        return "timed_out", f"the builder timed out after {outcome.duration_s:.0f}s"
    if outcome.exit_code not in (0, None):
        return "agent_failed", f"the builder exited with {outcome.exit_code}"
    if outcome.result_error:
        return "bad_result", f"the builder's result file is invalid: {outcome.result_error}"
    if not patch.strip():
        return "no_change", "the builder changed nothing"
    return None, ""


def _with_attempt(rec: PhaseRecord, attempt: AttemptRecord) -> PhaseRecord:
    others = [a for a in rec.attempts if a.k != attempt.k]
    return rec.model_copy(update={"attempts": sorted([*others, attempt], key=lambda a: a.k)})


def _patch_files(patch: str) -> list[str]:
    try:
        return sorted({f.path for f in gate.parse_patch(patch).files}) if patch.strip() else []
    except AutopackError:
        return []


def _phase_description(ctx: RunContext, ps: PhaseStrategy) -> str:
    from pipeline.planfile import load_plan

    plan, _ = load_plan(ctx.store.plan_path)
    for _tier, phase in plan.phases():
        if phase.phase_id == ps.phase_id:
            return phase.description
    return ""


def _check_budget(ctx: RunContext, ps: PhaseStrategy) -> None:
    """A call that cannot fit in the remaining run budget is not made."""
    run = ctx.rec.run
    budget = run.budgets
    if run.spend.tokens + ps.incident_token_cap > budget.token_cap:
        reason = (
            f"run token budget: {run.spend.tokens} used of {budget.token_cap}; the next builder call of "
            f"{ps.phase_id} ({ps.task_category}:{ps.complexity.value}) may need {ps.incident_token_cap}"
        )
        _fail_phase(ctx, ps, reason)
        raise EndRun(RunState.DONE_FAILED_BUDGET_EXHAUSTED, reason)
    if budget.cost_cap_usd is not None and run.spend.cost_usd >= budget.cost_cap_usd:
        reason = (
            f"run cost budget: ${run.spend.cost_usd:.2f} used of ${budget.cost_cap_usd:.2f} "
            f"({ps.task_category}:{ps.complexity.value})"
        )
        _fail_phase(ctx, ps, reason)
        raise EndRun(RunState.DONE_FAILED_BUDGET_EXHAUSTED, reason)


# -- gate and CI -------------------------------------------------------------------------


def _gate_and_verify(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt
    attempt = rec.attempts[-1]
    adir = _attempt_paths(ctx, ps, k)
    patch_path = adir / "patch.diff"
    ctx.git.reset_to(ctx.worktree, ctx.branch, attempt.base_commit or ctx.git.head(ctx.worktree))
    if ctx.rec.run.state == RunState.PHASE_EXECUTION:
        ctx.rec.run_to(RunState.GATE, phase=ps.phase_id, attempt=k)
    if rec.state == PhaseState.EXECUTING:
        rec = ctx.rec.phase_to(ps.phase_id, PhaseState.GATE, attempt=k)
    report = gate.run_gate(
        patch_text=patch_path.read_text(errors="replace"),
        patch_path=patch_path,
        worktree=ctx.worktree,
        phase=ps,
        protected_paths=ctx.rec.strategy.protected_paths,
        static_checks=ctx.rec.strategy.ci_profiles[ps.ci_profile].static_checks,
        git=ctx.git,
        attempt=k,
        log_dir=adir,
    )
    write_model(adir / "gate.json", report)
    write_model(ctx.rec.phase_dir(ps) / "gate.json", report)
    if report.verdict != "pass":
        _gate_failed(ctx, ps, report, adir)
        return
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "gated"}))
    _verify(ctx, ps, k)


def _gate_failed(ctx: RunContext, ps: PhaseStrategy, report: object, adir: Path) -> None:
    from pipeline.models.reports import GateReport

    assert isinstance(report, GateReport)
    failed = [c for c in report.checks if c.verdict == "fail"]
    check = failed[0] if failed else None
    name = check.name if check else "gate"
    message = check.message if check else "the gate refused the patch"
    issue = _issue(
        ctx,
        ps,
        key=f"gate:{name}",
        source=IssueSource.gate,
        category=f"gate_{name}",
        severity=Severity.major if report.policy_violation else None,
        evidence=[_rel(ctx, adir / "gate.json"), *(check.evidence[:5] if check else [])],
        message=message,
    )
    policy = report.policy_violation and ctx.rec.strategy.on_policy_violation == "fail_run"
    _failed_attempt(
        ctx,
        ps,
        "policy_violation" if report.policy_violation else "gate_failed",
        message,
        gate.feedback_for(report),
        [issue],
        end=RunState.DONE_FAILED_POLICY_VIOLATION if policy else None,
    )


def _verify(ctx: RunContext, ps: PhaseStrategy, k: int) -> None:
    if ctx.rec.run.state == RunState.GATE:
        ctx.rec.run_to(RunState.CI_RUNNING, phase=ps.phase_id, attempt=k)
    ctx.rec.phase_to(ps.phase_id, PhaseState.CI_RUNNING, attempt=k)
    out_dir = ctx.store.ci_dir(ps.index, ps.phase_id, k)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = ci.run_ci(
        profile=ctx.rec.strategy.ci_profiles[ps.ci_profile],
        profile_name=ps.ci_profile.value,
        worktree=ctx.worktree,
        out_dir=out_dir,
        phase_id=ps.phase_id,
        attempt=k,
    )
    write_model(out_dir / "ci.json", report)
    rec = ctx.rec.phase(ps.phase_id)
    ctx.rec.save_phase(rec.model_copy(update={"spend": add_spend(rec.spend, Spend(ci_runs=1))}))
    evidence = _rel(ctx, out_dir / "ci.json")
    flaky = [
        _issue(
            ctx,
            ps,
            key=f"flaky:{t}",
            source=IssueSource.ci,
            category="flaky_test",
            severity=Severity.minor,
            evidence=[evidence],
            message=f"{t} failed, then passed on a retry",
        )
        for t in report.flaky_tests
    ]
    if report.environment_error:
        _save_issues(ctx, ps, flaky)
        _fail_phase(ctx, ps, f"CI environment: {report.environment_error}")
        raise EndRun(RunState.DONE_FAILED_ENVIRONMENT, f"CI environment: {report.environment_error}")
    if report.verdict != "pass":
        failing = [
            _issue(
                ctx,
                ps,
                key=f"test:{t}",
                source=IssueSource.test,
                category="test_failure",
                severity=None,
                evidence=[evidence, t],
                message=f"{t} failed",
            )
            for t in report.failing_tests
        ] or [
            _issue(
                ctx,
                ps,
                key=f"ci:{ps.ci_profile.value}",
                source=IssueSource.ci,
                category="ci_failure",
                severity=None,
                evidence=[evidence],
                message="a CI step failed",
            )
        ]
        _failed_attempt(
            ctx,
            ps,
            "ci_failed",
            "CI failed",
            ci.feedback_for(report, out_dir),
            [*flaky, *failing],
            fingerprint=ci.fingerprint(report),
        )
        return
    _save_issues(ctx, ps, flaky)
    _mark_attempt(ctx, ps, "passed", "gate and CI passed")
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "ci_passed"}))


# -- failures ----------------------------------------------------------------------------


def _failed_attempt(
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
    _save_issues(ctx, ps, issues)
    _mark_attempt(ctx, ps, kind, reason, fingerprint)
    rec = ctx.rec.phase(ps.phase_id)
    ctx.git.reset_to(ctx.worktree, ctx.branch, rec.attempts[-1].base_commit or ctx.git.head(ctx.worktree))
    if end is not None:
        _fail_phase(ctx, ps, reason)
        raise EndRun(end, f"phase {ps.phase_id}: {reason}")
    if rec.current_attempt >= ps.max_builder_attempts:
        why = f"{reason}; {rec.current_attempt} of {ps.max_builder_attempts} builder attempts spent"
        _fail_phase(ctx, ps, why)
        escalation = "no auditor is configured" if ps.auditor is None else "auditor escalation is not built yet"
        raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, f"phase {ps.phase_id}: {why}; {escalation}")
    k = rec.current_attempt + 1
    ctx.rec.phase_to(ps.phase_id, PhaseState.EXECUTING, attempt=k, after=kind)
    if ctx.rec.run.state != RunState.PHASE_EXECUTION:
        ctx.rec.run_to(RunState.PHASE_EXECUTION, phase=ps.phase_id, attempt=k)
    rec = ctx.rec.phase(ps.phase_id)
    ctx.rec.save_phase(rec.model_copy(update={"step": "building", "current_attempt": k, "feedback": feedback}))
    _commit_record(ctx, f"phase {ps.phase_id} attempt {k - 1} {kind}")


def _mark_attempt(
    ctx: RunContext, ps: PhaseStrategy, kind: AttemptOutcome, reason: str, fingerprint: str | None = None
) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    attempt = rec.attempts[-1].model_copy(update={"outcome": kind, "reason": reason, "fingerprint": fingerprint})
    write_model(_attempt_paths(ctx, ps, attempt.k) / "builder.json", attempt)
    ctx.rec.save_phase(_with_attempt(rec, attempt))


def _fail_phase(ctx: RunContext, ps: PhaseStrategy, reason: str) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    if rec.state.terminal:
        return
    ctx.rec.phase_to(ps.phase_id, PhaseState.FAILED, reason=reason)
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"failure_reason": reason, "step": "done"}))


# -- snapshot ----------------------------------------------------------------------------


def _snapshot(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    attempt = rec.attempts[-1]
    base = attempt.base_commit or ctx.git.head(ctx.worktree)
    # A crash between `git commit` and recording it must not produce a second commit.
    sha = ctx.git.find_commit_with_trailer(ctx.branch, "Autopack-Phase", ps.phase_id, since=base)
    if sha is None:
        # CI may have left build products behind; the snapshot is exactly the gated patch.
        ctx.git.reset_to(ctx.worktree, ctx.branch, base)
        applied = ctx.git.apply(ctx.worktree, _attempt_paths(ctx, ps, attempt.k) / "patch.diff")
        if not applied.ok:
            raise GitError(
                f"re-applying the verified patch of {ps.phase_id} failed: {applied.message}",
                "inspect the worktree; the record is intact and a rerun retries",
            )
        ctx.copy_record_into_worktree()
        sha = ctx.git.commit(
            ctx.worktree,
            f"{ps.phase_id}: {ps.name}\n\nAutopack run {ctx.rec.run.run_id}, phase {ps.phase_id}, attempt {attempt.k}.",
            {
                "Autopack-Run": ctx.rec.run.run_id,
                "Autopack-Phase": ps.phase_id,
                "Autopack-Event": str(ctx.rec.run.events_count + 1),
            },
        )
    ctx.rec.note(ps.phase_id, "snapshot", commit=sha)
    ctx.rec.save_phase(rec.model_copy(update={"step": "committed", "commit": sha}))
    ctx.rec.run = ctx.rec.run.model_copy(update={"last_snapshot": sha})
    if ctx.rec.run.state == RunState.CI_RUNNING:
        ctx.rec.run_to(RunState.SNAPSHOT_CREATED, phase=ps.phase_id, commit=sha)


def _complete(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    assert rec.commit is not None
    tag = tag_name(ctx.rec.run.run_id, ps.phase_id)
    ctx.git.tag(ctx.worktree, tag, rec.commit, f"Autopack run {ctx.rec.run.run_id} phase {ps.phase_id}: {ps.name}")
    ctx.rec.save_phase(rec.model_copy(update={"tag": tag}))
    ctx.rec.phase_to(ps.phase_id, PhaseState.COMPLETE, commit=rec.commit, tag=tag)
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "done"}))
    if ctx.rec.run.state == RunState.SNAPSHOT_CREATED:
        ctx.rec.run_to(RunState.PHASE_QUEUEING, completed=ps.phase_id)
    ctx.rec.run = ctx.rec.run.model_copy(update={"current_phase": None})
    ctx.rec.save_run()


# -- issues ------------------------------------------------------------------------------


def _rel(ctx: RunContext, path: Path) -> str:
    try:
        return str(path.relative_to(ctx.store.run_dir))
    except ValueError:
        return str(path)


def _issue(
    ctx: RunContext,
    ps: PhaseStrategy,
    *,
    key: str,
    source: IssueSource,
    category: str,
    severity: Severity | None,
    evidence: list[str],
    message: str,
) -> Issue:
    base = severity or ps.default_severity
    run_id = ctx.rec.run.run_id
    return Issue(
        issue_key=key,
        severity=base,
        effective_severity=effective(base, key, ctx.rec.strategy.effective_severity),
        source=source,
        category=category,
        task_category=ps.task_category,
        complexity=ps.complexity,
        first_seen_run=run_id,
        last_seen_run=run_id,
        evidence_refs=evidence,
        message=message,
    )


def _probe_issue(ctx: RunContext, ps: PhaseStrategy, kind: str, reason: str, adir: Path) -> Issue:
    return _issue(
        ctx,
        ps,
        key=f"builder:{kind}",
        source=IssueSource.probe,
        category=f"builder_{kind}",
        severity=Severity.minor,
        evidence=[_rel(ctx, adir / "builder.log")],
        message=reason,
    )


def _record_suggested(ctx: RunContext, ps: PhaseStrategy, suggested: list[SuggestedIssue], adir: Path) -> None:
    issues = [
        _issue(
            ctx,
            ps,
            key=s.issue_key,
            source=IssueSource.builder_self_doubt,
            category=s.category,
            severity=s.severity,
            evidence=[*s.evidence_refs, _rel(ctx, adir / "result.json")],
            message=s.message,
        )
        for s in suggested
    ]
    _save_issues(ctx, ps, issues)


def _save_issues(ctx: RunContext, ps: PhaseStrategy, issues: list[Issue]) -> None:
    if not issues:
        return
    file = record_issues(ctx.rec.issues(ps.phase_id), issues)
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


# -- the record on the branch ------------------------------------------------------------


def _commit_record(ctx: RunContext, what: str) -> None:
    """Record-only commit so the branch alone is a complete audit trail (DESIGN §4)."""
    if not ctx.record_in_branch or not ctx.worktree.exists():
        return
    ctx.copy_record_into_worktree()
    if not ctx.git.is_dirty(ctx.worktree):
        return
    ctx.git.commit(
        ctx.worktree,
        f"autopack: record {ctx.rec.run.run_id}: {what}",
        {"Autopack-Run": ctx.rec.run.run_id, "Autopack-Event": str(ctx.rec.run.events_count)},
    )


def _finish(ctx: RunContext, ps: PhaseStrategy | None, state: RunState, reason: str) -> StepOutcome:
    if ps is not None:
        _close_tier_if_done(ctx, ps.tier_id)
    finish_run(ctx, state, reason)
    _commit_record(ctx, state.value)
    phase_state = ctx.rec.phase(ps.phase_id).state if ps else None
    return StepOutcome(ctx.rec.run.run_id, ps.phase_id if ps else None, phase_state, ctx.rec.run.state, reason)
