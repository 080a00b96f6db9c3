"""PLAN_BOOTSTRAP: writing a new plan.yaml (format: README.md, The plan; reuse: docs/architecture.md).

One module on purpose: the bootstrap's decisions (stack, reuse per feature, budget
modifiers) are one pure pipeline read top to bottom; `new_run` wraps it.

A plan comes from one of:

- nothing: a starting plan to edit by hand;
- `--template T`: a saved plan (catalog/templates/<project_type>/<name>.yaml);
- `--project-type X --features a,b`: the stack profile serving X (profiles/stacks.yaml)
  and, per feature, its best whitelisted catalog source (catalog/features.yaml), decided by
  match: >= 80 % fork and adapt (incident budget -50 %), 40-80 % extract components (-25 %),
  below or none: greenfield. Reuse phases are `external_feature_reuse` phases with a
  `reuse:` block (source repo, path, licence, quality, what to adapt); every decision is in
  the plan, and in its header comments, for a person to read and edit before the run;
- `--from-md F`: a markdown plan normalised into plan data (pipeline.plan.markdown).


"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import catalog as catalog_files
from pipeline.config.workspace import Workspace
from pipeline.core import yamlio
from pipeline.core.errors import InvalidInput
from pipeline.core.schemas import did_you_mean
from pipeline.models.base import ID_PATTERN
from pipeline.models.catalog import (
    CandidateSource,
    Catalog,
    Feature,
    QualityThresholds,
    ReuseDecision,
    StackProfile,
    StackProfiles,
)
from pipeline.plan import markdown as mdplan
from pipeline.policy import licences
from pipeline.store.rundir import RunStore

TEMPLATE_HEADER = """\
# Plan of run {run_id}. Edit it by hand, then `doit validate --run {run_id}`
# and `doit start_run --run {run_id}`. start_run freezes it: later edits are refused.
"""

BUILDER_PLACEHOLDER = 'my-agent --prompt-file "$AUTOPACK_PHASE_SPEC"'
AUDITOR_PLACEHOLDER = 'my-auditor --profile "$AUTOPACK_AUDITOR_PROFILE" --patch "$AUTOPACK_PATCH"'
# Where a reuse phase may record its attributions, besides the stack profile's scope.
NOTICE_GLOBS = ("NOTICE*", "THIRD_PARTY*", "LICENSES/**")
REUSE_CATEGORY = "external_feature_reuse"
INTEGRATION_CATEGORY = "feature_implementation"


def default_plan(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "project_id": "my-project",
        "description": "What this run should achieve.",
        "target": {"repo": ".", "base": None},
        "safety_profile": "normal",
        "run_scope": "multi_tier",
        "agents": {"builder": {"command": BUILDER_PLACEHOLDER}},
        "tiers": [
            {
                "tier_id": "T1",
                "name": "First tier",
                "phases": [
                    {
                        "phase_id": "F1.1",
                        "name": "First phase",
                        "description": "Free text handed to the builder.\n",
                        "task_category": "feature_scaffolding",
                        "complexity": "medium",
                        "scope": {"allow": ["**"]},
                    }
                ],
            }
        ],
    }


# --------------------------------------------------------------------------- reuse decisions


@dataclass(frozen=True)
class Decision:
    """What planning decided for one requested feature."""

    feature: str
    decision: ReuseDecision
    match: float
    budget_modifier: float
    source: CandidateSource | None
    reason: str


def decide(match: float, thresholds: QualityThresholds) -> tuple[ReuseDecision, float]:
    """The reuse decision and its budget modifier for a source's match (docs/architecture.md, Reuse)."""
    if match >= thresholds.fork_match:
        return "fork_and_adapt", thresholds.fork_budget_modifier
    if match >= thresholds.extract_match:
        return "extract_components", thresholds.extract_budget_modifier
    return "greenfield", 0.0


def usable_sources(feature: Feature, catalog: Catalog, profile_name: str) -> list[CandidateSource]:
    """The feature's sources a zero-intervention run may use for this stack profile."""
    th = catalog.thresholds
    return [
        s
        for s in feature.sources
        if (not s.compatible_stacks or profile_name in s.compatible_stacks)
        and licences.expression_allowed(s.licence, catalog.licence_policy.allowed)
        and licences.expression_allowed(s.licence, licences.ALLOWED)
        and s.quality_score >= th.min_quality_score
        and (s.has_tests or not th.require_tests)
    ]


def choose(name: str, feature: Feature, catalog: Catalog, profile_name: str, profile: StackProfile) -> Decision:
    """The best usable source (highest match; the profile's preference, then quality break
    ties) and the decision its match leads to."""
    usable = usable_sources(feature, catalog, profile_name)
    if not usable:
        reason = (
            f"no whitelisted source for stack {profile_name}"
            if feature.sources
            else "the catalog lists no source"
        )
        return Decision(name, "greenfield", 0.0, 0.0, None, reason)
    preferred = set(profile.preferred_sources)
    best = max(usable, key=lambda s: (s.match, s.id in preferred, s.quality_score, s.id))
    decision, modifier = decide(best.match, catalog.thresholds)
    th = catalog.thresholds
    if decision == "greenfield":
        reason = f"best source {best.id} matches {best.match:.0%} < {th.extract_match:.0%}"
        return Decision(name, decision, best.match, 0.0, None, reason)
    bound = th.fork_match if decision == "fork_and_adapt" else th.extract_match
    reason = f"{best.id} ({best.licence}, quality {best.quality_score:.2f}) matches {best.match:.0%} >= {bound:.0%}"
    return Decision(name, decision, best.match, modifier, best, reason)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Bootstrap:
    plan: dict[str, Any]
    profile: str
    decisions: list[Decision]

    def header(self, run_id: str) -> str:
        lines = [TEMPLATE_HEADER.format(run_id=run_id).rstrip("\n")]
        stack = self.plan["stack"]
        parts = ", ".join(f"{k} {v}" for k, v in stack["components"].items())
        lines.append(f"# Project type {stack['project_type']} -> stack profile {self.profile} ({parts}),")
        lines.append(f"# budget modifier {stack['budget_modifier']:+.0%} on every phase.")
        lines.append("# Reuse decisions (match -> decision, incident budget); edit the `reuse:` blocks to change them:")
        width = max(len(d.feature) for d in self.decisions)
        for d in self.decisions:
            lines.append(f"#   {d.feature:<{width}}  {d.decision:<18} {d.budget_modifier:>+5.0%}  {d.reason}")
        return "\n".join(lines) + "\n"


def parse_features(features: str) -> list[str]:
    names = [f.strip() for f in features.split(",") if f.strip()]
    if not names:
        raise InvalidInput(
            "--features lists no feature", "pass catalog feature names, e.g. --features auth_basic,rate_limiting"
        )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"feature {name!r} is requested twice", "name each feature once in --features")
        seen.add(name)
    return names


def bootstrap_plan(
    stacks: StackProfiles,
    catalog: Catalog,
    run_id: str,
    project_type: str,
    features: Sequence[str],
    description: str = "",
) -> Bootstrap:
    """The plan for a project type and its requested features (pure)."""
    profile_name, profile = catalog_files.profile_for(stacks, project_type)
    unknown = [f for f in features if f not in catalog.features]
    if unknown:
        known = sorted(catalog.features)
        hints = "; ".join(f"{f!r}{did_you_mean(f, known)}" for f in unknown)
        raise InvalidInput(
            f"unknown feature(s) {hints}",
            f"use catalog features ({', '.join(known)}) or add them to catalog/features.yaml",
        )
    decisions = {name: choose(name, catalog.features[name], catalog, profile_name, profile) for name in features}
    tiers = _tiers(catalog, profile, features, decisions)
    components = {k: v for k, v in profile.stack.model_dump().items() if v}
    stack_text = ", ".join(components.values()) or profile_name
    plan: dict[str, Any] = {
        "run_id": run_id,
        "project_id": project_type,
        "description": description.strip()
        or f"Project type {project_type} on the {profile_name} stack ({stack_text}), "
        f"with the features {', '.join(features)}.",
        "target": {"repo": ".", "base": None},
        "safety_profile": "normal",
        "run_scope": "multi_tier",
        "agents": {"builder": {"command": BUILDER_PLACEHOLDER}, "auditor": {"command": AUDITOR_PLACEHOLDER}},
        "stack": {
            "profile": profile_name,
            "project_type": project_type,
            "budget_modifier": profile.budget_modifier,
            "components": components,
        },
        "tiers": tiers,
    }
    return Bootstrap(plan, profile_name, [decisions[f] for f in features])


def _tiers(
    catalog: Catalog, profile: StackProfile, features: Sequence[str], decisions: dict[str, Decision]
) -> list[dict[str, Any]]:
    """Combinations fully requested first (one tier each, with their integration phase), then
    the other features by category, in the order they were asked for."""
    groups: list[tuple[str, str, str, list[str]]] = []  # (combination or "", tier name, description, features)
    placed: set[str] = set()
    for cname, combination in catalog.combinations.items():
        members = [f for f in features if f in combination.features]
        if len(members) == len(combination.features) and not placed & set(members):
            groups.append((cname, cname.replace("_", " ").capitalize(), combination.description, members))
            placed |= set(members)
    by_category: dict[str, list[str]] = {}
    for name in features:
        if name not in placed:
            by_category.setdefault(catalog.features[name].category, []).append(name)
    for category, members in by_category.items():
        groups.append(("", f"{category.replace('_', ' ').capitalize()} features", "", members))
    tiers = []
    for t, (cname, tier_name, description, members) in enumerate(groups, start=1):
        integration = catalog.combinations[cname].integration if cname else ""
        phases = [
            _phase(f"F{t}.{p}", name_, catalog.features[name_], profile, decisions[name_])
            for p, name_ in enumerate(members, start=1)
        ]
        if integration:
            phases.append(_integration_phase(f"F{t}.{len(phases) + 1}", cname, members, integration, profile))
        tier: dict[str, Any] = {"tier_id": f"T{t}", "name": tier_name}
        if description:
            tier["description"] = description
        tier["phases"] = phases
        tiers.append(tier)
    return tiers


def _scope(profile: StackProfile, extra: Sequence[str] = ()) -> dict[str, list[str]]:
    return {"allow": [*profile.scope, *(g for g in extra if g not in profile.scope)]}


def _phase(phase_id: str, name: str, feature: Feature, profile: StackProfile, d: Decision) -> dict[str, Any]:
    reuse: dict[str, Any] = {
        "feature": name,
        "decision": d.decision,
        "match": d.match,
        "budget_modifier": d.budget_modifier,
        "greenfield_category": feature.task_category,
    }
    if d.source is None:
        phase: dict[str, Any] = {
            "phase_id": phase_id,
            "name": f"Build {name}",
            "description": f"{feature.description.strip()}\n\nGreenfield: {d.reason}; write it from scratch.\n",
            "task_category": feature.task_category,
            "complexity": feature.complexity.value,
            "scope": _scope(profile),
        }
        if profile.ci_profile.value == "strict":
            phase["ci_profile"] = "strict"
        phase["reuse"] = reuse
        return phase
    source = d.source
    reuse["source"] = {
        "id": source.id,
        "repo": source.repo,
        "path": source.path,
        "licence": source.licence,
        "quality_score": source.quality_score,
        **({"commit": source.commit} if source.commit else {}),
    }
    reuse["adapt"] = source.adapt
    how = "Fork and adapt" if d.decision == "fork_and_adapt" else "Extract the components needed from"
    at = f"{source.path} of {source.repo}" if source.path else source.repo
    commit = f", commit {source.commit}" if source.commit else ""
    lines = [
        feature.description.strip(),
        "",
        f"{how} {at} (licence {source.licence}{commit}, quality {source.quality_score:.2f}, "
        f"match {d.match:.0%}).",
    ]
    if source.adapt:
        lines.append(f"Adapt: {source.adapt.strip()}")
    lines += [
        "",
        "Licence rules: keep the licence header of every copied file, or add an entry to "
        f"THIRD_PARTY_NOTICES.md naming {source.repo}, the commit taken and the licence "
        f"({source.licence}). Copy nothing under any other licence.",
    ]
    return {
        "phase_id": phase_id,
        "name": f"Reuse {name} from {source.id}",
        "description": "\n".join(lines) + "\n",
        "task_category": REUSE_CATEGORY,
        "scope": _scope(profile, NOTICE_GLOBS),
        "reuse": reuse,
    }


def _integration_phase(
    phase_id: str, combination: str, members: Sequence[str], integration: str, profile: StackProfile
) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "phase_id": phase_id,
        "name": f"Integrate {' + '.join(members)}",
        "description": f"{integration.strip()}\n\n(feature combination {combination})\n",
        "task_category": INTEGRATION_CATEGORY,
        "complexity": "medium",
        "scope": _scope(profile),
    }
    if profile.ci_profile.value == "strict":
        phase["ci_profile"] = "strict"
    return phase


# --------------------------------------------------------------------------- templates


def template_path(workspace: Path, template: str, project_type: str = "") -> Path:
    """Where template `template` lives: a path to a YAML file, `<type>/<name>`, or `<name>`
    under catalog/templates/<project_type>/ (found in any type's directory when unique)."""
    given = Path(template)
    if given.suffix in (".yaml", ".yml"):
        return given if given.is_absolute() or given.exists() else Path(workspace) / given
    root = Path(workspace) / catalog_files.TEMPLATES_DIR
    if project_type:
        return root / project_type / f"{template}.yaml"
    direct = root / f"{template}.yaml"
    if direct.exists() or "/" in template:
        return direct
    found = sorted(root.glob(f"*/{template}.yaml"))
    if len(found) > 1:
        kinds = ", ".join(p.parent.name for p in found)
        raise InvalidInput(
            f"template {template!r} exists for several project types ({kinds})",
            f"name one: --template {found[0].parent.name}/{template}, or pass --project-type",
        )
    return found[0] if found else direct


def template_plan(workspace: Path, template: str, run_id: str, project_type: str = "") -> dict[str, Any]:
    path = template_path(workspace, template, project_type)
    if not path.exists():
        raise InvalidInput(
            f"template {template} not found at {path}",
            "pass a path to a plan YAML, or a name under catalog/templates/<project_type>/ "
            "(save one with `doit save_template --run R --name N`)",
        )
    data = yamlio.load_fast(path)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a template must be a plan mapping", "start from `doit new_run` output")
    return {**yamlio.to_plain(data), "run_id": run_id}


def save_template(workspace: Path, run_id: str, name: str, project_type: str = "") -> Path:
    """Save run R's plan as catalog/templates/<project_type>/<name>.yaml (comments kept)."""
    import re

    from pipeline.plan.file import load_plan

    if not re.match(ID_PATTERN, name):
        raise InvalidInput(f"template name {name!r} is not valid", "use letters, digits, '.', '_', '-'")
    store = RunStore(workspace, run_id)
    if not store.plan_path.exists():
        raise InvalidInput(
            f"run {run_id} has no plan at {store.plan_path}", f"create it with `doit new_run --run {run_id}`"
        )
    plan, rt = load_plan(store.plan_path)
    kind = project_type or (plan.stack.project_type if plan.stack else "")
    if not kind:
        raise InvalidInput(
            f"the plan of run {run_id} names no project type", "pass --project-type, e.g. --project-type api_service"
        )
    if not re.match(r"^[a-z][a-z0-9_]{0,63}$", kind):
        raise InvalidInput(f"project type {kind!r} is not valid", "use lower snake case, e.g. api_service")
    dest = Path(workspace) / catalog_files.TEMPLATES_DIR / kind / f"{name}.yaml"
    if dest.exists():
        raise InvalidInput(f"{dest}: a template already exists; not overwriting it", "pick another name, or delete it")
    yamlio.set_value(rt, ("run_id",), name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    yamlio.dump_roundtrip(rt, dest)
    return dest


# --------------------------------------------------------------------------- new_run


def _description(text: str, workspace: Path) -> str:
    """--description: a file's text when it names a file, else the text itself."""
    if not text:
        return ""
    path = Path(text) if Path(text).is_absolute() else Path(workspace) / text
    try:
        is_file = len(text) < 1024 and "\n" not in text and path.is_file()
    except OSError:  # a sentence too long to be a file name
        is_file = False
    if is_file:
        try:
            return path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{text}: not UTF-8 text", f"save {text} as UTF-8") from exc
    return text.strip()


def _only_one(template: str, project_type: str, features: str, from_md: str) -> None:
    given = [
        name
        for name, value in (("--template", template), ("--features", features), ("--from-md", from_md))
        if value
    ]
    if len(given) > 1:
        raise InvalidInput(f"{' and '.join(given)} cannot be combined", "a plan starts from one of them: pick one")
    if project_type and not (features or template):
        raise InvalidInput(
            "--project-type needs --features (or --template)",
            f"e.g. `doit new_run --run R --project-type {project_type} --features auth_basic,rate_limiting`",
        )


def plan_from_markdown(ws: Workspace, source: str, run_id: str) -> dict[str, Any]:
    path = Path(source) if Path(source).is_absolute() else ws.root / source
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InvalidInput(f"{source}: file not found", "pass the path of a markdown plan to --from-md") from exc
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{source}: not UTF-8 text", f"save {source} as UTF-8") from exc
    ruleset = ws.ruleset.ruleset
    data = mdplan.parse_markdown(text, source, run_id, categories={*ruleset.categories, *ruleset.aliases})
    defaults = default_plan(run_id)
    plan: dict[str, Any] = {"run_id": run_id}
    for key in ("project_id", "description", "target", "safety_profile", "run_scope", "agents"):
        plan[key] = data.get(key, defaults[key])
    plan["tiers"] = data["tiers"]
    return plan


def new_run(
    workspace: Path | Workspace,
    run_id: str,
    template: str = "",
    project_type: str = "",
    features: str = "",
    from_md: str = "",
    description: str = "",
) -> Path:
    from pipeline.plan.file import write_new_plan

    ws = Workspace.of(workspace)
    workspace = ws.root
    store = RunStore(workspace, run_id)
    _only_one(template, project_type, features, from_md)
    header = TEMPLATE_HEADER.format(run_id=run_id)
    text = _description(description, workspace)
    if from_md:
        data = plan_from_markdown(ws, from_md, run_id)
        header += f"# Normalised from {from_md}.\n"
    elif template:
        data = template_plan(workspace, template, run_id, project_type)
    elif features:
        if not project_type:
            raise InvalidInput(
                "--features needs --project-type", "e.g. --project-type api_service --features auth_basic"
            )
        loaded = ws.catalog
        boot = bootstrap_plan(loaded.stacks, loaded.catalog, run_id, project_type, parse_features(features), text)
        data, header = boot.plan, boot.header(run_id)
    else:
        data = default_plan(run_id)
    if text:
        data["description"] = text
    _apply_project_defaults(ws, data)
    write_new_plan(store.plan_path, data, header=header)
    return store.plan_path


def _apply_project_defaults(ws: Workspace, data: dict[str, Any]) -> None:
    """The project's safety_profile and run scope from the ruleset (playbook §4.3), where
    the plan's source (template, markdown, bootstrap) left the built-in default."""
    defaults = ws.ruleset.ruleset.defaults_for(data.get("project_id"))
    if data.get("safety_profile", "normal") == "normal":
        data["safety_profile"] = defaults.safety_profile.value
    if data.get("run_scope", "multi_tier") == "multi_tier":
        data["run_scope"] = defaults.default_run_scope.value


def reuse_summary(plan_path: Path) -> list[str]:
    """One line per phase with a reuse decision, for `doit new_run` to print."""
    data = yamlio.load_fast(plan_path)
    out = []
    for tier in data.get("tiers") or []:
        for phase in tier.get("phases") or []:
            reuse = phase.get("reuse")
            if not isinstance(reuse, dict):
                continue
            source = reuse.get("source") or {}
            origin = f" from {source.get('repo')} ({source.get('licence')})" if source else ""
            out.append(
                f"{phase['phase_id']} {reuse['feature']}: {reuse['decision']}{origin}, "
                f"match {reuse['match']:.0%}, budget {reuse['budget_modifier']:+.0%}"
            )
    return out
