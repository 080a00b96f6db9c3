"""`doit validate`: every plan, profile and run artifact checked, all problems at once.

Returns the problems (an execution outcome); the task turns them into exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipeline.config.workspace import Workspace
from pipeline.core.errors import AutopackError, InvalidInput, ValidationErrors
from pipeline.core.jsonio import read_model
from pipeline.models.issues import PhaseIssueFile, RunIssueIndex
from pipeline.models.plan import Plan
from pipeline.models.reports import CiReport, GateReport
from pipeline.models.results import AttemptRecord
from pipeline.models.run import PhaseRecord, RunRecord
from pipeline.models.strategy import Strategy
from pipeline.store.rundir import RunStore

# Artifact file name -> model, for files anywhere under a run directory.
_ARTIFACTS: dict[str, type[BaseModel]] = {
    "run.json": RunRecord,
    "strategy.json": Strategy,
    "run_issue_index.json": RunIssueIndex,
    "phase.json": PhaseRecord,
    "issues.json": PhaseIssueFile,
    "gate.json": GateReport,
    "builder.json": AttemptRecord,
    "ci.json": CiReport,
}


def _problems_of(check: Callable[[], object]) -> list[str]:
    try:
        check()
    except ValidationErrors as exc:
        return list(exc.problems)
    except AutopackError as exc:
        return [exc.message]
    return []


def validate_workspace(workspace: Path | Workspace, run_id: str | None = None) -> list[str]:
    ws = Workspace.of(workspace)
    problems: list[str] = []
    problems += _problems_of(lambda: ws.ruleset)
    problems += _problems_of(lambda: ws.base_ci_profiles)
    problems += _catalog_problems(ws)
    run_ids = [run_id] if run_id else RunStore.list_runs(ws.root)
    for rid in run_ids:
        problems += validate_run(ws, rid)
    return problems


def validate_run(workspace: Path | Workspace, run_id: str) -> list[str]:
    ws = Workspace.of(workspace)
    store = RunStore(ws.root, run_id)
    if not store.plan_path.exists() and not store.run_json.exists():
        return [f"{store.run_dir}: no plan.yaml and no run.json (create it with `doit new_run --run {run_id}`)"]
    # The plan is loaded once: its problems are reported once (they used to be reported by
    # the reuse check and again by the agents check).
    plans: list[Plan] = []
    problems = _problems_of(lambda: plans.append(_load_plan(ws, store)))
    if plans:
        problems += _problems_of(lambda: _reuse_problems(plans[0], store))
    if plans and not store.run_json.exists():
        from pipeline.run.start import check_agents  # a run not started yet: no need to import it otherwise

        problems += _problems_of(lambda: check_agents(ws, plans[0]))
        if not problems:  # the target is checked for a plan that is otherwise valid
            problems += _problems_of(lambda: _target_problems(ws, store, plans[0]))
    if not store.run_json.exists():
        return problems
    for path in sorted(store.run_dir.rglob("*.json")):
        model = _ARTIFACTS.get(path.name)
        if model is not None and "incident" not in path.parts:
            problems += _problems_of(lambda p=path, m=model: read_model(p, m))  # type: ignore[misc]
    problems += _problems_of(lambda: _check_events(store))
    problems += _problems_of(lambda: _check_frozen_plan(store))
    problems += _problems_of(lambda: _check_strategy_exists(store))
    problems += _chain_problems(store)
    problems += _branch_problems(store)
    return list(dict.fromkeys(problems))  # one problem found by two checks is said once


def _load_plan(ws: Workspace, store: RunStore) -> Plan:
    """The plan, checked against the ruleset's task categories (as start_run loads it)."""
    from pipeline.plan.file import read_plan

    if not store.plan_path.exists():
        raise InvalidInput(f"{store.plan_path} does not exist", f"create it with `doit new_run --run {store.run_id}`")
    ruleset = ws.ruleset.ruleset
    return read_plan(store.plan_path, {*ruleset.categories, *ruleset.aliases})


def _target_problems(ws: Workspace, store: RunStore, plan: Plan) -> None:
    from pipeline.run.preflight import target_problems

    problems = target_problems(ws.root, store, plan)
    if problems:
        raise ValidationErrors(problems, "fix the plan's target, or the repository")


def _check_strategy_exists(store: RunStore) -> None:
    if not store.strategy_json.is_file():
        raise InvalidInput(f"{store.strategy_json}: missing", "restore it from git (`git checkout -- runs/<run>`)")


def _chain_problems(store: RunStore) -> list[str]:
    """Artifacts the events name, run and phase states against the last events."""
    from pipeline.store import chain

    try:
        run = read_model(store.run_json, RunRecord)
        strategy = read_model(store.strategy_json, Strategy)
    except AutopackError:
        return []  # reported by the schema checks above
    states: dict[str, tuple[Path, str | None]] = {}
    for ps in strategy.phases:
        path = store.phase_dir(ps.index, ps.phase_id) / "phase.json"
        try:
            states[ps.phase_id] = (path, read_model(path, PhaseRecord).state.value if path.exists() else None)
        except AutopackError:
            continue  # reported above
    return chain.problems(store.run_dir, store.events_path, run.run_id, run.state.value, states)


def _branch_problems(store: RunStore) -> list[str]:
    """The branch agrees with the record: every COMPLETE phase's tag points at the commit
    phase.json names (read from the repository's files), and that commit is on the run's
    branch (one `git rev-list` through the vcs adapter, run only when a phase is COMPLETE)."""
    from pipeline.core.sandbox import git_dirs
    from pipeline.plan.target import current_target
    from pipeline.store.chain import tag_commit

    try:
        run = read_model(store.run_json, RunRecord)
        strategy = read_model(store.strategy_json, Strategy)
    except AutopackError:
        return []  # reported above
    # The recorded path is the start machine's; a CI job's clone resolves the plan's target.
    target = current_target(store.workspace, store, Path(run.target_repo))
    _own, common = git_dirs(target / ".git")
    if common is None:
        return []  # the target is not here
    found = []
    complete: list[tuple[Path, PhaseRecord]] = []
    for ps in strategy.phases:
        path = store.phase_dir(ps.index, ps.phase_id) / "phase.json"
        try:
            rec = read_model(path, PhaseRecord)
        except AutopackError:
            continue
        if rec.state.value != "COMPLETE":
            continue
        complete += [(path, rec)] if rec.commit else []
        if not rec.tag:
            continue
        tagged = tag_commit(common, rec.tag)
        if tagged is not None and tagged != rec.commit:
            found.append(
                f"{path}: COMPLETE with commit {(rec.commit or 'none')[:12]}, but its tag {rec.tag} "
                f"points at {tagged[:12]}"
            )
        elif tagged is None and not (common / "packed-refs").is_file():
            found.append(f"{path}: COMPLETE with tag {rec.tag}, but the tag does not exist in {common}")
    return found + (_off_branch_problems(target, run, complete) if complete else [])


def _off_branch_problems(target: Path, run: RunRecord, complete: list[tuple[Path, PhaseRecord]]) -> list[str]:
    """COMPLETE phases whose commit is not on the run's branch, or a branch that is gone."""
    from pipeline.vcs.remote import make_adapter

    try:
        on_branch = make_adapter(target).branch_commits(run.branch, run.base_commit)
    except AutopackError as exc:
        return [f"{target}: cannot read branch {run.branch}: {exc.message} ({exc.fix})"]
    if on_branch is None:
        path, rec = complete[0]
        return [
            f"{path}: phase {rec.phase_id} is COMPLETE with commit {(rec.commit or '')[:12]}, but branch "
            f"{run.branch} does not exist in {target}: restore the branch (`git branch {run.branch} <its last "
            f"commit>`, or fetch it from the remote it was pushed to)"
        ]
    commits = set(on_branch)
    return [
        f"{path}: phase {rec.phase_id} is COMPLETE with commit {(rec.commit or '')[:12]}, which is not on branch "
        f"{run.branch} in {target} (the branch was rewritten or moved, or the record names another commit): "
        f"put the branch back where the run left it (`git reflog show {run.branch}`), or start a new run"
        for path, rec in complete
        if rec.commit not in commits
    ]


def _check_frozen_plan(store: RunStore) -> None:
    """A started run's plan.yaml is frozen: its sha256 is the one start_run recorded."""
    from pipeline.plan.file import plan_sha256

    frozen = read_model(store.run_json, RunRecord).plan_sha256
    sha = plan_sha256(store.plan_path)
    if sha != frozen:
        raise InvalidInput(
            f"{store.plan_path}: changed after start_run (sha256 {sha[:12]} != frozen "
            f"{frozen[:12]}); a started run's plan is frozen: restore it (`git checkout -- "
            f"{store.plan_path}`) or start a new run",
            "restore the plan as it was frozen, or start a new run",
        )


def _check_events(store: RunStore) -> None:
    run = read_model(store.run_json, RunRecord)
    store.events.verify(expected_count=run.events_count, expected_head=run.events_head or None)


def _reuse_problems(plan: Plan, store: RunStore) -> None:
    """A reuse phase the strategy would refuse at start_run (refused licence, no source)."""
    from pipeline.policy.strategy import reuse_problems, uncatalogued_sources

    problems = [f"{store.plan_path}: {p}" for _, phase in plan.phases() for p in reuse_problems(phase)]
    if any(phase.reuse is not None and phase.reuse.source is not None for _, phase in plan.phases()):
        from pipeline.config.catalog import load_workspace  # only then: its rules and models cost ~8 ms

        try:
            catalog = load_workspace(store.workspace).catalog
        except AutopackError:
            catalog = None  # its own problems are reported by the catalog checks
        if catalog is not None:
            # One problem per phase: a refused licence is the first thing to fix.
            reported = {f"phase {phase.phase_id}:" for _, phase in plan.phases() if reuse_problems(phase)}
            problems += [
                f"{store.plan_path}: {p}"
                for p in uncatalogued_sources(plan, catalog)
                if not any(p.startswith(r) for r in reported)
            ]
    if problems:
        raise ValidationErrors(problems, "pick a whitelisted catalog source for the phase, or make it greenfield")


def _own_catalog_problems(workspace: Path) -> list[str]:
    """The workspace's own stack profiles and catalog, checked with their rules.

    The built-in pair ships with the package and is checked by the test suite
    (tests/test_catalog.py); parsing it again costs ~30 ms of every `doit validate`.
    """
    from pipeline.config import catalog

    if not (workspace / catalog.STACKS_FILE).exists() and not (workspace / catalog.CATALOG_FILE).exists():
        return []
    return catalog.workspace_problems(workspace)


def _catalog_problems(ws: Workspace) -> list[str]:
    """Stack profiles and feature catalog (their own rules), plan templates and candidates."""
    from pipeline.config.catalog_paths import candidate_files, has_catalog_files

    if not has_catalog_files(ws.root):
        return []
    from pipeline.config import catalog
    from pipeline.core import schemas, yamlio
    from pipeline.models.catalog import CandidateReport
    from pipeline.plan.file import plan_problems

    workspace = ws.root
    problems = _own_catalog_problems(workspace)
    try:
        ruleset = ws.ruleset.ruleset
        categories: set[str] | None = {*ruleset.categories, *ruleset.aliases}
    except AutopackError:
        categories = None  # reported above
    templates = workspace / catalog.TEMPLATES_DIR
    for path in sorted(templates.rglob("*.yaml")) if templates.is_dir() else []:
        try:
            rt = yamlio.load_roundtrip(path)
        except ValidationErrors as exc:
            problems += exc.problems
            continue
        except AutopackError as exc:
            problems.append(exc.message)
            continue
        data = yamlio.to_plain(rt.data)
        if not isinstance(data, dict):
            problems.append(f"{path}:1:1: a template must be a plan mapping")
            continue
        problems += plan_problems(path, rt, data, categories)
    schema: dict[str, Any] | None = None  # built only when there are candidates
    for path in candidate_files(workspace):
        schema = schema or schemas.schema_for(CandidateReport)
        try:
            rt = yamlio.load_roundtrip(path)
        except AutopackError as exc:
            problems.append(exc.message)
            continue
        problems += schemas.validate_instance(
            yamlio.to_plain(rt.data), schema, source=str(path), positions=rt.position, scalar_text=rt.scalar_text
        )
    return problems
