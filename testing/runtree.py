"""Run directories built from the models, for the reports tests: no git, no agents.

A `RunSpec` lists a run's tiers and phases, each phase its attempts and issues; `write_run`
derives everything else the way the supervisor records it (phase and tier spend, the run
record's summaries, CI reports for attempts that reached CI, the run issue index, a
hash-chained event log) and writes every artifact through `pipeline.jsonio.write_model`.
`drop` removes top-level keys from run.json: a run written by an older schema version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.issues import build_run_index, record_issues
from pipeline.jsonio import canonical_json, write_model, write_text_atomic
from pipeline.models.enums import (
    Complexity,
    IssueSource,
    PhaseState,
    RunScope,
    RunState,
    SafetyProfile,
    Severity,
    TierState,
)
from pipeline.models.events import Event
from pipeline.models.issues import Issue, PhaseIssueFile
from pipeline.models.reports import CiReport, CiStepResult, CiTry, TestCaseResult
from pipeline.models.results import AttemptOutcome, AttemptRecord, Usage
from pipeline.models.run import PhaseRecord, PhaseSummary, RunRecord, Spend, TierSummary
from pipeline.models.strategy import RunBudget


@dataclass(frozen=True)
class AttemptSpec:
    outcome: AttemptOutcome
    tokens_in: int
    tokens_out: int
    cost_usd: float
    agent: str = "claude"
    role: str = "builder"
    ci: str | None = None  # "pass" or "fail": the attempt reached CI
    failing: tuple[str, ...] = ()


@dataclass(frozen=True)
class IssueSpec:
    key: str
    severity: Severity
    source: IssueSource
    category: str
    occurrences: int = 1


@dataclass(frozen=True)
class PhaseSpec:
    phase_id: str
    tier_id: str
    category: str
    complexity: Complexity
    state: PhaseState
    attempts: tuple[AttemptSpec, ...] = ()
    issues: tuple[IssueSpec, ...] = ()


@dataclass(frozen=True)
class TierSpec:
    tier_id: str
    name: str
    state: TierState
    cleanliness: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    state: RunState
    created_at: str
    finished_at: str | None
    tiers: tuple[TierSpec, ...]
    phases: tuple[PhaseSpec, ...]
    project_id: str = "proj"
    safety_profile: SafetyProfile = SafetyProfile.normal
    failure_reason: str | None = None
    drop: tuple[str, ...] = field(default=())


def _add(a: Spend, b: Spend) -> Spend:
    return Spend(
        tokens=a.tokens + b.tokens,
        cost_usd=round(a.cost_usd + b.cost_usd, 6),
        builder_attempts=a.builder_attempts + b.builder_attempts,
        auditor_attempts=a.auditor_attempts + b.auditor_attempts,
        ci_runs=a.ci_runs + b.ci_runs,
        active_seconds=a.active_seconds + b.active_seconds,
        minor_issues=a.minor_issues + b.minor_issues,
        major_issues=a.major_issues + b.major_issues,
    )


def _attempt(spec: RunSpec, k: int, a: AttemptSpec) -> AttemptRecord:
    return AttemptRecord(
        k=k,
        role="auditor" if a.role == "auditor" else "builder",
        agent=a.agent,
        command=f"{a.agent} --prompt-file spec.md",
        started_at=spec.created_at,
        finished_at=spec.created_at,
        exit_code=0,
        usage=Usage(tokens_in=a.tokens_in, tokens_out=a.tokens_out, cost_usd=a.cost_usd),
        outcome=a.outcome,
        reason="" if a.outcome == "passed" else a.outcome,
        patch_files=["src/x.py"],
    )


def _ci(phase_id: str, k: int, a: AttemptSpec) -> CiReport:
    passed = a.ci == "pass"
    tests = [TestCaseResult(node_id="tests/test_a.py::test_ok", outcome="passed")]
    tests += [TestCaseResult(node_id=t, outcome="failed", message="assert 1 == 2") for t in a.failing]
    step = CiStepResult(
        name="tests", cmd="pytest", returncode=0 if passed else 1, duration_s=1.5, log="try1-tests.log", tests=tests
    )
    return CiReport(
        phase_id=phase_id,
        attempt=k,
        profile="normal",
        verdict="pass" if passed else "fail",
        tries=[CiTry(n=1, verdict="pass" if passed else "fail", steps=[step])],
        failing_tests=list(a.failing),
    )


def _issue(spec: RunSpec, p: PhaseSpec, i: IssueSpec) -> Issue:
    return Issue(
        issue_key=i.key,
        severity=i.severity,
        effective_severity=i.severity,
        source=i.source,
        category=i.category,
        task_category=p.category,
        complexity=p.complexity,
        occurrence_count=i.occurrences,
        first_seen_run=spec.run_id,
        last_seen_run=spec.run_id,
    )


def _events(spec: RunSpec) -> str:
    lines, prev = [], hashlib.sha256(b"").hexdigest()
    steps = [("run", spec.run_id, "PLAN_BOOTSTRAP", "RUN_CREATED")]
    steps += [("phase", p.phase_id, "QUEUED", p.state.value) for p in spec.phases]
    steps.append(("run", spec.run_id, "PHASE_QUEUEING", spec.state.value))
    for seq, (kind, entity, frm, to) in enumerate(steps, start=1):
        event = Event(
            seq=seq, ts=spec.created_at, kind=kind, entity=entity, from_state=frm, to_state=to, prev_sha256=prev
        )
        line = json.dumps(event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        prev = hashlib.sha256(line.encode()).hexdigest()
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_run(workspace: Path, spec: RunSpec) -> Path:
    """Write every artifact of `spec` under `workspace/runs/<run_id>/`; returns the run directory."""
    run_dir = Path(workspace) / "runs" / spec.run_id
    records: list[PhaseRecord] = []
    issue_files: list[tuple[int, PhaseIssueFile]] = []
    for index, p in enumerate(spec.phases, start=1):
        pdir = run_dir / "phases" / f"{index:02d}-{p.phase_id}"
        attempts = [_attempt(spec, k, a) for k, a in enumerate(p.attempts, start=1)]
        spend = Spend()
        for k, (a, rec) in enumerate(zip(p.attempts, attempts, strict=True), start=1):
            write_model(pdir / "attempts" / str(k) / "builder.json", rec)
            if a.ci:
                write_model(pdir / "ci" / str(k) / "ci.json", _ci(p.phase_id, k, a))
            auditor = a.role == "auditor"
            spend = _add(
                spend,
                Spend(
                    tokens=a.tokens_in + a.tokens_out,
                    cost_usd=a.cost_usd,
                    builder_attempts=0 if auditor else 1,
                    auditor_attempts=1 if auditor else 0,
                    ci_runs=1 if a.ci else 0,
                ),
            )
        empty = PhaseIssueFile(phase_id=p.phase_id, tier_id=p.tier_id)
        issues = record_issues(empty, [_issue(spec, p, i) for i in p.issues])
        write_model(pdir / "issues.json", issues)
        issue_files.append((index, issues))
        spend = spend.model_copy(
            update={"minor_issues": issues.minor_issue_count, "major_issues": issues.major_issue_count}
        )
        done = p.state == PhaseState.COMPLETE
        record = PhaseRecord(
            run_id=spec.run_id,
            phase_id=p.phase_id,
            tier_id=p.tier_id,
            index=index,
            name=f"phase {p.phase_id}",
            state=p.state,
            step="done" if p.state.terminal else "queued",
            current_attempt=len(attempts),
            attempts=attempts,
            spend=spend,
            escalated=any(a.role == "auditor" for a in p.attempts),
            commit="c" * 40 if done else None,
            tag=f"autonomous/{spec.run_id}/{p.phase_id}" if done else None,
            failure_reason=None if done or not attempts else attempts[-1].reason,
        )
        write_model(pdir / "phase.json", record)
        records.append(record)
    write_model(run_dir / "run_issue_index.json", build_run_index(spec.run_id, issue_files))
    tiers = []
    total = Spend()
    for t in spec.tiers:
        spend = Spend()
        for r in records:
            if r.tier_id == t.tier_id:
                spend = _add(spend, r.spend)
        total = _add(total, spend)
        tiers.append(
            TierSummary(
                tier_id=t.tier_id,
                name=t.name,
                state=t.state,
                cleanliness=t.cleanliness,
                cleanliness_reasons=list(t.reasons),
                spend=spend,
            )
        )
    events = _events(spec)
    write_text_atomic(run_dir / "events.jsonl", events)
    record_json = RunRecord(
        run_id=spec.run_id,
        project_id=spec.project_id,
        state=spec.state,
        safety_profile=spec.safety_profile,
        run_scope=RunScope.multi_tier,
        target_repo="../target",
        base_ref="main",
        base_commit="b" * 40,
        branch=f"autonomous/{spec.run_id}",
        worktree=f".autopack/worktrees/{spec.run_id}",
        plan_sha256="0" * 64,
        budgets=RunBudget(
            token_cap=5_000_000, cost_cap_usd=None, max_phases=25, max_minor_issues_total=9, max_duration_minutes=120
        ),
        spend=total,
        failure_reason=spec.failure_reason,
        debt_status="has_major_debt" if total.major_issues else "has_minor_debt" if total.minor_issues else "clean",
        promotion_eligible_to_main=spec.state == RunState.DONE_SUCCESS
        and all(t.cleanliness == "clean" for t in spec.tiers),
        created_at=spec.created_at,
        updated_at=spec.finished_at or spec.created_at,
        finished_at=spec.finished_at,
        events_count=events.count("\n"),
        tiers=tiers,
        phases=[
            PhaseSummary(
                phase_id=r.phase_id,
                tier_id=r.tier_id,
                index=r.index,
                name=r.name,
                task_category=p.category,
                complexity=p.complexity.value,
                state=r.state,
                attempts=len(r.attempts),
                tokens=r.spend.tokens,
                cost_usd=r.spend.cost_usd,
                commit=r.commit,
                tag=r.tag,
            )
            for p, r in zip(spec.phases, records, strict=True)
        ],
    )
    if spec.drop:
        data = record_json.model_dump(mode="json")
        for key in spec.drop:
            data.pop(key, None)
        RunRecord.model_validate(data)  # still a valid record: the dropped fields have defaults
        write_text_atomic(run_dir / "run.json", canonical_json(data))
    else:
        write_model(run_dir / "run.json", record_json)
    return run_dir
