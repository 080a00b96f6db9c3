"""The doit task factories. `dodo.py` re-exports them; `python -m pipeline`
loads this module directly, so both run the same tasks.

Actions are thin: parse options, call one function below L6, print the outcome. Errors go
through `cli.handled`, the single top-level handler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.commands.handler import handled

if TYPE_CHECKING:
    from pipeline.config.workspace import Workspace

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


def _loaded_workspace() -> Workspace:
    """The workspace with its configuration, loaded once for this task and passed down."""
    from pipeline.config.workspace import Workspace

    return Workspace(Path.cwd())


def _need(value: str, option: str, example: str) -> str:
    if not value:
        from pipeline.core.errors import InvalidInput

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


def _new_run(run: str, template: str, project_type: str, features: str, from_md: str, description: str) -> None:
    from pipeline.plan.generate import new_run, reuse_summary

    path = new_run(
        _loaded_workspace(),
        _need(run, "run", "doit new_run --run add-jitter"),
        template,
        project_type,
        features,
        from_md,
        description,
    )
    print(f"wrote {path.relative_to(_workspace()) if path.is_relative_to(_workspace()) else path}")
    for line in reuse_summary(path):
        print(f"  {line}")
    print(f"next: edit it, then `doit validate --run {run}` and `doit start_run --run {run}`")


def _validate(run: str) -> None:
    from pipeline.commands.validate import validate_workspace
    from pipeline.core.errors import ValidationErrors

    problems = validate_workspace(_loaded_workspace(), run or None)
    if problems:
        raise ValidationErrors(problems, "fix each problem at the place named; `doit validate` rechecks")
    print(f"ok: {'run ' + run if run else 'workspace'} validates")


def _start_run(run: str) -> None:
    from pipeline.run.start import start_run

    record = start_run(_loaded_workspace(), _need(run, "run", "doit start_run --run add-jitter"))
    print(f"run {record.run_id} started: {record.state.value}, branch {record.branch} from {record.base_ref}")
    print(f"worktree {record.worktree}; {len(record.phases)} phase(s) in {len(record.tiers)} tier(s)")
    print(f"next: `doit run --run {record.run_id}` (or one phase: `doit run_phase --run {record.run_id}`)")


def _print_outcome(outcome: Any) -> None:
    print(f"{outcome.message}")
    print(f"run {outcome.run_id}: {outcome.run_state.value}")


def _exit_for(state: Any) -> None:
    from pipeline.core.errors import StepFailed
    from pipeline.models.enums import RunState

    if state.terminal and state != RunState.DONE_SUCCESS:
        raise StepFailed(f"run ended {state.value}", "read the run's RUN_SUMMARY.md and incident/ folder")


def _run_phase(run: str, phase: str) -> None:
    from pipeline.run.driver import run_phase

    outcome = run_phase(_loaded_workspace(), _need(run, "run", "doit run_phase --run add-jitter"), phase or None)
    _print_outcome(outcome)
    _exit_for(outcome.run_state)


def _run(run: str) -> None:
    from pipeline.run.driver import run_to_end

    outcomes = run_to_end(_loaded_workspace(), _need(run, "run", "doit run --run add-jitter"))
    for outcome in outcomes:
        print(outcome.message)
    last = outcomes[-1]
    print(f"run {last.run_id}: {last.run_state.value}")
    _exit_for(last.run_state)


def _status(run: str, as_json: bool) -> None:
    from pipeline.commands import status

    data: Any = status.run_status(_workspace(), run) if run else status.all_status(_workspace())
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    elif run:
        print(status.render_run(data))
    else:
        print(status.render_all(data))


def _submit(run: str, phase: str, patch: str, result: str) -> None:
    from pipeline.run.driver import submit_patch

    outcome = submit_patch(
        _loaded_workspace(),
        _need(run, "run", "doit submit --run R --phase P --patch change.diff"),
        _need(phase, "phase", "doit submit --run R --phase P --patch change.diff"),
        Path(_need(patch, "patch", "doit submit --run R --phase P --patch change.diff")),
        Path(result) if result else None,
    )
    _print_outcome(outcome)
    _exit_for(outcome.run_state)


def _schemas() -> None:
    from pipeline.core.schemas import write_schemas

    written = write_schemas(_workspace() / "schemas")
    print(f"wrote {len(written)} schema file(s) to schemas/")


def _strategy(run: str) -> None:
    from pipeline.commands.explain import explain_strategy

    print(explain_strategy(_workspace(), _need(run, "run", "doit strategy --run add-jitter")))


def _demo(keep: bool) -> None:
    from pipeline.commands.demo import run_demo

    run_demo(keep=keep)


def _inspect(run: str) -> None:
    from pipeline.commands.inspector import inspect_run

    print(inspect_run(_workspace(), _need(run, "run", "doit inspect --run add-jitter")))


def _init() -> None:
    from pipeline.commands.init import init_workspace

    print(init_workspace(_workspace()).render())


def _promote(run: str, into: str, check: bool) -> None:
    from pipeline.run.promote import check_promotion, promote

    run_id = _need(run, "run", "doit promote --run add-jitter")
    act = check_promotion if check else promote
    print(act(_workspace(), run_id, into or None).message)


def _backlog(limit: int) -> None:
    from pipeline.issues.backlog import derive_backlog, render_top, write_backlog

    backlog = derive_backlog(_loaded_workspace())
    path = write_backlog(_workspace(), backlog)
    statuses = [e.status for e in backlog.issues_by_key.values()]
    counts = {s: statuses.count(s) for s in ("needs_cleanup", "open", "resolved")}
    print(
        f"wrote {path.relative_to(_workspace())}: {len(backlog.issues_by_key)} issue key(s) "
        f"from {backlog.runs_read} run(s); "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    if backlog.issues_by_key:
        print(render_top(backlog, limit))


# -- tasks -----------------------------------------------------------------------------


def task_new_run() -> dict[str, Any]:
    return _task(
        "write runs/R/plan.yaml (a starting plan, or --template)",
        _new_run,
        _RUN,
        {"name": "template", "long": "template", "type": str, "default": "", "help": "plan template name or path"},
        {"name": "project_type", "long": "project-type", "type": str, "default": ""},
        {"name": "features", "long": "features", "type": str, "default": ""},
        {"name": "from_md", "long": "from-md", "type": str, "default": "", "help": "a markdown plan to normalise"},
        {"name": "description", "long": "description", "type": str, "default": "", "help": "text, or a file"},
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


def task_inspect() -> dict[str, Any]:
    return _task(
        "write runs/<run>/inspect.html: the run's whole story on one offline page (also at every terminal state)",
        _inspect,
        _RUN,
    )


def task_init() -> dict[str, Any]:
    return _task(
        "adopt Autopack here: profiles/, catalog/, runs/, dodo.py, doit.cfg, .gitignore (never overwrites)", _init
    )


def _init_ci(provider: str, output: str) -> None:
    from pipeline.commands.init_ci import write_ci

    print(write_ci(_workspace(), provider, output).render(_workspace()))


_INIT_CI_PARAMS: tuple[dict[str, Any], ...] = (
    {"name": "provider", "long": "provider", "type": str, "default": "", "help": "github | gitlab"},
    {"name": "output", "long": "output", "type": str, "default": "", "help": "default: the provider's file"},
)


def task_init_ci() -> dict[str, Any]:
    return _task(
        "write a CI workflow driving runs one `doit run_phase` per job (--provider github|gitlab; never overwrites)",
        _init_ci,
        *_INIT_CI_PARAMS,
    )


def task_init_ci_dashed() -> dict[str, Any]:
    # The same task as `doit init-ci` (doit accepts a dash in a basename).
    return {**task_init_ci(), "basename": "init-ci", "doc": "the same as init_ci"}


# The attribute of the report task that carries its up-to-date check's scan to its action
# (the same doit invocation: the Task object is built per invocation).
_SCAN_ATTR = "autopack_scan"


def _report(task: Any) -> None:
    from pipeline.reporting.report import build_report

    stamps = getattr(task, _SCAN_ATTR, None)  # None: doit ran the action without the check
    if stamps is not None:
        delattr(task, _SCAN_ATTR)
    built = build_report(_workspace(), stamps)
    paths = " and ".join(str(p.relative_to(_workspace())) for p in built.paths)
    print(f"wrote {paths}: {built.runs} run(s), {built.reread} re-read into the rollup")


def _report_uptodate(task: Any, values: dict[str, Any]) -> bool:
    # A stat-based fingerprint of every run.json and run_issue_index.json (no file is
    # opened, no duckdb import): fast at 10,000 runs, and it is computed only when the
    # report task is selected, unlike a file_dep list built at every task load.
    from pipeline.reporting.report import INDEX_HTML, INDEX_MD, fingerprint
    from pipeline.reporting.rollup import scan

    stamps = scan(_workspace())
    setattr(task, _SCAN_ATTR, stamps)  # the action refreshes the rollup from this scan
    digest = fingerprint(_workspace(), stamps)
    task.value_savers.append(lambda: {"fingerprint": digest})
    current = values.get("fingerprint") == digest and all((_workspace() / p).is_file() for p in (INDEX_MD, INDEX_HTML))
    if current:
        print(f"{INDEX_MD} and {INDEX_HTML} are up to date (no run changed); `doit forget report` forces a rebuild")
    return current


def _sql(query: str, fmt: str) -> None:
    from pipeline.reporting.queries import run_sql

    print(run_sql(_workspace(), _need(query, "query", 'doit sql --query="FROM runs LIMIT 5"'), fmt), end="")


def _metrics_diff(a: str, b: str, fmt: str) -> None:
    from pipeline.reporting.queries import metrics_diff

    example = "doit metrics_diff --a run-1 --b run-2"
    print(metrics_diff(_workspace(), _need(a, "a", example), _need(b, "b", example), fmt), end="")


_FORMAT = {
    "name": "fmt",
    "long": "format",
    "type": str,
    "default": "table",
    "help": "table | csv | json | markdown",
}


def task_report() -> dict[str, Any]:
    return {
        "doc": "DuckDB reports over runs/: reports/index.md and index.html (skipped when no run changed)",
        "actions": [handled(_report)],
        "targets": ["reports/index.md", "reports/index.html"],  # reports.INDEX_MD, INDEX_HTML
        "uptodate": [_report_uptodate],
        "verbosity": 2,
    }


def task_sql() -> dict[str, Any]:
    return _task(
        "ad-hoc SQL over runs/ with the views of reports/views.sql (docs/metrics.md)",
        _sql,
        {"name": "query", "long": "query", "type": str, "default": "", "help": "SQL, e.g. FROM runs LIMIT 5"},
        _FORMAT,
    )


def task_metrics_diff() -> dict[str, Any]:
    return _task(
        "two runs side by side: tokens, cost, attempts, CI runs, issues by severity, duration",
        _metrics_diff,
        {"name": "a", "long": "a", "type": str, "default": "", "help": "the first run id"},
        {"name": "b", "long": "b", "type": str, "default": "", "help": "the second run id"},
        _FORMAT,
    )


def task_promote() -> dict[str, Any]:
    return _task(
        "merge an eligible run's branch into its base (--check: only print the verdict, exit 1 if not eligible)",
        _promote,
        _RUN,
        {"name": "into", "long": "into", "type": str, "default": "", "help": "target branch (default: run's base)"},
        {"name": "check", "long": "check", "type": bool, "default": False, "help": "only print the verdict"},
    )


def task_backlog() -> dict[str, Any]:
    return _task(
        "derive the project issue backlog (DuckDB over runs/) into reports/project_issue_backlog.json",
        _backlog,
        {"name": "limit", "long": "limit", "type": int, "default": 10, "help": "how many top keys to print"},
    )


def _save_template(run: str, name: str, project_type: str) -> None:
    from pipeline.plan.generate import save_template

    example = "doit save_template --run R --name base"
    path = save_template(_workspace(), _need(run, "run", example), _need(name, "name", example), project_type)
    print(f"wrote {path.relative_to(_workspace()) if path.is_relative_to(_workspace()) else path}")
    print(f"start from it: `doit new_run --run NEW --template {path.parent.name}/{path.stem}`")


def _catalog_scan(repo: str, feature: str, run_tests: bool, metadata: str, name: str, timeout: int) -> None:
    from pipeline.plan.scan import scan_to_file

    example = "doit catalog_scan --repo ../clone --feature auth_basic"
    report, path = scan_to_file(
        _workspace(),
        _need(repo, "repo", example),
        _need(feature, "feature", example),
        run_tests=run_tests,
        metadata=metadata or None,
        name=name or None,
        timeout_s=timeout,
    )
    print(f"wrote {path.relative_to(_workspace()) if path.is_relative_to(_workspace()) else path}")
    print(
        f"verdict {report.verdict}: quality {report.scores.quality:.2f}, match {report.match.score:.2f}, "
        f"licence {report.licence_detected or 'none found'}"
    )
    for reason in report.reasons:
        print(f"  - {reason}")


def task_save_template() -> dict[str, Any]:
    return _task(
        "save a run's plan as catalog/templates/<project_type>/<name>.yaml",
        _save_template,
        _RUN,
        {"name": "name", "long": "name", "type": str, "default": "", "help": "template name"},
        {"name": "project_type", "long": "project-type", "type": str, "default": "", "help": "default: the plan's"},
    )


def task_catalog_scan() -> dict[str, Any]:
    return _task(
        "evaluate a local clone as a catalog source; writes catalog/candidates/<feature>-<name>.yaml",
        _catalog_scan,
        {"name": "repo", "long": "repo", "type": str, "default": "", "help": "local path or file:// URL"},
        {"name": "feature", "long": "feature", "type": str, "default": "", "help": "catalog feature"},
        {"name": "run_tests", "long": "run-tests", "type": bool, "default": False, "help": "run its pytest suite"},
        {"name": "metadata", "long": "metadata", "type": str, "default": "", "help": "JSON file: stars, forks, url"},
        {"name": "name", "long": "name", "type": str, "default": "", "help": "candidate name (default: dir name)"},
        {"name": "timeout", "long": "timeout", "type": int, "default": 300, "help": "test timeout in seconds"},
    )


def _git_worker(outbox: str, once: bool, idle_exit: float) -> None:
    import os

    from pipeline.vcs.codec import OUTBOX_ENV
    from pipeline.vcs.worker import serve

    where = outbox or os.environ.get(OUTBOX_ENV, "").strip()
    path = Path(_need(where, "outbox", "doit git_worker --outbox .autopack/git-outbox")).absolute()
    print(f"git worker serving {path} (supervisors set {OUTBOX_ENV}={path}); Ctrl-C or SIGTERM stops it", flush=True)
    stats = serve(path, once=once, idle_exit_s=idle_exit or None, log=lambda line: print(line, flush=True))
    print(f"git worker stopped: {stats.render()}")


def task_git_worker() -> dict[str, Any]:
    return _task(
        "apply the git operations supervisors write to an outbox (run it where git is; see docs/remote-git-worker.md)",
        _git_worker,
        {
            "name": "outbox",
            "long": "outbox",
            "type": str,
            "default": "",
            "help": "the outbox directory shared with the supervisors (default: $AUTOPACK_GIT_OUTBOX)",
        },
        {"name": "once", "long": "once", "type": bool, "default": False, "help": "apply what is pending, then exit"},
        {
            "name": "idle_exit",
            "long": "idle-exit",
            "type": float,
            "default": 0.0,
            "help": "exit after this many seconds without a request (0: never)",
        },
    )
