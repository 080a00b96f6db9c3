"""The doit task factories (layer L6). `dodo.py` re-exports them; `python -m pipeline`
loads this module directly, so both run the same tasks.

Actions are thin: parse options, call one function below L6, print the outcome. Errors go
through `cli.handled`, the single top-level handler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.cli import handled

DOIT_CONFIG: dict[str, Any] = {
    "default_tasks": ["status"],
    "verbosity": 2,
    "reporter": "zero",
    "dep_file": ".doit.db",
}

_RUN = {"name": "run", "long": "run", "type": str, "default": "", "help": "run id"}
_PHASE = {"name": "phase", "long": "phase", "type": str, "default": "", "help": "phase id"}
_JSON = {"name": "as_json", "long": "json", "type": bool, "default": False, "help": "machine-readable output"}


def _workspace() -> Path:
    return Path.cwd()


def _need(value: str, option: str, example: str) -> str:
    if not value:
        from pipeline.errors import InvalidInput

        raise InvalidInput(f"missing --{option}", f"pass it, e.g. `{example}`")
    return value


def _task(doc: str, action: Any, *params: dict[str, Any]) -> dict[str, Any]:
    return {
        "doc": doc,
        "actions": [handled(action)],
        "params": list(params),
        "uptodate": [False],
        "verbosity": 2,
    }


# -- actions ---------------------------------------------------------------------------


def _new_run(run: str, template: str, project_type: str, features: str, from_md: str) -> None:
    from pipeline.planning import new_run

    path = new_run(
        _workspace(), _need(run, "run", "doit new_run --run add-jitter"), template, project_type, features, from_md
    )
    print(f"wrote {path.relative_to(_workspace()) if path.is_relative_to(_workspace()) else path}")
    print(f"next: edit it, then `doit validate --run {run}` and `doit start_run --run {run}`")


def _validate(run: str) -> None:
    from pipeline.checks import validate_workspace
    from pipeline.errors import ValidationErrors

    problems = validate_workspace(_workspace(), run or None)
    if problems:
        raise ValidationErrors(problems, "fix each problem at the place named; `doit validate` rechecks")
    print(f"ok: {'run ' + run if run else 'workspace'} validates")


def _start_run(run: str) -> None:
    from pipeline.starting import start_run

    record = start_run(_workspace(), _need(run, "run", "doit start_run --run add-jitter"))
    print(f"run {record.run_id} started: {record.state.value}, branch {record.branch} from {record.base_ref}")
    print(f"worktree {record.worktree}; {len(record.phases)} phase(s) in {len(record.tiers)} tier(s)")
    print(f"next: `doit run --run {record.run_id}` (or one phase: `doit run_phase --run {record.run_id}`)")


def _print_outcome(outcome: Any) -> None:
    print(f"{outcome.message}")
    print(f"run {outcome.run_id}: {outcome.run_state.value}")


def _exit_for(state: Any) -> None:
    from pipeline.errors import StepFailed
    from pipeline.models.enums import RunState

    if state.terminal and state != RunState.DONE_SUCCESS:
        raise StepFailed(f"run ended {state.value}", "read the run's RUN_SUMMARY.md and incident/ folder")


def _run_phase(run: str, phase: str) -> None:
    from pipeline.runner import run_phase

    outcome = run_phase(_workspace(), _need(run, "run", "doit run_phase --run add-jitter"), phase or None)
    _print_outcome(outcome)
    _exit_for(outcome.run_state)


def _run(run: str) -> None:
    from pipeline.runner import run_to_end

    outcomes = run_to_end(_workspace(), _need(run, "run", "doit run --run add-jitter"))
    for outcome in outcomes:
        print(outcome.message)
    last = outcomes[-1]
    print(f"run {last.run_id}: {last.run_state.value}")
    _exit_for(last.run_state)


def _status(run: str, as_json: bool) -> None:
    from pipeline import status

    data: Any = status.run_status(_workspace(), run) if run else status.all_status(_workspace())
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif run:
        print(status.render_run(data))
    else:
        print(status.render_all(data))


def _submit(run: str, phase: str, patch: str, result: str) -> None:
    from pipeline.runner import submit_patch

    outcome = submit_patch(
        _workspace(),
        _need(run, "run", "doit submit --run R --phase P --patch change.diff"),
        _need(phase, "phase", "doit submit --run R --phase P --patch change.diff"),
        Path(_need(patch, "patch", "doit submit --run R --phase P --patch change.diff")),
        Path(result) if result else None,
    )
    _print_outcome(outcome)
    _exit_for(outcome.run_state)


def _schemas() -> None:
    from pipeline.validate import write_schemas

    written = write_schemas(_workspace() / "schemas")
    print(f"wrote {len(written)} schema file(s) to schemas/")


def _strategy(run: str) -> None:
    from pipeline.explain import explain_strategy

    print(explain_strategy(_workspace(), _need(run, "run", "doit strategy --run add-jitter")))


def _demo(keep: bool) -> None:
    from pipeline.demo import run_demo

    run_demo(keep=keep)


def _not_yet(what: str, issue: str) -> Any:
    def action(**_: Any) -> None:
        from pipeline.errors import NotImplementedYet

        raise NotImplementedYet(f"`doit {what}` is not built yet", f"it arrives with {issue}; see the README's roadmap")

    action.__name__ = f"_{what}"
    return action


# -- tasks -----------------------------------------------------------------------------


def task_new_run() -> dict[str, Any]:
    return _task(
        "write runs/R/plan.yaml (a starting plan, or --template)",
        _new_run,
        _RUN,
        {"name": "template", "long": "template", "type": str, "default": "", "help": "plan template name or path"},
        {"name": "project_type", "long": "project-type", "type": str, "default": ""},
        {"name": "features", "long": "features", "type": str, "default": ""},
        {"name": "from_md", "long": "from-md", "type": str, "default": ""},
    )


def task_validate() -> dict[str, Any]:
    return _task("validate plans, profiles and run artifacts (exit 2 on errors)", _validate, _RUN)


def task_start_run() -> dict[str, Any]:
    return _task("freeze the plan, compile the strategy, create branch and worktree", _start_run, _RUN)


def task_run_phase() -> dict[str, Any]:
    return _task("drive the next (or --phase) phase to COMPLETE or FAILED", _run_phase, _RUN, _PHASE)


def task_run_all() -> dict[str, Any]:
    # doit reserves the task name `run`; `doit run --run R` reaches this task through
    # cli.RunCommand.
    return _task("drive the run to a terminal state (also: `doit run --run R`)", _run, _RUN)


def task_status() -> dict[str, Any]:
    return _task("where a run (or every run) stands", _status, _RUN, _JSON)


def task_submit() -> dict[str, Any]:
    return _task(
        "hand in an external builder's patch for a phase",
        _submit,
        _RUN,
        _PHASE,
        {"name": "patch", "long": "patch", "type": str, "default": ""},
        {"name": "result", "long": "result", "type": str, "default": ""},
    )


def task_schemas() -> dict[str, Any]:
    return _task("write the JSON Schemas of every artifact into schemas/", _schemas)


def task_strategy() -> dict[str, Any]:
    return _task("print a run's compiled strategy and why each value was chosen", _strategy, _RUN)


def task_demo() -> dict[str, Any]:
    return _task(
        "run the whole pipeline on the embedded sample in a temp dir",
        _demo,
        {"name": "keep", "long": "keep", "type": bool, "default": True, "help": "keep the temp dir"},
    )


def task_report() -> dict[str, Any]:
    return _task("DuckDB reports over runs/", _not_yet("report", "the metrics issue (#5)"))


def task_sql() -> dict[str, Any]:
    return _task(
        "ad-hoc SQL over runs/",
        _not_yet("sql", "the metrics issue (#5)"),
        {"name": "query", "long": "query", "type": str, "default": ""},
    )


def task_promote() -> dict[str, Any]:
    return _task(
        "merge an eligible run's branch into its base",
        _not_yet("promote", "the governance issue (#4)"),
        _RUN,
        {"name": "into", "long": "into", "type": str, "default": ""},
        {"name": "check", "long": "check", "type": bool, "default": False},
    )
