"""Run directories built from the models, for the reports tests: no git, no agents.

A `RunSpec` lists a run's tiers and phases, each phase its attempts and issues; `write_run`
derives everything else the way the supervisor records it (phase spend, the run record's
summaries through the recorder's own `refresh_summaries`, CI reports for attempts that
reached CI, the run issue index, a hash-chained event log in `EventLog`'s line form) and
writes every artifact through `pipeline.core.jsonio.write_model`. `drop` removes top-level keys
from run.json: a run written by an older schema version.

The pieces below `RunSpec` are shared with bench/reports.py, which builds its runs at random.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.core.jsonio import canonical_json, write_model, write_text_atomic
from pipeline.issues.rules import build_run_index, record_issues
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
from pipeline.models.reports import CheckVerdict, CiReport, CiStepResult, CiTry, TestCaseResult
from pipeline.models.results import AttemptOutcome, AttemptRecord, Usage
from pipeline.models.run import PhaseRecord, RunRecord, Spend, TierSummary
from pipeline.models.strategy import RunBudget
from pipeline.run.recorder import queued_summary, refresh_summaries, sum_spends
from pipeline.store.events import EMPTY_SHA256, event_line
from pipeline.store.rundir import RunStore


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


# -- the pieces of a run's record --------------------------------------------------------------


@dataclass(frozen=True)
class PhasePlan:
    """What run.json names a phase by (a `pipeline.run.recorder.PhaseIdentity`)."""

    phase_id: str
    tier_id: str
    index: int
    name: str
    task_category: str
    complexity: Complexity


def new_issue(
    run_id: str,
    key: str,
    severity: Severity,
    source: IssueSource,
    category: str,
    task_category: str,
    complexity: Complexity,
    **fields: Any,
) -> Issue:
    """An issue first and last seen in `run_id`, its effective severity its own; `fields`: the
    other `Issue` fields."""
    return Issue(
        issue_key=key,
        severity=severity,
        effective_severity=severity,
        source=source,
        category=category,
        task_category=task_category,
        complexity=complexity,
        first_seen_run=run_id,
        last_seen_run=run_id,
        **fields,
    )


def ci_report(
    phase_id: str,
    attempt: int,
    tests: Sequence[TestCaseResult],
    durations: Sequence[float],
    *,
    passed: bool,
    cmd: str = "pytest",
    profile: str = "normal",
    junit: bool = False,
) -> CiReport:
    """ci.json of an attempt whose CI ran one step, `tests`, once per try (`durations`)."""
    verdict: CheckVerdict = "pass" if passed else "fail"
    tries = [
        CiTry(
            n=n,
            verdict=verdict,
            steps=[
                CiStepResult(
                    name="tests",
                    cmd=cmd,
                    returncode=0 if passed else 1,
                    duration_s=duration,
                    junit=f"try{n}-tests.junit.xml" if junit else None,
                    log=f"try{n}-tests.log",
                    tests=list(tests),
                )
            ],
        )
        for n, duration in enumerate(durations, start=1)
    ]
    failing = [t.node_id for t in tests if t.outcome == "failed"]
    return CiReport(
        phase_id=phase_id, attempt=attempt, profile=profile, verdict=verdict, tries=tries, failing_tests=failing
    )


def attempt_spend(attempt: AttemptRecord, ci_runs: int, active_seconds: float = 0.0) -> Spend:
    """What an attempt adds to its phase's spend."""
    auditor = attempt.role == "auditor"
    return Spend(
        tokens=attempt.usage.tokens,
        cost_usd=attempt.usage.cost_usd,
        builder_attempts=0 if auditor else 1,
        auditor_attempts=1 if auditor else 0,
        ci_runs=ci_runs,
        active_seconds=active_seconds,
    )


def phase_record(
    run_id: str,
    plan: PhasePlan,
    state: PhaseState,
    attempts: list[AttemptRecord],
    spends: Iterable[Spend],
    issues: PhaseIssueFile,
    commit: str,
) -> PhaseRecord:
    """phase.json of a phase left in `state` after `attempts`: its spend `spends` added up with
    its issue counts; the commit and tag of a COMPLETE phase, the last attempt's reason for
    the failure of another."""
    done = state == PhaseState.COMPLETE
    spend = sum_spends(spends).model_copy(
        update={"minor_issues": issues.minor_issue_count, "major_issues": issues.major_issue_count}
    )
    return PhaseRecord(
        run_id=run_id,
        phase_id=plan.phase_id,
        tier_id=plan.tier_id,
        index=plan.index,
        name=plan.name,
        state=state,
        step="done" if state.terminal else "queued",
        current_attempt=len(attempts),
        attempts=attempts,
        spend=spend,
        escalated=any(a.role == "auditor" for a in attempts),
        commit=commit if done else None,
        tag=f"autonomous/{run_id}/{plan.phase_id}" if done else None,
        failure_reason=None if done or not attempts else attempts[-1].reason,
    )


class EventChain:
    """events.jsonl in memory: `EventLog`'s line form and hash chain, without its fsyncs."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.head = EMPTY_SHA256

    def add(self, ts: str, kind: str, entity: str, frm: str | None, to: str | None, **data: Any) -> Event:
        event = Event(
            seq=len(self.lines) + 1,
            ts=ts,
            kind=kind,
            entity=entity,
            from_state=frm,
            to_state=to,
            data=data,
            prev_sha256=self.head,
        )
        line = event_line(event)
        self.head = hashlib.sha256(line).hexdigest()
        self.lines.append(line.decode("utf-8"))
        return event

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def run_record(
    run_id: str,
    plans: Sequence[PhasePlan],
    tiers: Sequence[TierSummary],
    records: Sequence[PhaseRecord],
    *,
    max_minor_issues: int,
    **fields: Any,
) -> RunRecord:
    """run.json of a run on `../target`, its summaries brought up to date with `records` by
    the recorder's own `refresh_summaries`; `fields`: the other `RunRecord` fields."""
    run = RunRecord(
        run_id=run_id,
        run_scope=RunScope.multi_tier,
        target_repo="../target",
        base_ref="main",
        branch=f"autonomous/{run_id}",
        worktree=f".autopack/worktrees/{run_id}",
        budgets=RunBudget(
            token_cap=5_000_000,
            cost_cap_usd=None,
            max_phases=25,
            max_minor_issues_total=max_minor_issues,
            max_duration_minutes=120,
        ),
        tiers=list(tiers),
        phases=[queued_summary(p) for p in plans],
        **fields,
    )
    return refresh_summaries(run, {r.phase_id: r for r in records})


def debt_status(spend: Spend) -> str:
    """run.json's `debt_status` for a run that spent `spend`."""
    return "has_major_debt" if spend.major_issues else "has_minor_debt" if spend.minor_issues else "clean"


def older_schema_json(model: BaseModel, drop: Iterable[str]) -> str:
    """`model`'s canonical JSON without the top-level keys `drop`: as a schema version older
    than the fields wrote it (checked still valid: the dropped fields have defaults)."""
    data = model.model_dump(mode="json")
    for key in drop:
        data.pop(key, None)
    type(model).model_validate(data)
    return canonical_json(data)


# -- a run from its spec -----------------------------------------------------------------------


def _rounded(spend: Spend) -> Spend:
    """Costs to 6 places, as the specs write them (sums of floats end in ...0000002)."""
    return spend.model_copy(update={"cost_usd": round(spend.cost_usd, 6)})


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
    tests = [TestCaseResult(node_id="tests/test_a.py::test_ok", outcome="passed")]
    tests += [TestCaseResult(node_id=t, outcome="failed", message="assert 1 == 2") for t in a.failing]
    return ci_report(phase_id, k, tests, [1.5], passed=a.ci == "pass")


def _events(spec: RunSpec) -> EventChain:
    events = EventChain()
    events.add(spec.created_at, "run", spec.run_id, "PLAN_BOOTSTRAP", "RUN_CREATED")
    for p in spec.phases:
        events.add(spec.created_at, "phase", p.phase_id, "QUEUED", p.state.value)
    events.add(spec.created_at, "run", spec.run_id, "PHASE_QUEUEING", spec.state.value)
    return events


def write_run(workspace: Path, spec: RunSpec) -> Path:
    """Write every artifact of `spec` under `workspace/runs/<run_id>/`; returns the run directory."""
    store = RunStore(workspace, spec.run_id)
    plans = [
        PhasePlan(p.phase_id, p.tier_id, index, f"phase {p.phase_id}", p.category, p.complexity)
        for index, p in enumerate(spec.phases, start=1)
    ]
    records: list[PhaseRecord] = []
    issue_files: list[tuple[int, PhaseIssueFile]] = []
    for plan, p in zip(plans, spec.phases, strict=True):
        pdir = store.phase_dir(plan.index, plan.phase_id)
        attempts = [_attempt(spec, k, a) for k, a in enumerate(p.attempts, start=1)]
        for k, (a, rec) in enumerate(zip(p.attempts, attempts, strict=True), start=1):
            write_model(pdir / "attempts" / str(k) / "builder.json", rec)
            if a.ci:
                write_model(pdir / "ci" / str(k) / "ci.json", _ci(p.phase_id, k, a))
        issues = [
            new_issue(
                spec.run_id,
                i.key,
                i.severity,
                i.source,
                i.category,
                p.category,
                p.complexity,
                occurrence_count=i.occurrences,
            )
            for i in p.issues
        ]
        issue_file = record_issues(PhaseIssueFile(phase_id=p.phase_id, tier_id=p.tier_id), issues)
        write_model(pdir / "issues.json", issue_file)
        issue_files.append((plan.index, issue_file))
        spends = [attempt_spend(rec, 1 if a.ci else 0) for a, rec in zip(p.attempts, attempts, strict=True)]
        record = phase_record(spec.run_id, plan, p.state, attempts, spends, issue_file, "c" * 40)
        record = record.model_copy(update={"spend": _rounded(record.spend)})
        write_model(pdir / "phase.json", record)
        records.append(record)
    write_model(store.issue_index_path, build_run_index(spec.run_id, issue_files))
    events = _events(spec)
    write_text_atomic(store.events_path, events.text())
    tiers = [
        TierSummary(
            tier_id=t.tier_id,
            name=t.name,
            state=t.state,
            cleanliness=t.cleanliness,
            cleanliness_reasons=list(t.reasons),
        )
        for t in spec.tiers
    ]
    run = run_record(
        spec.run_id,
        plans,
        tiers,
        records,
        max_minor_issues=9,
        project_id=spec.project_id,
        state=spec.state,
        safety_profile=spec.safety_profile,
        base_commit="b" * 40,
        plan_sha256="0" * 64,
        failure_reason=spec.failure_reason,
        promotion_eligible_to_main=spec.state == RunState.DONE_SUCCESS
        and all(t.cleanliness == "clean" for t in spec.tiers),
        created_at=spec.created_at,
        updated_at=spec.finished_at or spec.created_at,
        finished_at=spec.finished_at,
        events_count=len(events.lines),
    )
    run = run.model_copy(
        update={
            "tiers": [t.model_copy(update={"spend": _rounded(t.spend)}) for t in run.tiers],
            "spend": _rounded(run.spend),
            "debt_status": debt_status(run.spend),
        }
    )
    if spec.drop:
        write_text_atomic(store.run_json, older_schema_json(run, spec.drop))
    else:
        write_model(store.run_json, run)
    return store.run_dir
