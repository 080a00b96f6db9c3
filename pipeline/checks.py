"""`doit validate`: every plan, profile and run artifact checked, all problems at once.

Layer L5. Returns the problems (an execution outcome); the task turns them into exit 2.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from pipeline import config
from pipeline.errors import AutopackError, ValidationErrors
from pipeline.jsonio import read_model
from pipeline.models.issues import PhaseIssueFile, RunIssueIndex
from pipeline.models.reports import CiReport, GateReport
from pipeline.models.results import AttemptRecord
from pipeline.models.run import PhaseRecord, RunRecord
from pipeline.models.strategy import Strategy
from pipeline.store import RunStore

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


def validate_workspace(workspace: Path, run_id: str | None = None) -> list[str]:
    problems: list[str] = []
    problems += _problems_of(lambda: config.load_ruleset(workspace))
    problems += _problems_of(lambda: config.load_ci_profiles(workspace))
    run_ids = [run_id] if run_id else RunStore.list_runs(workspace)
    for rid in run_ids:
        problems += validate_run(workspace, rid)
    return problems


def validate_run(workspace: Path, run_id: str) -> list[str]:
    from pipeline.starting import load_valid_plan

    store = RunStore(workspace, run_id)
    if not store.plan_path.exists() and not store.run_json.exists():
        return [f"{store.run_dir}: no plan.yaml and no run.json (create it with `doit new_run --run {run_id}`)"]
    problems = _problems_of(lambda: load_valid_plan(workspace, store))
    if not store.run_json.exists():
        return problems
    for path in sorted(store.run_dir.rglob("*.json")):
        model = _ARTIFACTS.get(path.name)
        if model is not None and "incident" not in path.parts:
            problems += _problems_of(lambda p=path, m=model: read_model(p, m))  # type: ignore[misc]
    problems += _problems_of(lambda: _check_events(store))
    return problems


def _check_events(store: RunStore) -> None:
    run = read_model(store.run_json, RunRecord)
    store.events.verify(expected_count=run.events_count, expected_head=run.events_head or None)
