"""StrategyEngine: plan + ruleset -> the frozen strategy of one run (pure, no I/O).

Every chosen value records why (`PhaseStrategy.why`): "default" (built-in ruleset),
"category", "profile" (safety profile or builder mode), "override" (workspace ruleset),
"plan" (the plan said so), "risk" (raised by a high-risk or protected-adjacent scope).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pipeline.core.errors import InvalidInput
from pipeline.models.enums import CiProfileName, Complexity, SafetyProfile, Severity
from pipeline.models.plan import AgentRef, AgentSpec, CiProfile, Plan, PlanPhase, PlanTier
from pipeline.models.ruleset import BuilderModeRule, CategoryRule, Ruleset, SafetyProfileRule
from pipeline.models.strategy import PhaseStrategy, RunBudget, Strategy, TierBudget
from pipeline.policy import licences

if TYPE_CHECKING:  # `doit validate` imports this module; the catalog models only when a phase reuses code
    from pipeline.models.catalog import Catalog


def agent_spec(ref: AgentRef | None) -> AgentSpec | None:
    if ref is None or isinstance(ref, AgentSpec):
        return ref
    return AgentSpec(preset=ref)


def _origin(overridden: frozenset[str], key: str, fallback: str = "default") -> str:
    return "override" if key in overridden else fallback


def _scope_is_protected_adjacent(allow: list[str], protected: list[str]) -> bool:
    """A scope that reaches into a protected path's top-level directory (e.g. `.github/**`
    next to `.github/workflows/`) deserves strict CI even though the gate blocks the path
    itself."""
    import fnmatch

    import pathspec

    spec = pathspec.PathSpec.from_lines("gitignore", allow)
    # The first directory of each anchored pattern: a scope deeper inside a protected
    # path's top directory (`.github/actions/**`, `schemas/extra/**`) is just as adjacent,
    # though it does not match the `<top>/x` probe below.
    heads = [a.strip("/").split("/")[0] for a in allow if "/" in a.strip("/")]
    for pattern in protected:
        top = pattern.strip("/").split("/")[0]
        if not top or top in ("**", "*") or allow == ["**"]:
            continue
        if spec.match_file(f"{top}/x") or any(h != "**" and fnmatch.fnmatchcase(top, h) for h in heads):
            return True
    return False


def compile_phase(
    plan: Plan,
    tier: PlanTier,
    phase: PlanPhase,
    index: int,
    ruleset: Ruleset,
    overridden: frozenset[str],
) -> PhaseStrategy:
    category = ruleset.canonical_category(phase.task_category)
    if category is None:
        raise InvalidInput(
            f"phase {phase.phase_id}: unknown task_category '{phase.task_category}'",
            f"use one of: {', '.join(sorted([*ruleset.categories, *ruleset.aliases]))}",
        )
    rule: CategoryRule = ruleset.categories[category]
    key = f"categories.{category}"
    why: dict[str, str] = {"task_category": "plan" if category == phase.task_category else "alias"}

    complexity = phase.complexity or rule.complexity
    why["complexity"] = "plan" if phase.complexity else _origin(overridden, f"{key}.complexity", "category")
    mode = phase.builder_mode or ruleset.default_builder_mode[complexity]
    why["builder_mode"] = "plan" if phase.builder_mode else "default"
    mode_rule = ruleset.builder_modes[mode]

    ci_profile, why["ci_profile"] = _ci_profile(plan, phase, complexity, rule, mode_rule, ruleset, overridden, key)
    auto_apply = rule.auto_apply and (phase.auto_apply is not False)
    why["auto_apply"] = (
        "plan"
        if phase.auto_apply is False and rule.auto_apply
        else _origin(overridden, f"{key}.auto_apply", "category")
    )
    has_builder = (phase.builder or plan.agents.builder) is not None
    tests_may_change = phase.tests == "may_change" or (phase.tests is None and rule.tests_may_change)
    why["tests_may_change"] = "plan" if phase.tests else _origin(overridden, f"{key}.tests_may_change", "category")
    profile = ruleset.safety_profiles[plan.safety_profile]
    attempts, why["max_builder_attempts"] = _builder_attempts(phase, rule, mode_rule, profile, overridden, key)
    minors = profile.tier_minor_per_phase
    if rule.minors_tolerated_per_phase is not None and rule.minors_tolerated_per_phase < minors:
        minors, why["minors_tolerated"] = rule.minors_tolerated_per_phase, "risk" if rule.high_risk else "category"
    else:
        why["minors_tolerated"] = "profile"
    cap = phase.incident_token_cap or rule.incident_token_cap
    why["incident_token_cap"] = (
        "plan" if phase.incident_token_cap else _origin(overridden, f"{key}.incident_token_cap", "category")
    )
    problems = reuse_problems(phase)
    if problems:
        raise InvalidInput(problems[0], "pick a whitelisted source for the phase, or make it greenfield")
    cap = _reuse_base_cap(phase, ruleset, cap, why)
    cap, modifier = _budget_modified(plan, phase, cap, why)
    why["max_auditor_attempts"] = _origin(overridden, f"{key}.max_auditor_attempts", "category")
    why["auditor_profile"] = _origin(overridden, f"{key}.auditor_profile", "category")
    return PhaseStrategy(
        phase_id=phase.phase_id,
        tier_id=tier.tier_id,
        index=index,
        name=phase.name,
        task_category=category,
        requested_category=phase.task_category,
        complexity=complexity,
        builder_mode=mode,
        high_risk=rule.high_risk,
        default_severity=rule.default_severity,
        ci_profile=ci_profile,
        auto_apply=auto_apply,
        auditor_profile=rule.auditor_profile,
        max_builder_attempts=attempts,
        ci_max_retries=rule.ci_max_retries,
        tests_may_change=tests_may_change,
        allows=sorted(set(phase.allows)),
        submit_deadline_minutes=None if has_builder else ruleset.run_budgets.submit_deadline_minutes,
        minors_tolerated=minors,
        majors_tolerated=rule.majors_tolerated,
        max_auditor_attempts=rule.max_auditor_attempts,
        incident_token_cap=cap,
        builder_timeout_s=mode_rule.builder_timeout_s,
        max_files=mode_rule.max_files,
        max_changed_lines=mode_rule.max_changed_lines,
        scope_allow=list(phase.scope.allow),
        scope_deny=list(phase.scope.deny),
        builder=agent_spec(phase.builder or plan.agents.builder),
        auditor=agent_spec(phase.auditor or plan.agents.auditor),
        why=why,
        cleans=list(phase.cleans),
        reuse=phase.reuse,
        budget_modifier=modifier,
        allowed_licences=list(licences.ALLOWED) if category in licences.EXTERNAL_CODE_CATEGORIES else [],
    )


def _builder_attempts(
    phase: PlanPhase,
    rule: CategoryRule,
    mode_rule: BuilderModeRule,
    profile: SafetyProfileRule,
    overridden: frozenset[str],
    key: str,
) -> tuple[int, str]:
    """The category's attempts, tightened by the builder mode and the safety profile
    (playbook §6, §8.2): a mode's extra attempts never reach a high-risk phase, and the
    mode's and the profile's caps only lower the number. A plan's own value, and a value
    the workspace ruleset sets for the category, are explicit choices and are kept."""
    if phase.max_builder_attempts:
        return phase.max_builder_attempts, "plan"
    if f"{key}.max_builder_attempts" in overridden:
        return rule.max_builder_attempts, "override"
    extra = min(mode_rule.extra_attempts, 0) if rule.high_risk else mode_rule.extra_attempts
    attempts = max(1, rule.max_builder_attempts + extra)
    origin = "profile" if extra else _origin(overridden, f"{key}.max_builder_attempts", "category")
    for cap in (mode_rule.max_builder_attempts, profile.max_builder_attempts):
        if cap is not None and cap < attempts:
            attempts, origin = cap, "profile"
    return attempts, origin


def reuse_problems(phase: PlanPhase) -> list[str]:
    """What makes a phase's `reuse:` block unusable in a zero-intervention run."""
    reuse = phase.reuse
    if reuse is None:
        return []
    out = []
    if reuse.decision != "greenfield" and reuse.source is None:
        out.append(f"phase {phase.phase_id}: reuse decision {reuse.decision} names no source (repo, path, licence)")
    if reuse.source is not None and not licences.expression_allowed(reuse.source.licence):
        out.append(
            f"phase {phase.phase_id}: source {reuse.source.repo} is licensed {reuse.source.licence}, "
            f"refused in zero-intervention runs (allowed: {', '.join(licences.ALLOWED)})"
        )
    return out


def uncatalogued_sources(plan: Plan, catalog: Catalog) -> list[str]:
    """Reuse sources the curated catalog does not list for the phase's feature (playbook:
    only pre-whitelisted repositories are taken in zero-intervention runs). A source
    matches a catalog entry by repository and licence (and id, when the plan names one)."""
    out = []
    for _, phase in plan.phases():
        reuse = phase.reuse
        if reuse is None or reuse.source is None:
            continue
        src = reuse.source
        feature = catalog.features.get(reuse.feature)
        listed = feature is not None and any(
            c.repo == src.repo and c.licence == src.licence and (src.id is None or c.id == src.id)
            for c in feature.sources
        )
        if not listed:
            out.append(
                f"phase {phase.phase_id}: source {src.repo} ({src.licence}) is not in the curated catalog "
                f"for feature '{reuse.feature}'"
            )
    return out


def _reuse_base_cap(phase: PlanPhase, ruleset: Ruleset, cap: int, why: dict[str, str]) -> int:
    """A reuse phase's budget starts from the greenfield budget of the same feature (the
    incident cap of `reuse.greenfield_category`), not from its own high-risk category:
    taking code must never be granted more than writing it (playbook §6, §9.3)."""
    reuse = phase.reuse
    if reuse is None or reuse.decision == "greenfield" or phase.incident_token_cap:
        return cap
    category = ruleset.canonical_category(reuse.greenfield_category)
    if category is None:
        raise InvalidInput(
            f"phase {phase.phase_id}: reuse.greenfield_category '{reuse.greenfield_category}' is not a task_category",
            f"use one of: {', '.join(sorted([*ruleset.categories, *ruleset.aliases]))}",
        )
    base = ruleset.categories[category].incident_token_cap
    why["reuse_base"] = f"greenfield {category}: {base}"
    return base


def _budget_modified(plan: Plan, phase: PlanPhase, cap: int, why: dict[str, str]) -> tuple[int, float]:
    """The incident cap after the reuse decision's and the stack profile's budget modifiers
    (docs/architecture.md, Reuse); a cap the plan sets itself is kept as written."""
    parts: list[tuple[str, str, float]] = []
    if phase.reuse is not None and phase.reuse.budget_modifier:
        r = phase.reuse
        parts.append(("reuse", f"{r.decision} (match {r.match:.0%})", r.budget_modifier))
    if plan.stack is not None and plan.stack.budget_modifier:
        parts.append(("stack", f"stack {plan.stack.profile}", plan.stack.budget_modifier))
    if not parts:
        return cap, 0.0
    shown = "; ".join(f"{label} {value:+.0%}" for _, label, value in parts)
    if phase.incident_token_cap:
        why["budget_modifier"] = f"{shown}: not applied, the plan sets incident_token_cap"
        return cap, 0.0
    factor = 1.0
    for _, _, value in parts:
        factor *= 1.0 + value
    modified = max(1, round(cap * factor))
    why["incident_token_cap"] = "+".join(origin for origin, _, _ in parts)
    why["budget_modifier"] = f"{shown}: {cap} -> {modified}"
    return modified, round(factor - 1.0, 4)


def _ci_profile(
    plan: Plan,
    phase: PlanPhase,
    complexity: Complexity,
    rule: CategoryRule,
    mode_rule: BuilderModeRule,
    ruleset: Ruleset,
    overridden: frozenset[str],
    key: str,
) -> tuple[CiProfileName, str]:
    """The strictest of: category, plan, safety-profile floor, builder mode, complexity,
    risk (playbook §10.1: task_category, complexity, safety_profile and risk decide)."""
    strict = CiProfileName.strict
    if rule.high_risk:
        return strict, "risk"
    if ruleset.safety_profiles[plan.safety_profile].ci_profile_floor == strict:
        return strict, "profile"
    if complexity == Complexity.high:
        return strict, "complexity"
    if mode_rule.ci_profile == strict:
        return strict, "profile"
    if _scope_is_protected_adjacent(list(phase.scope.allow), ruleset.protected_paths):
        return strict, "risk"
    if phase.ci_profile == strict:
        return strict, "plan"
    return rule.ci_profile, _origin(overridden, f"{key}.ci_profile", "category")


def compile_budgets(plan: Plan, ruleset: Ruleset, phases: list[PhaseStrategy]) -> tuple[RunBudget, list[TierBudget]]:
    rb = ruleset.run_budgets
    n = len(phases)
    profile = ruleset.safety_profiles[plan.safety_profile]
    minor_per_phase = min(
        rb.minor_issues_per_phase,
        rb.minor_issues_per_phase if profile.minor_issues_per_phase is None else profile.minor_issues_per_phase,
    )
    # The plan may only tighten the ruleset's cost cap, as with every other run budget
    # (it used to replace it, so a plan could raise a project-wide cap).
    cost_caps = [c for c in (plan.budgets.cost_cap_usd, rb.cost_cap_usd) if c is not None]
    run_budget = RunBudget(
        token_cap=min(rb.token_cap, plan.budgets.token_cap or rb.token_cap),
        cost_cap_usd=min(cost_caps) if cost_caps else None,
        max_phases=min(rb.max_phases, plan.budgets.max_phases or rb.max_phases),
        max_minor_issues_total=minor_per_phase * n,
        max_duration_minutes=min(rb.max_duration_minutes, plan.budgets.max_duration_minutes or rb.max_duration_minutes),
    )
    tb = ruleset.tier_budgets
    tiers = []
    for tier in plan.tiers:
        members = [p for p in phases if p.tier_id == tier.tier_id]
        tiers.append(
            TierBudget(
                tier_id=tier.tier_id,
                phase_ids=[p.phase_id for p in members],
                token_cap=tb.token_cap_incident_multiplier * sum(p.incident_token_cap for p in members),
                ci_run_cap=tb.ci_runs_per_phase * len(members),
                max_minor_issues=sum(p.minors_tolerated for p in members),
                max_major_issues=min(
                    [tb.max_major_issues, *(p.majors_tolerated for p in members if p.majors_tolerated is not None)]
                ),
            )
        )
    return run_budget, tiers


def _route_aged(ps: PhaseStrategy, aged: Mapping[str, Severity], aged_paths: Mapping[str, list[str]]) -> PhaseStrategy:
    """Aged issues are major for routing (playbook §5.3): a debt phase that cleans one runs
    strict CI and goes to the auditor before apply; a phase whose scope covers the code an
    aged issue points at runs strict CI."""
    if any(key in aged for key in ps.cleans):
        why = {**ps.why, "ci_profile": "aging", "auto_apply": "aging"}
        return ps.model_copy(update={"ci_profile": CiProfileName.strict, "auto_apply": False, "why": why})
    paths = [p for key in aged for p in aged_paths.get(key, [])]
    if ps.ci_profile == CiProfileName.strict or not paths or not _in_scope(ps, paths):
        return ps
    return ps.model_copy(update={"ci_profile": CiProfileName.strict, "why": {**ps.why, "ci_profile": "aging"}})


def _in_scope(ps: PhaseStrategy, paths: list[str]) -> bool:
    import pathspec

    allow = pathspec.PathSpec.from_lines("gitignore", ps.scope_allow)
    deny = pathspec.PathSpec.from_lines("gitignore", ps.scope_deny)
    return any(allow.match_file(p) and not deny.match_file(p) for p in paths)


def compile_strategy(
    plan: Plan,
    ruleset: Ruleset,
    *,
    plan_sha256: str,
    ruleset_sha256: str,
    ci_profiles: Mapping[CiProfileName, CiProfile],
    overridden: frozenset[str] = frozenset(),
    aged_issue_keys: Mapping[str, Severity] | None = None,
    aged_paths: Mapping[str, list[str]] | None = None,
) -> Strategy:
    phases = [
        compile_phase(plan, tier, phase, i, ruleset, overridden)
        for i, (tier, phase) in enumerate(plan.phases(), start=1)
    ]
    run_budget, tiers = compile_budgets(plan, ruleset, phases)
    if len(phases) > run_budget.max_phases:
        raise InvalidInput(
            f"plan {plan.run_id} has {len(phases)} phases; max_phases is {run_budget.max_phases}",
            "start_run splits such a plan into chained runs by tier; compile the strategy after the split",
        )
    aged = dict(aged_issue_keys or {})
    phases = [_route_aged(ps, aged, aged_paths or {}) for ps in phases]
    profile = ruleset.safety_profiles[plan.safety_profile]
    return Strategy(
        run_id=plan.run_id,
        plan_sha256=plan_sha256,
        ruleset_sha256=ruleset_sha256,
        safety_profile=plan.safety_profile,
        run_scope=plan.run_scope,
        run_budget=run_budget,
        tiers=tiers,
        phases=phases,
        protected_paths=list(ruleset.protected_paths),
        ci_profiles=dict(ci_profiles),
        on_policy_violation=ruleset.on_policy_violation,
        aging_runs=profile.aging_runs,
        aging_tiers=profile.aging_tiers,
        stop_on_not_clean_tier=profile.stop_on_not_clean_tier or plan.safety_profile == SafetyProfile.safety_critical,
        effective_severity=dict(aged_issue_keys or {}),
        severity_upgrades=list(ruleset.severity_upgrades),
        sandbox=ruleset.sandbox,
        gate=ruleset.gate,
    )
