"""PLAN_BOOTSTRAP: writing a new plan.yaml (layer L3 logic + the planfile writer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import yamlio
from pipeline.errors import InvalidInput, NotImplementedYet
from pipeline.store import RunStore

TEMPLATE_HEADER = """\
# Plan of run {run_id} (DESIGN §4a). Edit it by hand, then `doit validate --run {run_id}`
# and `doit start_run --run {run_id}`. start_run freezes it: later edits are refused.
"""


def default_plan(run_id: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "project_id": "my-project",
        "description": "What this run should achieve.",
        "target": {"repo": ".", "base": None},
        "safety_profile": "normal",
        "run_scope": "multi_tier",
        "agents": {"builder": {"command": 'my-agent --prompt-file "$AUTOPACK_PHASE_SPEC"'}},
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


def template_plan(workspace: Path, template: str, run_id: str) -> dict[str, Any]:
    path = Path(template)
    if not path.suffix:
        path = workspace / "catalog" / "templates" / f"{template}.yaml"
    if not path.exists():
        raise InvalidInput(
            f"template {template} not found at {path}", "pass a path to a plan YAML, or a name under catalog/templates/"
        )
    data = yamlio.load_fast(path)
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a template must be a plan mapping", "start from `doit new_run` output")
    return {**data, "run_id": run_id}


def new_run(
    workspace: Path, run_id: str, template: str = "", project_type: str = "", features: str = "", from_md: str = ""
) -> Path:
    from pipeline.planfile import write_new_plan

    store = RunStore(workspace, run_id)
    if project_type or features or from_md:
        raise NotImplementedYet(
            "planning from --project-type/--features/--from-md is not built yet",
            "write the plan by hand: run `doit new_run --run R` and edit runs/R/plan.yaml",
        )
    data = template_plan(workspace, template, run_id) if template else default_plan(run_id)
    write_new_plan(store.plan_path, data, header=TEMPLATE_HEADER.format(run_id=run_id))
    return store.plan_path
