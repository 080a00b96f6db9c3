"""The compiled, frozen strategy of one run (strategy.json)."""

from __future__ import annotations

from pydantic import Field

from pipeline.models.base import SCHEMA_VERSION, Frozen, Ident
from pipeline.models.enums import (
    BuilderMode,
    CiProfileName,
    Complexity,
    RunScope,
    SafetyProfile,
    Severity,
)
from pipeline.models.plan import AgentSpec, CiProfile, GitFeature, PlanReuse
from pipeline.models.ruleset import GateRule, SandboxRule, SeverityUpgrade


class PhaseStrategy(Frozen):
    phase_id: Ident
    tier_id: Ident
    index: int = Field(ge=1)
    name: str
    task_category: str
    requested_category: str
    complexity: Complexity
    builder_mode: BuilderMode
    high_risk: bool
    default_severity: Severity
    ci_profile: CiProfileName
    auto_apply: bool
    auditor_profile: str | None
    max_builder_attempts: int
    max_auditor_attempts: int
    submit_deadline_minutes: int | None = Field(
        default=None, description="a phase without a builder fails when no patch came within this (from its wait)"
    )
    tests_may_change: bool = Field(
        default=False, description="declared (plan `tests: may_change`) or by category: test changes are recorded"
    )
    allows: list[GitFeature] = Field(
        default_factory=list, description="declared in the plan (`allows:`): submodules, filters"
    )
    ci_max_retries: int | None = Field(default=None, description="CI retries after a red try (None: the profile's)")
    minors_tolerated: int = Field(default=2, ge=0, description="minor issues this phase adds to its tier's tolerance")
    majors_tolerated: int | None = Field(default=None, description="its tier's major tolerance (None: default)")
    incident_token_cap: int
    builder_timeout_s: int
    max_files: int | None
    max_changed_lines: int | None
    scope_allow: list[str]
    scope_deny: list[str]
    builder: AgentSpec | None
    auditor: AgentSpec | None
    why: dict[str, str] = Field(default_factory=dict, description="field -> where its value came from")
    cleans: list[str] = Field(default_factory=list, description="backlog issue keys this debt_cleanup phase cleans")
    reuse: PlanReuse | None = Field(default=None, description="the plan's reuse decision (external_feature_reuse)")
    budget_modifier: float = Field(default=0.0, description="reuse and stack modifiers applied to incident_token_cap")
    allowed_licences: list[str] = Field(
        default_factory=list, description="SPDX ids the gate accepts in external code phases"
    )


class TierBudget(Frozen):
    tier_id: Ident
    phase_ids: list[str]
    token_cap: int
    ci_run_cap: int
    max_minor_issues: int
    max_major_issues: int


class RunBudget(Frozen):
    token_cap: int
    cost_cap_usd: float | None
    max_phases: int
    max_minor_issues_total: int
    max_duration_minutes: int


class Strategy(Frozen):
    schema_version: int = SCHEMA_VERSION
    run_id: Ident
    plan_sha256: str
    ruleset_sha256: str
    safety_profile: SafetyProfile
    run_scope: RunScope
    run_budget: RunBudget
    tiers: list[TierBudget]
    phases: list[PhaseStrategy]
    protected_paths: list[str]
    ci_profiles: dict[CiProfileName, CiProfile]
    on_policy_violation: str
    aging_runs: int
    aging_tiers: int
    stop_on_not_clean_tier: bool
    severity_upgrades: list[SeverityUpgrade] = Field(
        default_factory=list, description="the ruleset's rules that make matching issues major"
    )
    effective_severity: dict[str, Severity] = Field(
        default_factory=dict, description="issue_key -> severity raised by backlog aging"
    )
    sandbox: SandboxRule = Field(default_factory=SandboxRule, description="the ruleset's sandbox rule")
    gate: GateRule = Field(default_factory=GateRule, description="the ruleset's gate switches")

    def phase(self, phase_id: str) -> PhaseStrategy:
        for p in self.phases:
            if p.phase_id == phase_id:
                return p
        raise KeyError(phase_id)
