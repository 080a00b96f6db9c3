"""Stack profiles and the curated feature catalog: loading and their own rules.

- `profiles/stacks.yaml`: project types, and per stack profile the types it serves, its
  stack, preferred catalog sources, budget modifier and default CI profile. Every declared
  project type maps to exactly one profile.
- `catalog/features.yaml`: features, their candidate sources (repository, path, SPDX
  licence, quality, activity, tests, compatible stacks, match), feature combinations, the
  licence policy and the quality thresholds.

A workspace's file, when present, is the whole file (it replaces the built-in one in
pipeline/data; copy that to start). Both are hand-edited, so every problem is reported as
`file:line:col: $.path: message`, and a rule broken is an error, never a silent skip: a
source below the quality threshold or under a refused licence stops `doit validate` and
planning alike (docs/architecture.md, Reuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from pipeline.config.catalog_paths import CANDIDATES_DIR as CANDIDATES_DIR
from pipeline.config.catalog_paths import CATALOG_FILE as CATALOG_FILE
from pipeline.config.catalog_paths import STACKS_FILE as STACKS_FILE
from pipeline.config.catalog_paths import TEMPLATES_DIR as TEMPLATES_DIR
from pipeline.config.catalog_paths import candidate_files as candidate_files
from pipeline.core import schemas, yamlio
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.overrides import builtin_path
from pipeline.core.schemas import Problem
from pipeline.models.catalog import Catalog, StackProfile, StackProfiles
from pipeline.policy import licences

M = TypeVar("M", bound=BaseModel)
JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Loaded:
    """A file read as plain data, with what is needed to place its problems."""

    path: Path
    data: Any
    rt: yamlio.RoundTrip

    def problem(self, path: JsonPath, message: str) -> str:
        return schemas.format_problem(str(self.path), Problem(path, message), self.rt.position)


def catalog_path(workspace: Path) -> Path:
    own = Path(workspace) / CATALOG_FILE
    return own if own.exists() else builtin_path("features.yaml")


def stacks_path(workspace: Path) -> Path:
    own = Path(workspace) / STACKS_FILE
    return own if own.exists() else builtin_path("stacks.yaml")


def _read(path: Path) -> Loaded:
    rt = yamlio.load_roundtrip(path)
    # dates become their ISO text: the models hold dates as quoted text
    return Loaded(path, yamlio.to_plain(rt.data), rt)


def _schema_problems(loaded: Loaded, model: type[BaseModel]) -> list[str]:
    if not isinstance(loaded.data, dict):
        return [f"{loaded.path}:1:1: expected a mapping, found {type(loaded.data).__name__}"]
    problems = schemas.schema_problems(loaded.data, schemas.schema_for(model), scalar_text=loaded.rt.scalar_text)
    ordered = schemas.sort_problems(problems, loaded.rt.position)
    return [schemas.format_problem(str(loaded.path), p, loaded.rt.position) for p in ordered]


def _build(loaded: Loaded, model: type[M]) -> M:
    return model.model_validate(loaded.data)


# --------------------------------------------------------------------------- checks


def catalog_problems(loaded: Loaded, catalog: Catalog, stacks: StackProfiles | None) -> list[str]:
    """The catalog's own rules (the schema passed): licences, thresholds, references."""
    out: list[str] = []
    policy = catalog.licence_policy
    # the policy narrows the whitelist, never widens it
    allowed = [a for a in policy.allowed if licences.normalise_id(a) in licences.ALLOWED]
    for i, spdx in enumerate(policy.allowed):
        if licences.normalise_id(spdx) not in licences.ALLOWED:
            out.append(
                loaded.problem(
                    ("licence_policy", "allowed", i),
                    f"{spdx!r} cannot be allowed: zero-intervention runs take only "
                    f"{', '.join(licences.ALLOWED)} (the policy may narrow that list, not widen it)",
                )
            )
    th = catalog.thresholds
    if th.extract_match > th.fork_match:
        out.append(
            loaded.problem(
                ("thresholds", "extract_match"),
                f"extract_match {th.extract_match} is above fork_match {th.fork_match}",
            )
        )
    reviewed = date.fromisoformat(catalog.reviewed_on)
    first_id: dict[str, JsonPath] = {}
    profiles = set(stacks.profiles) if stacks else None
    for name, feature in catalog.features.items():
        for s, source in enumerate(feature.sources):
            at: JsonPath = ("features", name, "sources", s)
            what = f"source {source.id!r} of {name}"
            if source.id in first_id:
                out.append(loaded.problem((*at, "id"), f"duplicate source id {source.id!r}"))
            first_id.setdefault(source.id, at)
            if not licences.expression_allowed(source.licence, allowed):
                out.append(
                    loaded.problem(
                        (*at, "licence"),
                        f"{what}: licence {source.licence} is refused in zero-intervention runs "
                        f"(allowed: {', '.join(allowed)}); remove the source",
                    )
                )
            if source.quality_score < th.min_quality_score:
                out.append(
                    loaded.problem(
                        (*at, "quality_score"),
                        f"{what}: quality_score {source.quality_score} is below the threshold "
                        f"{th.min_quality_score}; remove it or re-curate it (`doit catalog_scan`)",
                    )
                )
            if th.require_tests and not source.has_tests:
                out.append(loaded.problem((*at, "has_tests"), f"{what} has no tests; the thresholds require them"))
            out += _activity_problems(loaded, at, what, source.last_activity, reviewed, th.max_inactive_days)
            if profiles is not None:
                for k, stack in enumerate(source.compatible_stacks):
                    if stack not in profiles:
                        hint = schemas.did_you_mean(stack, sorted(profiles))
                        out.append(
                            loaded.problem((*at, "compatible_stacks", k), f"unknown stack profile {stack!r}{hint}")
                        )
    for cname, combination in catalog.combinations.items():
        for k, feature_name in enumerate(combination.features):
            if feature_name not in catalog.features:
                hint = schemas.did_you_mean(feature_name, sorted(catalog.features))
                out.append(
                    loaded.problem(("combinations", cname, "features", k), f"unknown feature {feature_name!r}{hint}")
                )
    return out


def _activity_problems(
    loaded: Loaded, at: JsonPath, what: str, last: str, reviewed: date, max_days: int
) -> list[str]:
    try:
        when = date.fromisoformat(last)
    except ValueError:
        return [loaded.problem((*at, "last_activity"), f"{what}: {last!r} is not a date (YYYY-MM-DD)")]
    if when > reviewed:
        return [
            loaded.problem(
                (*at, "last_activity"),
                f"{what}: last_activity {last} is after the catalog's reviewed_on {reviewed}; update reviewed_on",
            )
        ]
    idle = (reviewed - when).days
    if idle > max_days:
        return [
            loaded.problem(
                (*at, "last_activity"),
                f"{what}: no activity for {idle} days before reviewed_on (at most {max_days}); "
                "remove it or re-curate it",
            )
        ]
    return []


def stacks_problems(loaded: Loaded, stacks: StackProfiles, catalog: Catalog | None) -> list[str]:
    """Every declared project type maps to exactly one profile; references exist."""
    out: list[str] = []
    known = stacks.project_types
    first: dict[str, str] = {}
    for name, profile in stacks.profiles.items():
        for k, ptype in enumerate(profile.project_types):
            at: JsonPath = ("profiles", name, "project_types", k)
            if ptype not in known:
                hint = schemas.did_you_mean(ptype, sorted(known))
                out.append(loaded.problem(at, f"project type {ptype!r} is not declared under project_types{hint}"))
            if ptype in first:
                out.append(
                    loaded.problem(
                        at, f"project type {ptype!r} is mapped twice: by {first[ptype]!r} and by {name!r}; keep one"
                    )
                )
            first.setdefault(ptype, name)
    for ptype in known:
        if ptype not in first:
            out.append(loaded.problem(("project_types", ptype), f"project type {ptype!r} maps to no stack profile"))
    if catalog is not None:
        ids = {s.id for f in catalog.features.values() for s in f.sources}
        for name, profile in stacks.profiles.items():
            for k, sid in enumerate(profile.preferred_sources):
                if sid not in ids:
                    hint = schemas.did_you_mean(sid, sorted(ids))
                    out.append(
                        loaded.problem(
                            ("profiles", name, "preferred_sources", k), f"no catalog source has id {sid!r}{hint}"
                        )
                    )
    return out


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class CatalogFiles:
    """The workspace's stack profiles and catalog, both checked."""

    stacks: StackProfiles
    catalog: Catalog
    stacks_source: Path
    catalog_source: Path


def _parse(path: Path, model: type[M]) -> tuple[Loaded | None, M | None, list[str]]:
    try:
        loaded = _read(path)
    except ValidationErrors as exc:
        return None, None, list(exc.problems)
    except InvalidInput as exc:
        return None, None, [exc.message]
    problems = _schema_problems(loaded, model)
    if problems:
        return loaded, None, problems
    return loaded, _build(loaded, model), []


def workspace_problems(workspace: Path) -> list[str]:
    """Every problem of the stack profiles and the catalog (for `doit validate`)."""
    return _load(workspace)[1]


def _load(workspace: Path) -> tuple[CatalogFiles | None, list[str]]:
    spath, cpath = stacks_path(workspace), catalog_path(workspace)
    sloaded, stacks, sproblems = _parse(spath, StackProfiles)
    cloaded, catalog, cproblems = _parse(cpath, Catalog)
    problems = [*sproblems, *cproblems]
    if sloaded is not None and stacks is not None:
        problems += stacks_problems(sloaded, stacks, catalog)
    if cloaded is not None and catalog is not None:
        problems += catalog_problems(cloaded, catalog, stacks)
    if problems or stacks is None or catalog is None:
        return None, problems
    return CatalogFiles(stacks, catalog, spath, cpath), []


def load_workspace(workspace: Path) -> CatalogFiles:
    """The checked stack profiles and catalog; ValidationErrors listing every problem."""
    loaded, problems = _load(workspace)
    if loaded is None:
        raise ValidationErrors(
            problems,
            f"fix {STACKS_FILE} / {CATALOG_FILE} at the lines named; `doit validate` rechecks "
            "(planning never uses a catalog that breaks its own rules)",
        )
    return loaded


def profile_for(stacks: StackProfiles, project_type: str) -> tuple[str, StackProfile]:
    """The one profile serving `project_type`."""
    for name, profile in stacks.profiles.items():
        if project_type in profile.project_types:
            return name, profile
    known = sorted({t for p in stacks.profiles.values() for t in p.project_types})
    raise InvalidInput(
        f"unknown project type {project_type!r}{schemas.did_you_mean(project_type, known)}",
        f"use one of: {', '.join(known)} (or add it to {STACKS_FILE})",
    )


