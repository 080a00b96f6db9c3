"""The ruleset (profiles/ruleset.yaml merged over the built-in defaults, docs/architecture.md, Governance)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from pipeline.models.base import Frozen
from pipeline.models.enums import BuilderMode, CiProfileName, Complexity, RunScope, SafetyProfile, Severity


class CategoryRule(Frozen):
    complexity: Complexity
    default_severity: Severity = Severity.minor
    ci_profile: CiProfileName = CiProfileName.normal
    auto_apply: bool = True
    auditor_profile: str | None = None
    high_risk: bool = False
    max_builder_attempts: int = Field(ge=1, le=20)
    max_auditor_attempts: int = Field(ge=0, le=10)
    incident_token_cap: int = Field(ge=1)
    tests_may_change: bool = Field(default=False, description="phases of this category may change tests")
    majors_tolerated: int | None = Field(
        default=None, ge=0, description="major issues tolerated in a tier holding this category (None: tier_budgets)"
    )
    minors_tolerated_per_phase: int | None = Field(
        default=None, ge=0, description="tier minor issues per phase of this category (None: the safety profile's)"
    )
    aging_runs: int | None = Field(default=None, ge=1, description="backlog aging in runs (None: the profile's)")
    aging_tiers: int | None = Field(default=None, ge=1, description="backlog aging in tiers (None: the profile's)")
    ci_max_retries: int | None = Field(
        default=None, ge=0, le=9, description="CI retries after a red try (None: the CI profile's preflight_attempts)"
    )


class BuilderModeRule(Frozen):
    max_files: int | None = Field(default=None, ge=1)
    max_changed_lines: int | None = Field(default=None, ge=1)
    builder_timeout_s: int = Field(default=1800, ge=1)
    extra_attempts: int = Field(default=0, ge=-5, le=5)
    max_builder_attempts: int | None = Field(default=None, ge=1, le=20, description="cap on a phase's attempts")
    ci_profile: CiProfileName = CiProfileName.normal


class SafetyProfileRule(Frozen):
    aging_runs: int = Field(ge=1)
    aging_tiers: int = Field(ge=1)
    ci_profile_floor: CiProfileName
    tier_minor_per_phase: int = Field(ge=0)
    stop_on_not_clean_tier: bool
    max_builder_attempts: int | None = Field(default=None, ge=1, le=20, description="cap on every phase's attempts")
    minor_issues_per_phase: int | None = Field(
        default=None, ge=0, description="run minor-issue cap per phase (None: run_budgets.minor_issues_per_phase)"
    )


class RunBudgetRule(Frozen):
    token_cap: int = Field(ge=1)
    cost_cap_usd: float | None = Field(default=None, gt=0)
    max_phases: int = Field(ge=1)
    minor_issues_per_phase: int = Field(ge=0)
    max_duration_minutes: int = Field(ge=1)
    submit_deadline_minutes: int = Field(
        default=1440, ge=0, description="how long a phase without a builder waits for `doit submit`"
    )


class TierBudgetRule(Frozen):
    token_cap_incident_multiplier: int = Field(ge=1)
    ci_runs_per_phase: int = Field(ge=1)
    max_major_issues: int = Field(ge=0)


class SeverityUpgrade(Frozen):
    """Playbook §7.1: a rule that makes matching issues major (fnmatch globs; every field
    given must match)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", use_enum_values=False, json_schema_extra={"minProperties": 1}
    )

    issue_key: str | None = Field(default=None, min_length=1, description="glob on the issue_key")
    category: str | None = Field(default=None, min_length=1, description="glob on the issue category")
    task_category: str | None = Field(default=None, min_length=1, description="glob on the phase's task_category")

    @model_validator(mode="after")
    def _names_something(self) -> SeverityUpgrade:
        if self.issue_key is None and self.category is None and self.task_category is None:
            raise ValueError("a severity upgrade needs at least one of issue_key, category, task_category")
        return self

    def matches(self, issue_key: str, category: str, task_category: str) -> bool:
        import fnmatch

        pairs = ((self.issue_key, issue_key), (self.category, category), (self.task_category, task_category))
        given = [(glob, value) for glob, value in pairs if glob is not None]
        return bool(given) and all(fnmatch.fnmatchcase(value, glob) for glob, value in given)


class ProjectDefaults(Frozen):
    """Playbook §4.3: per project, the run scope and safety profile new plans start with."""

    safety_profile: SafetyProfile = SafetyProfile.normal
    default_run_scope: RunScope = RunScope.multi_tier

class SandboxRule(Frozen):
    """How untrusted steps (agents, CI steps, static checks) are confined (pipeline.sandbox)."""

    isolation: Literal["auto", "required"] = Field(
        default="auto", description="required: refuse to run a step without the bubblewrap sandbox"
    )
    no_network: list[str] = Field(
        default_factory=list,
        description="steps cut off the network: builder, auditor, ci, static_checks, or a CI step's name",
    )
    writable: list[str] = Field(
        default_factory=list, description="extra paths a step may write (~ expands), e.g. an agent CLI's config dir"
    )


class GateRule(Frozen):
    """Gate checks a workspace may switch off."""

    test_collection: bool = Field(
        default=True,
        description="run the pytest step's collection on the base and the candidate and refuse lost tests",
    )


class Ruleset(Frozen):
    version: int = 1
    categories: dict[str, CategoryRule]
    aliases: dict[str, str] = Field(default_factory=dict)
    builder_modes: dict[BuilderMode, BuilderModeRule]
    default_builder_mode: dict[Complexity, BuilderMode]
    safety_profiles: dict[SafetyProfile, SafetyProfileRule]
    run_budgets: RunBudgetRule
    tier_budgets: TierBudgetRule
    protected_paths: list[str]
    on_policy_violation: Literal["fail_run", "retry"] = "fail_run"
    debt_cleanup: Literal["off", "auto"] = "off"
    sandbox: SandboxRule = Field(default_factory=SandboxRule)
    gate: GateRule = Field(default_factory=GateRule)
    severity_upgrades: list[SeverityUpgrade] = Field(
        default_factory=list, description="issues matching a rule are major (effective severity)"
    )
    project_defaults: ProjectDefaults = Field(default_factory=ProjectDefaults)
    projects: dict[str, ProjectDefaults] = Field(
        default_factory=dict, description="project_id -> its own defaults (a workspace holding several projects)"
    )

    def defaults_for(self, project_id: str | None) -> ProjectDefaults:
        return self.projects.get(project_id or "", self.project_defaults)

    def canonical_category(self, name: str) -> str | None:
        """The category key for a category or a playbook alias, else None."""
        if name in self.categories:
            return name
        return self.aliases.get(name)
