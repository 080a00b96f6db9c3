"""The run record (run.json) and phase record (phase.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.models.base import SCHEMA_VERSION, Frozen, Ident
from pipeline.models.enums import PhaseState, RunScope, RunState, SafetyProfile, TierState
from pipeline.models.results import AttemptRecord
from pipeline.models.strategy import RunBudget


class Spend(Frozen):
    """What a run, tier or phase has used so far."""

    tokens: int = 0
    cost_usd: float = 0.0
    # The parts of `tokens` and `cost_usd` that are not what the CLIs reported: costs the
    # supervisor estimated from a price table, and reservations charged for calls whose
    # tokens or cost were unknown.
    tokens_reserved: int = 0
    cost_estimated_usd: float = 0.0
    cost_reserved_usd: float = 0.0
    builder_attempts: int = 0
    auditor_attempts: int = 0
    ci_runs: int = 0
    active_seconds: float = 0.0
    minor_issues: int = 0
    major_issues: int = 0


class PhaseSummary(Frozen):
    phase_id: Ident
    tier_id: Ident
    index: int
    name: str
    task_category: str
    complexity: str
    state: PhaseState
    attempts: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    commit: str | None = None
    tag: str | None = None


class TierSummary(Frozen):
    tier_id: Ident
    name: str
    state: TierState
    cleanliness: Literal["clean", "not_clean"] | None = None
    cleanliness_reasons: list[str] = Field(default_factory=list)
    spend: Spend = Field(default_factory=Spend)
    minor_issue_count: int = Field(default=0, ge=0, description="distinct minor issue_keys of the tier's phases")
    major_issue_count: int = Field(default=0, ge=0, description="distinct major issue_keys of the tier's phases")
    token_cap_hit: bool = Field(default=False, description="the tier spent more tokens than its cap")
    ci_cap_hit: bool = Field(default=False, description="the tier used its whole CI-run cap")


Step = Literal[
    "queued", "building", "reviewing", "escalating", "built", "gated", "ci_passed", "committed", "done"
]


class PhaseRecord(Frozen):
    schema_version: int = SCHEMA_VERSION
    run_id: Ident
    phase_id: Ident
    tier_id: Ident
    index: int
    name: str
    state: PhaseState = PhaseState.QUEUED
    step: Step = "queued"
    current_attempt: int = 0
    attempts: list[AttemptRecord] = Field(default_factory=list)
    spend: Spend = Field(default_factory=Spend)
    feedback: str | None = None
    escalated: bool = Field(default=False, description="builder attempts gave way to the auditor")
    approved_attempt: int | None = Field(default=None, description="attempt the auditor approved for apply")
    tampering_review_attempt: int | None = Field(
        default=None, description="attempt whose test changes (gate test_tampering) went to the auditor"
    )
    tampering_approved_attempt: int | None = Field(
        default=None, description="attempt whose test changes the auditor approved, with tampering_reason"
    )
    tampering_reason: str | None = Field(default=None, description="the auditor's recorded reason for the approval")
    commit: str | None = None
    tag: str | None = None
    failure_reason: str | None = None


class RunRecord(Frozen):
    schema_version: int = SCHEMA_VERSION
    run_id: Ident
    project_id: str
    state: RunState
    safety_profile: SafetyProfile
    run_scope: RunScope
    target_repo: str
    base_ref: str
    base_commit: str
    branch: str
    worktree: str
    plan_sha256: str
    budgets: RunBudget
    spend: Spend = Field(default_factory=Spend)
    failure_reason: str | None = None
    debt_status: Literal["clean", "has_minor_debt", "has_major_debt"] = "clean"
    promotion_eligible_to_main: bool = False
    promotion_reasons: list[str] = Field(default_factory=list)
    created_at: str
    updated_at: str
    finished_at: str | None = None
    current_phase: str | None = None
    last_snapshot: str | None = None
    events_count: int = 0
    events_head: str = ""
    chained_from: str | None = Field(default=None, description="the run this one continues")
    chain_next: str | None = Field(default=None, description="the run that continues this one")
    tiers: list[TierSummary] = Field(default_factory=list)
    phases: list[PhaseSummary] = Field(default_factory=list)
    promoted_commit: str | None = Field(default=None, description="the merge commit `promote` made on the base")
    promoted_at: str | None = None
    isolation: str | None = Field(
        default=None, description="how untrusted steps ran in the latest session: bwrap, or none (why)"
    )
