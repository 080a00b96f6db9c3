"""The hand-edited plan file: load, validate, write (README.md, The plan).

`load_plan` reports every problem of a plan at once, each as
`file:line:col: $.json.path: message`, so a person fixes the file in one pass: schema
errors, YAML's silent retyping (dates, `1.10`, `yes`), duplicate and malformed ids,
unknown task categories, empty tiers, and a run_id that disagrees with its directory. Only
a plan with no problem becomes a frozen `Plan`; raw dicts stop here.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from pipeline.core import schemas, yamlio
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.jsonio import json_path
from pipeline.core.schemas import Positions, Problem
from pipeline.core.yamlio import RoundTrip
from pipeline.models.plan import Plan

JsonPath = tuple[str | int, ...]

# schema keywords that judge a key, not the value under it
_KEY_KEYWORDS = frozenset({"additionalProperties", "propertyNames"})


@functools.cache
def plan_schema() -> dict[str, Any]:
    """The plan's JSON Schema (generated once per process: it takes milliseconds)."""
    return schemas.schema_for(Plan)


def load_plan(path: Path, categories: Collection[str] | None = None) -> tuple[Plan, RoundTrip]:
    """Load and check the plan at `path`; return it frozen, with its round-trip data.

    `categories` are the task categories the ruleset knows; None skips that check.
    Raises ValidationErrors listing every problem, in file order.
    """
    path = Path(path)
    rt = yamlio.load_roundtrip(path)
    data = yamlio.to_plain(rt.data)
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a {type(data).__name__}"
        raise InvalidInput(
            f"{path}:1:1: expected a mapping (run_id, project_id, tiers, ...), found {found}",
            "write a plan (run_id, project_id, target, tiers of phases) or create one with "
            f"`doit new_run --run {_run_dir(path) or 'R'}`",
        )
    problems = plan_problems(path, rt, data, categories)
    if problems:
        raise ValidationErrors(problems, _fix(path, data))
    return _build(path, rt, data), rt


def read_plan(path: Path, categories: Collection[str] | None = None) -> Plan:
    """The plan at `path`, checked as `load_plan` checks it, without its round-trip data.

    A plan with no problem takes a fast path (~50 ms less per command: no ruamel parse, no
    JSON Schema generated, no jsonschema import): PyYAML's C parser where it reads what
    ruamel reads (`yamlio.load_plain`), then pydantic's strict validation, which accepts
    nothing the plan's JSON Schema refuses (tests/test_plan_fastpath.py holds them side by
    side). Anything else goes through `load_plan`, which words every problem as before.
    """
    plan = _clean_plan(Path(path), categories)
    return plan if plan is not None else load_plan(path, categories)[0]


def _clean_plan(path: Path, categories: Collection[str] | None) -> Plan | None:
    """The plan when the fast path finds nothing wrong with it, else None."""
    data = yamlio.load_plain(path)
    if not isinstance(data, dict) or not _strictly_valid(data):
        return None
    if _id_problems(_no_positions, data) or any(_run_dir_problems(path, data)):
        return None
    if categories is not None and any(_category_problems(data, categories)):
        return None
    return Plan.model_validate(data)  # as `_build` makes it


def _strictly_valid(data: dict[str, Any]) -> bool:
    """Whether pydantic accepts `data` in strict JSON mode: no coercion ("1" is no int, 1.0
    no int, "yes" no bool), as the JSON Schema judges types; enum values as strings."""
    from pydantic import ValidationError

    try:
        Plan.model_validate_json(json.dumps(data), strict=True)
    except ValidationError:
        return False
    return True


def _no_positions(_path: JsonPath) -> None:
    return None


def plan_problems(
    path: Path, rt: RoundTrip, data: dict[str, Any], categories: Collection[str] | None = None
) -> list[str]:
    """Every problem of the plan `data` (read from `path` as `rt`), as located lines."""
    surprises = [Problem(p, message) for p, _, _, message in yamlio.find_surprises(rt)]
    # a date reaches the schema as its text; a complaint about that value would repeat the
    # surprise less clearly (an unknown key at the same path is a problem of its own)
    surprised = {p.path for p in surprises}
    schema = [
        _reword(p, data)
        for p in schemas.schema_problems(data, plan_schema(), scalar_text=rt.scalar_text)
        if p.path not in surprised or p.keyword in _KEY_KEYWORDS
    ]
    problems = [*surprises, *schema, *_id_problems(rt.position, data), *_run_dir_problems(path, data)]
    if categories is not None:
        problems += _category_problems(data, categories)
    ordered = schemas.sort_problems(problems, rt.position)
    return [schemas.format_problem(str(path), p, rt.position) for p in ordered]


def _fix(path: Path, data: dict[str, Any]) -> str:
    run = _run_dir(path)
    if run is None and isinstance(data.get("run_id"), str):
        run = data["run_id"]
    target = f" --run {run}" if run else ""
    return f"edit {path} at the lines above; `doit validate{target}` rechecks"


def _build(path: Path, rt: RoundTrip, data: dict[str, Any]) -> Plan:
    """The frozen Plan. The schema was checked; pydantic failing here is a schema gap."""
    from pydantic import ValidationError

    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        problems = [
            schemas.format_problem(str(path), Problem(tuple(err["loc"]), err["msg"]), rt.position)
            for err in exc.errors(include_url=False)
        ]
        raise ValidationErrors(problems, _fix(path, data)) from exc


# --------------------------------------------------------------------------- checks


def _reword(problem: Problem, data: dict[str, Any]) -> Problem:
    """Schema messages said in the plan's terms."""
    if problem.keyword == "minItems" and problem.path == ("tiers",):
        return Problem(problem.path, "the plan has no tiers; add at least one tier with phases")
    if problem.keyword == "minItems" and len(problem.path) == 3 and problem.path[2] == "phases":
        return Problem(problem.path, f"tier {_tier_name(data, problem.path[1])} has no phases")
    return problem


def _tier_name(data: dict[str, Any], index: Any) -> str:
    tiers = data.get("tiers")
    if isinstance(tiers, list) and isinstance(index, int) and index < len(tiers):
        tier = tiers[index]
        if isinstance(tier, dict) and isinstance(tier.get("tier_id"), str):
            return str(tier["tier_id"])
    return f"#{index + 1 if isinstance(index, int) else index}"


def _tiers(data: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    tiers = data.get("tiers")
    if isinstance(tiers, list):
        for index, tier in enumerate(tiers):
            if isinstance(tier, dict):
                yield index, tier


def _phases(data: dict[str, Any]) -> Iterator[tuple[JsonPath, dict[str, Any]]]:
    for t, tier in _tiers(data):
        phases = tier.get("phases")
        if isinstance(phases, list):
            for p, phase in enumerate(phases):
                if isinstance(phase, dict):
                    yield ("tiers", t, "phases", p), phase


def _id_problems(positions: Positions, data: dict[str, Any]) -> list[Problem]:
    """Tier ids unique among tiers, phase ids unique across the whole plan.

    Ids name directories, branches and tags, which collide on a case-insensitive file
    system, so ids equal but for case are duplicates too.
    """
    tiers: list[tuple[JsonPath, Any]] = [
        (("tiers", t, "tier_id"), tier.get("tier_id")) for t, tier in _tiers(data)
    ]
    phases: list[tuple[JsonPath, Any]] = [
        ((*path, "phase_id"), phase.get("phase_id")) for path, phase in _phases(data)
    ]
    return [*_duplicates(positions, "tier", tiers), *_duplicates(positions, "phase", phases)]


def _duplicates(positions: Positions, kind: str, ids: list[tuple[JsonPath, Any]]) -> Iterator[Problem]:
    first: dict[str, tuple[JsonPath, str]] = {}
    for path, value in ids:
        if not isinstance(value, str):
            continue  # the schema reports it
        seen = first.get(value.casefold())
        if seen is None:
            first[value.casefold()] = (path, value)
            continue
        pos = positions(seen[0])
        where = f" (first at line {pos[0]})" if pos else f" (first at {json_path(seen[0])})"
        if seen[1] == value:
            yield Problem(path, f"duplicate {kind} id {value!r}{where}")
        else:
            yield Problem(
                path,
                f"{kind} id {value!r} differs from {seen[1]!r}{where} only in case; "
                "ids must differ ignoring case",
            )


def _category_problems(data: dict[str, Any], categories: Collection[str]) -> Iterator[Problem]:
    known = sorted(categories)
    for path, phase in _phases(data):
        category = phase.get("task_category")
        if isinstance(category, str) and category and category not in categories:
            hint = schemas.did_you_mean(category, known)
            if not hint:
                hint = f"; known categories: {', '.join(known)}" if known else "; none are known"
            yield Problem((*path, "task_category"), f"unknown task_category {category!r}{hint}")


def _run_dir(path: Path) -> str | None:
    """R when `path` is runs/R/plan.yaml, else None."""
    full = Path(path).absolute()
    if full.name == "plan.yaml" and full.parent.parent.name == "runs":
        return full.parent.name
    return None


def _run_dir_problems(path: Path, data: dict[str, Any]) -> Iterator[Problem]:
    """runs/R/plan.yaml must say run_id: R: the directory name is the run's name everywhere."""
    run = _run_dir(path)
    run_id = data.get("run_id")
    if run is not None and isinstance(run_id, str) and run_id != run:
        yield Problem(
            ("run_id",),
            f"run_id {run_id!r} does not match the run directory runs/{run}; "
            "rename one so they agree",
        )


# --------------------------------------------------------------------------- files


def plan_sha256(path: Path) -> str:
    """sha256 hex of the plan file's bytes (recorded in run.json when the plan freezes)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: file not found", "check the run id and the path") from exc


def write_new_plan(path: Path, plan_dict: dict[str, Any], header: str = "") -> None:
    """Write a fresh plan file for a person to edit; never overwrite one.

    The plan must validate against the plan schema: a file the tool writes is a valid
    artifact (docs/architecture.md, Invariants). `header` becomes comment lines at the top.
    """
    from pipeline.core.jsonio import write_text_atomic

    path = Path(path)
    if path.exists():
        raise InvalidInput(
            f"{path}: a plan already exists; not overwriting it",
            f"edit {path}, or delete it first to start over",
        )
    problems = schemas.validate_instance(plan_dict, plan_schema(), source=str(path))
    if problems:
        raise ValidationErrors(
            problems, "the generated plan is invalid: check the template and options given"
        )
    write_text_atomic(path, yamlio.dump_new(plan_dict, header))
