"""debt_cleanup phases (docs/architecture.md, Issues): aged backlog keys become a last tier `DEBT`.

With `debt_cleanup: auto` in the ruleset, `start_run` asks `plan_debt_phases`
for one phase per aged key (or one per category when more than `GROUP_OVER` keys share
it) and `append_debt_tier` writes them into the hand-edited plan through the round-trip
YAML, so the person's comments and order stay; only then is the plan frozen.

A debt phase names the keys it cleans twice: in its description (for the builder) and in
`cleans` (for the backlog, which reads strategy.json to see that a debt phase for a key
completed). Its complexity, budget and auto-apply come from the ruleset's `debt_cleanup`
category; its scope is the issues' evidence (see `scope_for`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import yamlio
from pipeline.core.errors import AutopackError
from pipeline.core.jsonio import read_model
from pipeline.issues.backlog import DEBT_CATEGORY
from pipeline.models.base import ID_PATTERN
from pipeline.models.issues import BacklogEntry, ProjectBacklog
from pipeline.models.plan import Plan
from pipeline.models.strategy import Strategy
from pipeline.store.rundir import RunStore

DEBT_TIER_ID = "DEBT"
GROUP_OVER = 3  # more keys than this in one category share one phase

# Evidence that points into the run record, not into the repository.
_RECORD_PREFIXES = ("phases/", "attempts/", "audit/", "ci/", "incident/", "tiers/", "runs/", ".autopack/")
_REPO_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_LINE_SUFFIX = re.compile(r"(:\d+){1,2}$")
_NODE_ID = re.compile(r"^(?:[a-z_]+:)?(?P<file>[^:]+\.py)::")
_NAME_MAX = 60


@dataclass(frozen=True)
class DebtPhase:
    """One planned debt_cleanup phase, as plan data."""

    phase_id: str
    name: str
    description: str
    scope: list[str]
    cleans: list[str]

    def as_plan_data(self) -> dict[str, Any]:
        return {
            "phase_id": self.phase_id,
            "name": self.name,
            "description": self.description,
            "task_category": DEBT_CATEGORY,
            "scope": {"allow": list(self.scope)},
            "cleans": list(self.cleans),
        }


@dataclass(frozen=True)
class DebtPlan:
    """What start_run adds, and what it had to leave for a later run (max_phases)."""

    phases: list[DebtPhase] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    skipped_reason: str = ""


# -- scope -------------------------------------------------------------------------------


def _repo_path(ref: str) -> str | None:
    """`ref` as a repository-relative file path, or None when it does not look like one."""
    match = _NODE_ID.match(ref)
    path = match.group("file") if match else _LINE_SUFFIX.sub("", ref.strip())
    if not _REPO_PATH.match(path) or path.startswith(_RECORD_PREFIXES):
        return None
    if ".." in path.split("/") or ("/" not in path and "." not in path):
        return None
    return path


def _module_for_test(repo: Path, test_file: str) -> str | None:
    """The module a test file tests, when one file by that name sits where modules live:
    `tests/test_counting.py` -> `textstats/counting.py` (or `src/...`, or beside the tests
    directory). Only reads the checkout; None when nothing (or more than one) matches."""
    stem = Path(test_file).stem
    name = stem.removeprefix("test_").removesuffix("_test")
    if not name or name == stem:
        return None
    test_dir = Path(test_file).parent
    roots = {Path("."), Path("src"), test_dir.parent}
    candidates: set[str] = set()
    for root in roots:
        base = repo / root
        if not base.is_dir():
            continue
        if (base / f"{name}.py").is_file():
            candidates.add((root / f"{name}.py").as_posix())
        for package in sorted(base.iterdir()):
            if (package / "__init__.py").is_file() and (package / f"{name}.py").is_file():
                candidates.add((root / package.name / f"{name}.py").as_posix())
    candidates.discard(Path(test_file).as_posix())
    return candidates.pop() if len(candidates) == 1 else None


def _phase_scope(workspace: Path, run_id: str, phase_id: str | None) -> list[str]:
    """The scope of the phase where a key was last seen (its run's frozen strategy)."""
    if phase_id is None:
        return []
    try:
        strategy = read_model(RunStore(workspace, run_id).strategy_json, Strategy)
        return list(strategy.phase(phase_id).scope_allow)
    except (AutopackError, KeyError):
        return []


def scope_for(workspace: Path, repo: Path, key: str, entry: BacklogEntry) -> list[str]:
    """The paths a debt phase for `key` may touch.

    A `test:<file>::<name>` key: the test file and, if determinable, its module. Otherwise
    the evidence that looks like repository paths. Failing both, the scope of the phase the
    key was last seen in.
    """
    paths: set[str] = set()
    node = _NODE_ID.match(key)
    if node:
        test_file = node.group("file")
        paths.add(test_file)
        module = _module_for_test(repo, test_file)
        if module:
            paths.add(module)
    else:
        paths |= {p for p in (_repo_path(ref) for ref in entry.evidence_refs) if p}
    if paths:
        return sorted(paths)
    return _phase_scope(workspace, entry.last_seen_run_id, entry.last_seen_phase_id)


# -- phases ------------------------------------------------------------------------------


def _groups(aged: Sequence[str], backlog: ProjectBacklog) -> list[list[str]]:
    """One group per key, except a category with more than GROUP_OVER keys: one group."""
    by_category: dict[str, list[str]] = {}
    for key in sorted(aged):
        by_category.setdefault(backlog.issues_by_key[key].category, []).append(key)
    groups: list[list[str]] = []
    for _category, keys in sorted(by_category.items()):
        groups.extend([keys] if len(keys) > GROUP_OVER else [[k] for k in keys])
    return groups


def _free_ids(plan: Plan, count: int) -> list[str]:
    """`DEBT.1`, `DEBT.2`, ... skipping ids the plan already uses (ids compare ignoring case)."""
    taken = {p.phase_id.casefold() for _, p in plan.phases()}
    ids: list[str] = []
    n = 1
    while len(ids) < count:
        candidate = f"{DEBT_TIER_ID}.{n}"
        if candidate.casefold() not in taken and re.fullmatch(ID_PATTERN, candidate):
            ids.append(candidate)
        n += 1
    return ids


def _short(text: str) -> str:
    return text if len(text) <= _NAME_MAX else text[: _NAME_MAX - 3] + "..."


def _describe(keys: Sequence[str], backlog: ProjectBacklog, thresholds: tuple[int, int], profile: str) -> str:
    lines = [
        "Debt cleanup, added by start_run from the project issue backlog: these minor issues "
        f"kept coming back (aging thresholds of the {profile} safety profile: {thresholds[0]} runs "
        f"or {thresholds[1]} tiers). Remove their cause so they are not recorded again.",
        "",
    ]
    for key in keys:
        entry = backlog.issues_by_key[key]
        lines.append(
            f"- `{key}` ({entry.category}; seen in {entry.age_in_runs} run(s), {entry.age_in_tiers} tier(s); "
            f"last in run {entry.last_seen_run_id}"
            + (f" phase {entry.last_seen_phase_id}" if entry.last_seen_phase_id else "")
            + ")"
        )
        if entry.message:
            lines.append(f"  message: {entry.message}")
        if entry.evidence_refs:
            lines.append(f"  evidence: {', '.join(entry.evidence_refs)}")
    return "\n".join(lines) + "\n"


def _name(keys: Sequence[str], backlog: ProjectBacklog) -> str:
    if len(keys) == 1:
        return _short(f"Clean up {keys[0]}")
    return _short(f"Clean up {len(keys)} {backlog.issues_by_key[keys[0]].category} issues")


def plan_debt_phases(
    workspace: Path,
    repo: Path,
    plan: Plan,
    backlog: ProjectBacklog,
    aged: Mapping[str, object],
    *,
    thresholds: tuple[int, int],
    max_phases: int,
) -> DebtPlan:
    """The debt phases for the `aged` keys, within `max_phases` for the whole plan."""
    if any(t.tier_id.casefold() == DEBT_TIER_ID.casefold() for t in plan.tiers):
        return DebtPlan(deferred=sorted(aged), skipped_reason=f"the plan already has a tier {DEBT_TIER_ID}")
    groups = _groups([k for k in aged if k in backlog.issues_by_key], backlog)
    room = max(0, max_phases - len(plan.phases()))
    kept, left = groups[:room], groups[room:]
    ids = _free_ids(plan, len(kept))
    phases = [
        DebtPhase(
            phase_id=phase_id,
            name=_name(keys, backlog),
            description=_describe(keys, backlog, thresholds, plan.safety_profile.value),
            scope=sorted({p for k in keys for p in scope_for(workspace, repo, k, backlog.issues_by_key[k])}) or ["**"],
            cleans=list(keys),
        )
        for phase_id, keys in zip(ids, kept, strict=True)
    ]
    deferred = sorted(k for keys in left for k in keys)
    reason = f"max_phases {max_phases} leaves room for {room} debt phase(s)" if left else ""
    return DebtPlan(phases=phases, deferred=deferred, skipped_reason=reason)


def append_debt_tier(plan_path: Path, phases: Sequence[DebtPhase]) -> None:
    """Append the tier `DEBT` to the plan file, keeping everything the person wrote."""
    if not phases:
        return
    rt = yamlio.load_roundtrip(plan_path)
    tier = {
        "tier_id": DEBT_TIER_ID,
        "name": "Debt cleanup",
        "description": "Added by start_run: aged minor issues from the project backlog (docs/architecture.md, Issues).",
        "phases": [p.as_plan_data() for p in phases],
    }
    yamlio.append_item(rt, ("tiers",), tier)
    yamlio.dump_roundtrip(rt, plan_path)
