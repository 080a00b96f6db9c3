"""Gate, CI and snapshot of the current attempt."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from pipeline.ci import runner as ci
from pipeline.core import failpoints
from pipeline.core.errors import GitError
from pipeline.core.jsonio import write_model
from pipeline.gate import collection
from pipeline.gate.evidence import gate_check
from pipeline.gate.licence import external_issue_category
from pipeline.gate.verdict import feedback_for, run_gate
from pipeline.models.enums import IssueSource, PhaseState, RunState, Severity
from pipeline.models.issues import Issue
from pipeline.models.reports import GateCheck, GateReport
from pipeline.models.run import PhaseRecord, Spend
from pipeline.models.strategy import PhaseStrategy
from pipeline.policy import budgets
from pipeline.run import guard
from pipeline.run.context import RunContext, tag_name
from pipeline.run.outcomes import (
    EndRun,
    add_phase_spend,
    attempt_dir,
    end_for_budget,
    fail_phase,
    failed_attempt,
    guard_before,
    guard_violation,
    make_issue,
    mark_attempt,
    raw_patch_path,
    rel,
    resolve_fixed_issues,
    save_issues,
    spends,
)
from pipeline.store import chain


def gate_and_verify(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    k = rec.current_attempt
    attempt = rec.attempts[-1]
    adir = attempt_dir(ctx, ps, k)
    patch_path = raw_patch_path(ctx, ps, k)
    ctx.git.reset_to(ctx.worktree, ctx.branch, attempt.base_commit or ctx.git.head(ctx.worktree))
    if ctx.rec.run.state == RunState.PHASE_EXECUTION:
        ctx.rec.run_to(RunState.GATE, phase=ps.phase_id, attempt=k)
    if rec.state == PhaseState.EXECUTING:
        ctx.rec.phase_to(ps.phase_id, PhaseState.GATE, attempt=k)
    confinement = ctx.confinement()
    snap = guard_before(ctx, [adir])
    failpoints.hit("gate_entered")
    gated = _tests_waived(ps, rec) if rec.tampering_approved_attempt == k else ps
    patch_text = patch_path.read_text(errors="surrogateescape")
    base = attempt.base_commit or ctx.git.head(ctx.worktree)
    job = collection.prepare(
        enabled=ctx.rec.strategy.gate.test_collection,
        steps=ctx.rec.strategy.ci_profiles[ps.ci_profile].steps,
        patch_text=patch_text,
        phase=gated,
        worktree=ctx.worktree,
        confinement=confinement,
        cache_dir=ctx.workspace / collection.CACHE_DIR,
        base_commit=base,
        log_dir=adir,
    )
    if job.base is not None and not job.base.cached:  # the base's own conftest ran in the worktree
        ctx.git.reset_to(ctx.worktree, ctx.branch, base)
    report = run_gate(
        patch_text=patch_text,
        patch_path=patch_path,
        worktree=ctx.worktree,
        phase=gated,
        protected_paths=ctx.rec.strategy.protected_paths,
        static_checks=ctx.rec.strategy.ci_profiles[ps.ci_profile].static_checks,
        git=ctx.git,
        attempt=k,
        log_dir=adir,
        confinement=confinement,
        applied_paths=_applied_paths(ctx, attempt.base_commit),
        collection=job,
    )
    _end_if_violated(ctx, ps, k, snap, "static checks", attempt.base_commit)
    write_model(adir / "gate.json", report)
    write_model(ctx.rec.phase_dir(ps) / "gate.json", report)
    failpoints.hit("after_gate")
    if report.verdict != "pass":
        _gate_failed(ctx, ps, report, adir)
        return
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "gated"}))
    _verify(ctx, ps, k)


def _tests_waived(ps: PhaseStrategy, rec: PhaseRecord) -> PhaseStrategy:
    """The phase as gated for an attempt whose test changes the auditor approved: the
    approval and its reason become the test_tampering check's evidence."""
    why = {**ps.why, "tests_may_change": f"approved by the auditor: {rec.tampering_reason}"}
    return ps.model_copy(update={"tests_may_change": True, "why": why})


def _tampering_review(ctx: RunContext, ps: PhaseStrategy, report: GateReport) -> bool:
    """A patch refused only for changing tests goes to the auditor (once per attempt), who
    may approve the change with a recorded reason (playbook §2.3: major findings)."""
    rec = ctx.rec.phase(ps.phase_id)
    failed = [c.name for c in report.checks if c.verdict == "fail"]
    only_tests = bool(failed) and set(failed) <= {"test_tampering", "test_behaviour", "test_collection"}
    if not only_tests or ps.auditor is None or ps.max_auditor_attempts == 0:
        return False
    if rec.tampering_review_attempt == rec.current_attempt:
        return False
    ctx.rec.note(ps.phase_id, "tampering_review", attempt=rec.current_attempt)
    update = {
        "step": "reviewing",
        "tampering_review_attempt": rec.current_attempt,
        "approved_attempt": None,
        "feedback": feedback_for(report),
    }
    ctx.rec.save_phase(rec.model_copy(update=update))
    failpoints.hit("after_tampering_review_recorded")
    return True


def _applied_paths(ctx: RunContext, base: str | None) -> Callable[[list[str]], GateCheck]:
    """The gate's check right after `apply`: the paths git itself reports as changed (3-way
    included) are the paths the gate parsed; any other fails as a policy violation. They
    are read against HEAD, which `gate_and_verify` put at `base` (one `git status`)."""
    del base  # HEAD is the attempt's base here

    def check(parsed: list[str]) -> GateCheck:
        actual = ctx.git.changed_paths(ctx.worktree)
        unseen = sorted(set(actual) - set(parsed))
        if unseen:
            return gate_check("applied_paths", False, "git changed paths the gate did not see in the patch", unseen)
        return gate_check("applied_paths", True, f"git changed the {len(actual)} path(s) the gate checked")

    return check


def _end_if_violated(
    ctx: RunContext, ps: PhaseStrategy, k: int, snap: guard.Snapshot, who: str, base: str | None
) -> None:
    """A step that touched the record or the shared git state ends the run; the worktree
    goes back to the attempt's base first."""
    violation = guard_violation(ctx, ps, k, snap, who)
    if violation is not None:
        ctx.git.reset_to(ctx.worktree, ctx.branch, base or ctx.git.head(ctx.worktree))
        raise violation


def _gate_fingerprint(report: GateReport) -> str:
    failed = [f"{c.name}:{sorted(c.evidence)}" for c in report.checks if c.verdict == "fail"]
    return hashlib.sha256("|".join(failed).encode()).hexdigest()


def _gate_failed(ctx: RunContext, ps: PhaseStrategy, report: GateReport, adir: Path) -> None:
    if _tampering_review(ctx, ps, report):
        return
    failed = [c for c in report.checks if c.verdict == "fail"]
    check = failed[0] if failed else None
    name = check.name if check else "gate"
    message = check.message if check else "the gate refused the patch"
    external = external_issue_category(ps.task_category, name, check.evidence if check else [])
    issue = make_issue(
        ctx,
        ps,
        key=f"gate:{name}",
        source=IssueSource.static_check if name == "static_checks" else IssueSource.gate,
        category=external or f"gate_{name}",
        severity=Severity.major if report.policy_violation or external else None,
        evidence=[rel(ctx, adir / "gate.json"), *(check.evidence[:5] if check else [])],
        message=message,
    )
    policy = report.policy_violation and ctx.rec.strategy.on_policy_violation == "fail_run"
    failed_attempt(
        ctx,
        ps,
        "policy_violation" if report.policy_violation else "gate_failed",
        message,
        feedback_for(report),
        [issue],
        end=RunState.DONE_FAILED_POLICY_VIOLATION if policy else None,
        fingerprint=_gate_fingerprint(report),
    )


def _verify(ctx: RunContext, ps: PhaseStrategy, k: int) -> None:
    exhausted = budgets.before_ci(ctx.rec.strategy, spends(ctx), ps)
    if exhausted:
        end_for_budget(ctx, ps, exhausted)
    if ctx.rec.run.state == RunState.GATE:
        ctx.rec.run_to(RunState.CI_RUNNING, phase=ps.phase_id, attempt=k)
    # Already CI_RUNNING when a run killed during CI is resumed: CI runs again from the start.
    if ctx.rec.phase(ps.phase_id).state == PhaseState.GATE:
        ctx.rec.phase_to(ps.phase_id, PhaseState.CI_RUNNING, attempt=k)
    out_dir = ctx.store.ci_dir(ps.index, ps.phase_id, k)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = ctx.rec.strategy.ci_profiles[ps.ci_profile]
    if ps.ci_max_retries is not None and ps.ci_max_retries + 1 < profile.preflight_attempts:
        profile = profile.model_copy(update={"preflight_attempts": ps.ci_max_retries + 1})
    confinement = ctx.confinement()
    snap = guard_before(ctx, [out_dir])
    failpoints.hit("ci_entered")
    report = ci.run_ci(
        profile=profile,
        profile_name=ps.ci_profile.value,
        worktree=ctx.worktree,
        out_dir=out_dir,
        phase_id=ps.phase_id,
        attempt=k,
        confinement=confinement,
    )
    _end_if_violated(ctx, ps, k, snap, "CI", ctx.rec.phase(ps.phase_id).attempts[-1].base_commit)
    write_model(out_dir / "ci.json", report)
    failpoints.hit("after_ci")
    add_phase_spend(ctx, ps, Spend(ci_runs=1))
    evidence = rel(ctx, out_dir / "ci.json")
    flaky = [
        make_issue(
            ctx,
            ps,
            key=f"flaky:{t}",
            source=IssueSource.ci,
            category="flaky_test",
            severity=Severity.minor,
            evidence=[evidence, t],
            message=f"{t} failed, then passed on a retry",
        )
        for t in report.flaky_tests
    ]
    if report.environment_error:
        save_issues(ctx, ps, flaky)
        fail_phase(ctx, ps, f"CI environment: {report.environment_error}")
        raise EndRun(RunState.DONE_FAILED_ENVIRONMENT, f"CI environment: {report.environment_error}")
    if report.verdict != "pass":
        feedback = ci.feedback_for(report, out_dir)
        external = external_issue_category(ps.task_category, "ci", [feedback])

        def ci_issue(key: str, source: IssueSource, category: str, refs: list[str], message: str) -> Issue:
            """An issue of the red CI run; in an external code phase, of its external category, major."""
            return make_issue(
                ctx,
                ps,
                key=key,
                source=source,
                category=external or category,
                severity=Severity.major if external else None,
                evidence=refs,
                message=message,
            )

        failing = [
            ci_issue(f"test:{t}", IssueSource.test, "test_failure", [evidence, t], f"{t} failed")
            for t in report.failing_tests
        ] or [ci_issue(f"ci:{ps.ci_profile.value}", IssueSource.ci, "ci_failure", [evidence], "a CI step failed")]
        failed_attempt(
            ctx,
            ps,
            "ci_failed",
            "CI failed",
            feedback,
            [*flaky, *failing],
            fingerprint=ci.fingerprint(report),
        )
        return
    save_issues(ctx, ps, flaky)
    resolve_fixed_issues(ctx, ps, k)
    mark_attempt(ctx, ps, "passed", "gate and CI passed")
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "ci_passed"}))
    ctx.verified_here.add(ps.phase_id)


def snapshot(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    attempt = rec.attempts[-1]
    base = attempt.base_commit or ctx.git.head(ctx.worktree)
    # A crash between `git commit` and recording it must not produce a second commit: a
    # resumed snapshot looks for it first (one whose CI passed in this process cannot have
    # been made yet).
    sha = None
    if ps.phase_id not in ctx.verified_here:
        sha = ctx.git.find_commit_with_trailer(ctx.branch, "Autopack-Phase", ps.phase_id, since=base)
    if sha is None:
        # CI may have left build products behind; the snapshot is exactly the gated patch
        # (one `git status` when the worktree holds just that patch still).
        applied = ctx.git.reapply(ctx.worktree, ctx.branch, base, raw_patch_path(ctx, ps, attempt.k))
        if not applied.ok:
            raise GitError(
                f"re-applying the verified patch of {ps.phase_id} failed: {applied.message}",
                "inspect the worktree; the record is intact and a rerun retries",
            )
        ctx.copy_record_into_worktree()
        run_id = ctx.rec.run.run_id
        message = f"{ps.phase_id}: {ps.name}\n\nAutopack run {run_id}, phase {ps.phase_id}, attempt {attempt.k}."
        try:
            sha = ctx.git.commit(
                ctx.worktree,
                message,
                {
                    "Autopack-Run": ctx.rec.run.run_id,
                    "Autopack-Phase": ps.phase_id,
                    "Autopack-Event": str(ctx.rec.run.events_count + 1),
                },
            )
        except GitError:
            # A commit whose outcome is unknown (a git worker killed while making it): it
            # is found by its trailer if it was made, and never made twice.
            found = ctx.git.find_commit_with_trailer(ctx.branch, "Autopack-Phase", ps.phase_id, since=base)
            if found is None:
                raise
            sha = found
    failpoints.hit("after_snapshot_commit")
    if ctx.rec.run.state == RunState.CI_RUNNING:
        ctx.rec.note_before_transition(ps.phase_id, "snapshot", commit=sha)
    else:
        ctx.rec.note(ps.phase_id, "snapshot", commit=sha)
    ctx.rec.save_phase(rec.model_copy(update={"step": "committed", "commit": sha}))
    ctx.rec.run = ctx.rec.run.model_copy(update={"last_snapshot": sha})
    if ctx.rec.run.state == RunState.CI_RUNNING:
        ctx.rec.run_to(RunState.SNAPSHOT_CREATED, phase=ps.phase_id, commit=sha)


def complete(ctx: RunContext, ps: PhaseStrategy) -> None:
    rec = ctx.rec.phase(ps.phase_id)
    assert rec.commit is not None
    tag = tag_name(ctx.rec.run.run_id, ps.phase_id)
    try:
        ctx.git.tag(ctx.worktree, tag, rec.commit, f"Autopack run {ctx.rec.run.run_id} phase {ps.phase_id}: {ps.name}")
    except GitError:
        if ctx.git.tag_target(tag) != rec.commit:  # not an interrupted tag that was made after all
            raise
    failpoints.hit("after_tag")
    ctx.rec.save_phase(rec.model_copy(update={"tag": tag}))
    k = rec.attempts[-1].k if rec.attempts else rec.current_attempt
    adir = attempt_dir(ctx, ps, k)
    ci_json = ctx.store.ci_dir(ps.index, ps.phase_id, k) / "ci.json"
    named = chain.artifacts(ctx.store.run_dir, [adir / "patch.diff", adir / "gate.json", ci_json])
    ctx.rec.phase_to(ps.phase_id, PhaseState.COMPLETE, commit=rec.commit, tag=tag, **{chain.ARTIFACTS: named})
    failpoints.hit("after_complete")
    ctx.rec.save_phase(ctx.rec.phase(ps.phase_id).model_copy(update={"step": "done"}))
    # One run.json write: the run leaves the phase with the transition that ends it.
    ctx.rec.run = ctx.rec.run.model_copy(update={"current_phase": None})
    if ctx.rec.run.state == RunState.SNAPSHOT_CREATED:
        ctx.rec.run_to(RunState.PHASE_QUEUEING, completed=ps.phase_id)  # writes run.json
    else:
        ctx.rec.save_run()
