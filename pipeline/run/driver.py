"""Drive a run: each phase through EXECUTING -> GATE -> CI_RUNNING -> COMPLETE / FAILED.

Every step is recorded before the next begins (`PhaseRecord.step`), so a rerun
after a crash continues from the last recorded step and never repeats a committed
snapshot. The steps themselves live in building, auditing and verifying; this module
chooses the phase, runs its steps, closes tiers and ends the run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from pipeline.config.workspace import Workspace
from pipeline.core import failpoints
from pipeline.core.errors import GitError, InvalidInput
from pipeline.core.inputs import read_utf8
from pipeline.models.enums import PhaseState, RunScope, RunState, TierState
from pipeline.models.results import BuilderResult, Usage
from pipeline.models.run import PhaseRecord, TierSummary
from pipeline.models.strategy import PhaseStrategy
from pipeline.plan.file import plan_sha256
from pipeline.reporting.inspect.page import ensure_inspect
from pipeline.run import audit as auditing
from pipeline.run import build as building
from pipeline.run import verify as verifying
from pipeline.run.context import RunContext, open_context
from pipeline.run.finish import finish_run, tier_cleanliness
from pipeline.run.outcomes import EndRun, commit_record, fail_phase, needs_review, submit_overdue
from pipeline.run.reexec import drop_secrets
from pipeline.store.lock import RunLock
from pipeline.store.rundir import RunStore


@dataclass(frozen=True)
class StepOutcome:
    """What one `run_phase` did, for the task to print."""

    run_id: str
    phase_id: str | None
    phase_state: PhaseState | None
    run_state: RunState
    message: str


# -- entry points ----------------------------------------------------------------------


def run_phase(workspace: Path | Workspace, run_id: str, phase_id: str | None = None) -> StepOutcome:
    ws = Workspace.of(workspace)
    drop_secrets(ws)  # `doit run`/`run_phase` without a sandbox: start again without them
    store = RunStore(ws.root, run_id)
    _require_started(store)
    lock = store.lock()
    with lock, open_context(ws, run_id, interrupted=lock.took_over is not None) as ctx:
        _note_takeover(ctx, lock)
        return _run_phase_locked(ctx, phase_id)


def _note_takeover(ctx: RunContext, lock: RunLock) -> None:
    """The last holder of the lock died holding it (kill -9, a cancelled CI job): say so,
    with the processes it left that were ended before this step began. The event is left
    out while a snapshot commit may be waiting for its record: that commit names its note
    event by number (Autopack-Event), which must come next."""
    if lock.took_over is not None:
        holder = lock.took_over
        sys.stderr.write(
            f"note: run {ctx.rec.run.run_id}: taking over the lock of pid {holder.get('pid')} on "
            f"{holder.get('host')} (since {holder.get('since')}), which died holding it; "
            f"ended {len(lock.reaped)} process(es) it left running\n"
        )
        current = ctx.rec.run.current_phase
        if current and ctx.rec.phase(current).step == "ci_passed":
            return
        ctx.rec.note(
            ctx.rec.run.run_id,
            "lock_taken_over",
            holder_pid=holder.get("pid"),
            holder_host=holder.get("host"),
            holder_since=holder.get("since"),
            killed=lock.reaped,
        )


def run_to_end(workspace: Path | Workspace, run_id: str, max_steps: int = 1000) -> list[StepOutcome]:
    """Drive the run, and the runs chained after it, to a terminal state (or to a phase
    waiting for `doit submit`)."""
    workspace = Workspace.of(workspace)
    outcomes: list[StepOutcome] = []
    for _ in range(max_steps):
        outcome = run_phase(workspace, run_id)
        outcomes.append(outcome)
        if outcome.run_state.terminal:
            following = _start_chained(workspace, run_id) if outcome.run_state == RunState.DONE_SUCCESS else None
            if following is None:
                return outcomes
            run_id = following
            outcomes.append(StepOutcome(run_id, None, None, RunState.PHASE_QUEUEING, f"chained run {run_id} started"))
            continue
        if outcome.phase_state is None or not outcome.phase_state.terminal:
            return outcomes  # waiting for `doit submit`
    return outcomes


def _start_chained(ws: Workspace, run_id: str) -> str | None:
    """The run chained after `run_id`, started now that `run_id` succeeded (None if none)."""
    from pipeline.core.jsonio import read_model
    from pipeline.models.run import RunRecord
    from pipeline.run.start import start_run

    following = read_model(RunStore(ws.root, run_id).run_json, RunRecord).chain_next
    if following is None:
        return None
    failpoints.hit("chained_start")
    if not RunStore(ws.root, following).run_json.exists():
        start_run(ws, following)
    return following


def submit_patch(
    workspace: Path | Workspace, run_id: str, phase_id: str, patch: Path, result: Path | None
) -> StepOutcome:
    """Hand in an external builder's patch; it takes the same gated path."""
    ws = Workspace.of(workspace)
    drop_secrets(ws)
    store = RunStore(ws.root, run_id)
    _require_started(store)
    text, usage = read_submission(patch, result)
    lock = store.lock()
    with lock, open_context(ws, run_id, interrupted=lock.took_over is not None) as ctx:
        _note_takeover(ctx, lock)
        _check_frozen(ctx)
        if ctx.rec.run.state.terminal:
            raise InvalidInput(f"run {run_id} is finished ({ctx.rec.run.state.value})", "start a new run")
        ps = _strategy_phase(ctx, phase_id)
        if ctx.rec.phase(ps.phase_id).state.terminal:
            raise InvalidInput(
                f"phase {phase_id} is already {ctx.rec.phase(ps.phase_id).state.value}",
                "submit to a phase that is not finished",
            )
        overdue = submit_overdue(ctx, ps)
        if overdue is not None:
            return _fail_overdue(ctx, ps, overdue)
        try:
            _enter_phase(ctx, ps)
        except EndRun as end:
            return _finish(ctx, ps, end.state, end.reason)
        building.record_submission(ctx, ps, text, usage)
        return _drive_and_finish(ctx, ps)


MAX_PATCH_BYTES = 16 * 1024 * 1024
MAX_RESULT_BYTES = 1024 * 1024


def read_submission(patch: Path, result: Path | None) -> tuple[str, Usage]:
    """The submitted patch (UTF-8 text with no NUL byte) and the usage of its result file,
    both checked before anything is locked or written."""
    fix = "pass the path of a unified diff (UTF-8 text, as `git diff` writes it) with --patch"
    text = read_utf8(patch, "patch", MAX_PATCH_BYTES, fix)
    if "\0" in text:
        raise InvalidInput(f"{patch}: the patch holds a NUL byte: it is not a text diff", fix)
    if result is None:
        return text, Usage()
    raw = read_utf8(result, "result file", MAX_RESULT_BYTES, "pass the builder's result JSON, or leave --result out")
    try:
        return text, BuilderResult.model_validate_json(raw).usage
    except RecursionError:
        raise InvalidInput(f"{result}: JSON nested too deeply", "write a flat result object") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(top)"
        raise InvalidInput(
            f"{result}: {where}: {first.get('msg', 'invalid')} ({exc.error_count()} problem(s))",
            "fix the result file (schemas/builder_result.schema.json), or leave --result out",
        ) from None


# -- choosing and entering a phase --------------------------------------------------------


def _require_started(store: RunStore) -> None:
    if not store.run_json.exists():
        raise InvalidInput(f"run {store.run_id} is not started", f"start it with `doit start_run --run {store.run_id}`")


def _check_frozen(ctx: RunContext) -> None:
    sha = plan_sha256(ctx.store.plan_path)
    if sha != ctx.rec.run.plan_sha256:
        raise InvalidInput(
            f"{ctx.store.plan_path} changed after start_run "
            f"(sha256 {sha[:12]} != frozen {ctx.rec.run.plan_sha256[:12]})",
            "a started run's plan is frozen: restore it with `git checkout` or start a new run",
        )


def _run_phase_locked(ctx: RunContext, phase_id: str | None) -> StepOutcome:
    _check_frozen(ctx)
    run = ctx.rec.run
    if run.state.terminal:
        ensure_inspect(ctx.store.run_dir)  # a step killed before writing the page: write it now
        return StepOutcome(run.run_id, None, None, run.state, f"run {run.run_id} is finished: {run.state.value}")
    ps = _strategy_phase(ctx, phase_id) if phase_id else _next_phase(ctx)
    if ps is None:
        return _finish(ctx, None, *_final_state(ctx))
    ctx.confinement()  # refuses before any change when the ruleset requires a sandbox
    rec = ctx.rec.phase(ps.phase_id)
    if rec.state.terminal:
        return StepOutcome(run.run_id, ps.phase_id, rec.state, run.state, f"phase {ps.phase_id} is {rec.state.value}")
    overdue = submit_overdue(ctx, ps) if ps.builder is None and rec.step in ("queued", "building") else None
    if overdue is not None:
        return _fail_overdue(ctx, ps, overdue)
    if ps.builder is None and rec.step in ("queued", "building"):
        return StepOutcome(
            run.run_id,
            ps.phase_id,
            rec.state,
            run.state,
            f"phase {ps.phase_id} has no builder: hand in a patch with "
            f"`doit submit --run {run.run_id} --phase {ps.phase_id} --patch FILE`",
        )
    try:
        _enter_phase(ctx, ps)
    except EndRun as end:
        return _finish(ctx, ps, end.state, end.reason)
    return _drive_and_finish(ctx, ps)


def _fail_overdue(ctx: RunContext, ps: PhaseStrategy, reason: str) -> StepOutcome:
    """A phase whose patch never came fails cleanly; the run goes on as after any failed phase."""
    try:
        _enter_phase(ctx, ps)
    except EndRun as end:
        return _finish(ctx, ps, end.state, end.reason)
    fail_phase(ctx, ps, reason)
    return _drive_and_finish(ctx, ps)


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
    return next((p for p in ctx.rec.strategy.phases if not ctx.rec.phase(p.phase_id).state.terminal), None)


def _enter_phase(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    if ctx.rec.run.state == RunState.PHASE_QUEUEING:
        _start_tier_if_pending(ctx, ps.tier_id)
        ctx.rec.run = ctx.rec.run.model_copy(update={"current_phase": ps.phase_id})
        ctx.rec.run_to(RunState.PHASE_EXECUTION, phase=ps.phase_id)
    if rec.state == PhaseState.QUEUED:
        if not ps.auto_apply and ps.auditor is None:
            # Decided before any tokens are spent: this phase can never be applied unattended.
            reason = (
                f"phase {ps.phase_id} ({ps.task_category}) needs auditor approval before apply "
                "and no auditor is configured"
            )
            fail_phase(ctx, ps, reason)
            raise EndRun(RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, reason)
        rec = ctx.rec.phase_to(ps.phase_id, PhaseState.EXECUTING, attempt=1)
        ctx.rec.save_phase(rec.model_copy(update={"step": "building", "current_attempt": 1}))


def _start_tier_if_pending(ctx: RunContext, tier_id: str) -> None:
    for tier in ctx.rec.run.tiers:
        if tier.tier_id == tier_id and tier.state == TierState.PENDING:
            ctx.rec.tier_to(tier_id, TierState.IN_PROGRESS)


# -- driving a phase ---------------------------------------------------------------------


class _ActiveClock:
    """Adds active time to the run record step by step, so the duration budget checked
    before each agent call also sees the earlier attempts of this same invocation."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        self.ctx.rec.add_active_seconds(now - self.last)
        self.last = now


def _drive_phase(ctx: RunContext, ps: PhaseStrategy, clock: _ActiveClock) -> None:
    while True:
        clock.tick()
        rec = ctx.rec.phase(ps.phase_id)
        if rec.state.terminal:
            return
        if rec.step in ("queued", "building"):
            if ps.builder is None:
                return  # an external builder hands in the next patch with `doit submit`
            building.build(ctx, ps)
        elif rec.step == "reviewing":
            auditing.review(ctx, ps)
        elif rec.step == "escalating":
            auditing.escalate(ctx, ps)
        elif rec.step in ("built", "gated"):
            if needs_review(ctx, ps, rec):
                ctx.rec.save_phase(rec.model_copy(update={"step": "reviewing"}))
            else:
                verifying.gate_and_verify(ctx, ps)
        elif rec.step == "ci_passed":
            verifying.snapshot(ctx, ps)
        elif rec.step == "committed":
            verifying.complete(ctx, ps)
        else:
            return


def _drive_and_finish(ctx: RunContext, ps: PhaseStrategy) -> StepOutcome:
    clock = _ActiveClock(ctx)
    try:
        try:
            _drive_phase(ctx, ps, clock)
        finally:
            clock.tick()
        _after_phase(ctx, ps)
    except EndRun as end:
        return _finish(ctx, ps, end.state, end.reason)
    except GitError as exc:
        fail_phase(ctx, ps, f"git failed: {exc.message}")
        return _finish(ctx, ps, RunState.DONE_FAILED_ENVIRONMENT, f"git failed: {exc.message}")
    if _next_phase(ctx) is None:
        return _finish(ctx, ps, *_final_state(ctx))
    commit_record(ctx, f"phase {ps.phase_id} {ctx.rec.phase(ps.phase_id).state.value}")
    rec = ctx.rec.phase(ps.phase_id)
    return StepOutcome(ctx.rec.run.run_id, ps.phase_id, rec.state, ctx.rec.run.state, _phase_message(rec))


def _after_phase(ctx: RunContext, ps: PhaseStrategy) -> None:
    """A failed phase returns the run to queueing; a finished tier is judged and may stop the run."""
    rec = ctx.rec.phase(ps.phase_id)
    if rec.state == PhaseState.FAILED and ctx.rec.run.state != RunState.PHASE_QUEUEING:
        ctx.rec.run_to(RunState.PHASE_QUEUEING, failed=ps.phase_id)
        ctx.rec.run = ctx.rec.run.model_copy(update={"current_phase": None})
        ctx.rec.save_run()
    tier = _close_tier_if_done(ctx, ps.tier_id)
    if tier is None or tier.cleanliness == "clean":
        return
    stop = ctx.rec.strategy.stop_on_not_clean_tier or ctx.rec.strategy.run_scope == RunScope.single_tier
    if stop:
        why = "; ".join(tier.cleanliness_reasons)
        raise EndRun(
            RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW,
            f"tier {tier.tier_id} is not clean ({why}); {ctx.rec.strategy.run_scope.value}/"
            f"{ctx.rec.strategy.safety_profile.value} runs stop at a not-clean tier",
        )


def _close_tier_if_done(ctx: RunContext, tier_id: str) -> TierSummary | None:
    budget = next(t for t in ctx.rec.strategy.tiers if t.tier_id == tier_id)
    phase_states = [ctx.rec.phase(pid).state for pid in budget.phase_ids]
    tier = next(t for t in ctx.rec.run.tiers if t.tier_id == tier_id)
    if not all(s.terminal for s in phase_states) or tier.state != TierState.IN_PROGRESS:
        return None
    failed = any(s == PhaseState.FAILED for s in phase_states)
    ctx.rec.tier_to(tier_id, TierState.FAILED if failed else TierState.COMPLETE)
    judged = tier_cleanliness(ctx, next(t for t in ctx.rec.run.tiers if t.tier_id == tier_id))
    ctx.rec.run = ctx.rec.run.model_copy(
        update={"tiers": [judged if t.tier_id == tier_id else t for t in ctx.rec.run.tiers]}
    )
    ctx.rec.save_run()
    return judged


def _final_state(ctx: RunContext) -> tuple[RunState, str]:
    failed = [p.phase_id for p in ctx.rec.strategy.phases if ctx.rec.phase(p.phase_id).state == PhaseState.FAILED]
    if failed:
        return RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW, f"phase(s) {', '.join(failed)} failed after the auditor"
    return RunState.DONE_SUCCESS, "every phase is complete"


def _phase_message(rec: PhaseRecord) -> str:
    if not rec.state.terminal:
        return (
            f"phase {rec.phase_id} waits for a patch (attempt {rec.current_attempt}): "
            f"`doit submit --run {rec.run_id} --phase {rec.phase_id} --patch FILE`"
        )
    if rec.state == PhaseState.COMPLETE:
        return (
            f"phase {rec.phase_id} COMPLETE in {len(rec.attempts)} attempt(s): {rec.tag} at {(rec.commit or '')[:12]}"
        )
    return f"phase {rec.phase_id} {rec.state.value}: {rec.failure_reason or ''}"


def _finish(ctx: RunContext, ps: PhaseStrategy | None, state: RunState, reason: str) -> StepOutcome:
    finish_run(ctx, state, reason)
    try:
        commit_record(ctx, state.value)
    except GitError:
        # The run ended because git failed (e.g. git is gone): the terminal record is
        # written in the workspace; the record-only commit cannot be made, and raising
        # here would hide the outcome behind a second git error.
        if state != RunState.DONE_FAILED_ENVIRONMENT:
            raise
    phase_state = ctx.rec.phase(ps.phase_id).state if ps else None
    return StepOutcome(ctx.rec.run.run_id, ps.phase_id if ps else None, phase_state, ctx.rec.run.state, reason)
