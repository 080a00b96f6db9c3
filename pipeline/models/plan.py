"""The hand-edited plan (runs/<run_id>/plan.yaml, README.md, The plan)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.models.base import Frozen, Ident
from pipeline.models.enums import BuilderMode, CiProfileName, Complexity, RunScope, SafetyProfile


class AgentSpec(Frozen):
    """An agent given inline: a shell command run in the worktree, or a preset with options."""

    command: str | None = Field(
        default=None, description="shell command run in the worktree (with a preset: replaces its command template)"
    )
    preset: str | None = Field(default=None, description="a preset name from profiles/agents.yaml")
    timeout_s: int | None = Field(default=None, ge=1)
    # Preset options (pipeline/data/agents.yaml): used where the preset's CLI can take them.
    model: str | None = Field(default=None, min_length=1, description="model for the preset's CLI ({model})")
    max_turns: int | None = Field(default=None, ge=1, description="turn bound for the preset's CLI ({max_turns})")
    max_cost_usd: float | None = Field(default=None, gt=0, description="spend bound for the preset's CLI")
    args: list[str] = Field(default_factory=list, description="extra arguments appended to the command")


# What a phase may declare in `allows:` (the gate refuses it otherwise).
GitFeature = Literal["submodules", "filters"]


# A preset name ("claude", "codex") or an inline spec.
AgentRef = str | AgentSpec


class Scope(Frozen):
    """gitignore-style globs: the only paths a phase's patch may touch."""

    allow: list[str] = Field(default_factory=lambda: ["**"])
    deny: list[str] = Field(default_factory=list)


class CiStep(Frozen):
    name: str = Field(min_length=1)
    run: str = Field(min_length=1, description="shell line; {junit} becomes a JUnit XML path")
    timeout_s: int = Field(default=900, ge=1)


class CiProfile(Frozen):
    """A verifier profile: static checks gate the patch, steps verify it."""

    static_checks: list[CiStep] = Field(default_factory=list)
    steps: list[CiStep] = Field(default_factory=list)
    preflight_attempts: int = Field(default=3, ge=1, le=10)


class PlanTarget(Frozen):
    repo: str = "."
    base: str | None = None


class PlanAgents(Frozen):
    builder: AgentRef | None = None
    auditor: AgentRef | None = None


class PlanBudgets(Frozen):
    """Optional per-run tightening of the ruleset's run budgets."""

    token_cap: int | None = Field(default=None, ge=1)
    cost_cap_usd: float | None = Field(default=None, gt=0)
    max_phases: int | None = Field(default=None, ge=1)
    max_duration_minutes: int | None = Field(default=None, ge=1)


class ReuseSource(Frozen):
    """Where a reuse phase takes its code from (a curated catalog source)."""

    id: str | None = None
    repo: str = Field(min_length=1, description="repository URL or local path")
    path: str = Field(default="", description="directory or file inside the repository")
    licence: str = Field(min_length=1, description="SPDX licence id; must be whitelisted")
    quality_score: float | None = Field(default=None, ge=0, le=1)
    commit: str | None = Field(default=None, description="reviewed commit to take the code from")


class PlanReuse(Frozen):
    """The reuse decision for one catalog feature, made by `new_run` from the curated catalog."""

    feature: str = Field(min_length=1)
    decision: Literal["fork_and_adapt", "extract_components", "greenfield"]
    match: float = Field(ge=0, le=1, description="share of the feature the source provides")
    budget_modifier: float = Field(
        default=0.0, ge=-0.9, le=1.0, description="fraction added to the incident_token_cap (-0.5 halves it)"
    )
    source: ReuseSource | None = None
    adapt: str = Field(default="", description="what to adapt")
    greenfield_category: str = Field(
        default="feature_implementation",
        min_length=1,
        description="task_category of the feature built from scratch: its incident cap is what the modifier applies to",
    )


class PlanStack(Frozen):
    """The stack profile `new_run` picked for the project type (profiles/stacks.yaml)."""

    profile: str = Field(min_length=1)
    project_type: str = Field(min_length=1)
    budget_modifier: float = Field(
        default=0.0, ge=-0.9, le=1.0, description="fraction added to every phase's incident_token_cap"
    )
    components: dict[str, str] = Field(default_factory=dict)


class PlanPhase(Frozen):
    phase_id: Ident
    name: str = Field(min_length=1)
    description: str = ""
    task_category: str = Field(min_length=1)
    complexity: Complexity | None = None
    builder_mode: BuilderMode | None = None
    scope: Scope = Field(default_factory=Scope)
    builder: AgentRef | None = None
    auditor: AgentRef | None = None
    ci_profile: CiProfileName | None = None
    auto_apply: bool | None = None
    max_builder_attempts: int | None = Field(default=None, ge=1, le=20)
    incident_token_cap: int | None = Field(default=None, ge=1)
    cleans: list[str] = Field(
        default_factory=list, description="backlog issue keys a debt_cleanup phase cleans (added by start_run)"
    )
    reuse: PlanReuse | None = Field(default=None, description="external feature reuse decision")
    tests: Literal["intact", "may_change"] | None = Field(
        default=None,
        description="may_change: this phase may delete, skip or rewrite tests (a declared refactor); "
        "the gate records the changes instead of refusing them",
    )
    allows: list[GitFeature] = Field(
        default_factory=list,
        description="what the gate refuses unless declared: submodules (gitlinks and .gitmodules, "
        "with https/ssh/git URLs only), filters (.gitattributes lines naming a filter= driver)",
    )


class PlanTier(Frozen):
    tier_id: Ident
    name: str = Field(min_length=1)
    description: str = ""
    phases: list[PlanPhase] = Field(min_length=1)


class Plan(Frozen):
    run_id: Ident
    project_id: str = Field(min_length=1)
    description: str = ""
    target: PlanTarget = Field(default_factory=PlanTarget)
    safety_profile: SafetyProfile = SafetyProfile.normal
    run_scope: RunScope = RunScope.multi_tier
    agents: PlanAgents = Field(default_factory=PlanAgents)
    ci: dict[CiProfileName, CiProfile] | None = None
    budgets: PlanBudgets = Field(default_factory=PlanBudgets)
    stack: PlanStack | None = None
    chained_from: Ident | None = Field(
        default=None, description="the run this one continues (a plan split by max_phases)"
    )
    tiers: list[PlanTier] = Field(min_length=1)

    def phases(self) -> list[tuple[PlanTier, PlanPhase]]:
        return [(tier, phase) for tier in self.tiers for phase in tier.phases]
