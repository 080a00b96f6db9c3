"""Synthetic run records: what a started run leaves in `runs/<run_id>/`, built with the
models (so every file validates), without agents or git.

The backlog reads only the record, so tests of counting, aging and resolution can lay down
many runs in milliseconds; real runs (testing.runs) cover the paths that need git.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.profiles import load_ci_profiles, load_ruleset
from pipeline.core.jsonio import write_model
from pipeline.issues.rules import build_run_index, record_issues
from pipeline.models.enums import Complexity, IssueSource, PhaseState, RunScope, RunState, SafetyProfile, Severity
from pipeline.models.issues import Issue, PhaseIssueFile
from pipeline.models.plan import Plan
from pipeline.models.reports import CiReport, CiStepResult, CiTry, TestCaseResult
from pipeline.models.run import PhaseRecord, RunRecord
from pipeline.policy.strategy import compile_strategy
from pipeline.run.recorder import initial_summaries
from pipeline.store.rundir import RunStore
from testing.runtree import new_issue

ZERO_SHA256 = "0" * 64
TestOutcome = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class SynIssue:
    key: str
    severity: Severity = Severity.minor
    category: str = "lint"
    evidence: tuple[str, ...] = ()
    message: str = ""


@dataclass(frozen=True)
class SynPhase:
    phase_id: str
    tier_id: str = "T1"
    issues: tuple[SynIssue, ...] = ()
    repeats: int = 1  # the issues are recorded this many times (occurrences, not ages)
    state: PhaseState = PhaseState.COMPLETE
    task_category: str = "feature_implementation"
    cleans: tuple[str, ...] = ()
    scope: tuple[str, ...] = ("**",)
    tests: tuple[tuple[str, TestOutcome], ...] = ()  # (node_id, outcome) of ci/1/ci.json
    extra: dict[str, object] = field(default_factory=dict)


def _plan(run_id: str, phases: Sequence[SynPhase], profile: SafetyProfile) -> Plan:
    tiers: dict[str, list[dict[str, object]]] = {}
    for p in phases:
        tiers.setdefault(p.tier_id, []).append(
            {
                "phase_id": p.phase_id,
                "name": f"Phase {p.phase_id}",
                "task_category": p.task_category,
                "scope": {"allow": list(p.scope)},
                "cleans": list(p.cleans),
                **p.extra,
            }
        )
    return Plan.model_validate(
        {
            "run_id": run_id,
            "project_id": "sample",
            "safety_profile": profile.value,
            "tiers": [{"tier_id": t, "name": f"Tier {t}", "phases": ps} for t, ps in tiers.items()],
        }
    )


def _issue(run_id: str, p: SynPhase, s: SynIssue) -> Issue:
    return new_issue(
        run_id,
        s.key,
        s.severity,
        IssueSource.builder_self_doubt,
        s.category,
        p.task_category,
        Complexity.medium,
        evidence_refs=list(s.evidence),
        message=s.message or f"{s.key} seen",
    )


def _ci_report(p: SynPhase) -> CiReport:
    tests = [TestCaseResult(node_id=n, outcome=o) for n, o in p.tests]
    step = CiStepResult(name="tests", cmd="pytest", returncode=0, duration_s=0.1, log="ci/1/tests.log", tests=tests)
    tries = [CiTry(n=1, verdict="pass", steps=[step])]
    return CiReport(phase_id=p.phase_id, attempt=1, profile="normal", verdict="pass", tries=tries)


def write_run(
    workspace: Path,
    run_id: str,
    created_at: str,
    phases: Sequence[SynPhase],
    *,
    profile: SafetyProfile = SafetyProfile.normal,
    state: RunState = RunState.DONE_SUCCESS,
) -> Path:
    """A started (by default finished) run `run_id` with `phases`; returns its directory."""
    store = RunStore(workspace, run_id)
    plan = _plan(run_id, phases, profile)
    strategy = compile_strategy(
        plan,
        load_ruleset(workspace).ruleset,
        plan_sha256=ZERO_SHA256,
        ruleset_sha256=ZERO_SHA256,
        ci_profiles=load_ci_profiles(workspace),
    )
    write_model(store.strategy_json, strategy)
    by_id = {p.phase_id: p for p in phases}
    files: list[tuple[int, PhaseIssueFile]] = []
    for ps in strategy.phases:
        p = by_id[ps.phase_id]
        phase_dir = store.phase_dir(ps.index, ps.phase_id)
        file = PhaseIssueFile(phase_id=ps.phase_id, tier_id=ps.tier_id)
        for _ in range(p.repeats):
            file = record_issues(file, [_issue(run_id, p, s) for s in p.issues])
        write_model(phase_dir / "issues.json", file)
        files.append((ps.index, file))
        rec = PhaseRecord(
            run_id=run_id, phase_id=ps.phase_id, tier_id=ps.tier_id, index=ps.index, name=ps.name, state=p.state
        )
        write_model(phase_dir / "phase.json", rec)
        if p.tests:
            write_model(phase_dir / "ci" / "1" / "ci.json", _ci_report(p))
    write_model(store.issue_index_path, build_run_index(run_id, files))
    tiers, summaries = initial_summaries(strategy, {t.tier_id: t.name for t in plan.tiers})
    summaries = [s.model_copy(update={"state": by_id[s.phase_id].state}) for s in summaries]
    run = RunRecord(
        run_id=run_id,
        project_id="sample",
        state=state,
        safety_profile=profile,
        run_scope=RunScope.multi_tier,
        target_repo=str(Path(workspace) / "no-repo"),
        base_ref="main",
        base_commit="0" * 40,
        branch=f"autonomous/{run_id}",
        worktree=str(Path(workspace) / "no-worktree"),
        plan_sha256=ZERO_SHA256,
        budgets=strategy.run_budget,
        created_at=created_at,
        updated_at=created_at,
        finished_at=created_at if state.terminal else None,
        tiers=tiers,
        phases=summaries,
    )
    write_model(store.run_json, run)
    return store.run_dir
