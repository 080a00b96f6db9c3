"""The reporting tasks: `report`, `sql`, `metrics_diff`, `inspect` and `backlog`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.commands.handler import handled
from pipeline.commands.taskkit import RUN_PARAM, loaded_workspace, make_task, need, workspace_root

if TYPE_CHECKING:
    pass


# The attribute of the report task that carries its up-to-date check's scan to its action
# (the same doit invocation: the Task object is built per invocation).
_SCAN_ATTR = "autopack_scan"


_FORMAT = {
    "name": "fmt",
    "long": "format",
    "type": str,
    "default": "table",
    "help": "table | csv | json | markdown",
}




def _inspect(run: str) -> None:
    from pipeline.commands.inspector import inspect_run

    print(inspect_run(workspace_root(), need(run, "run", "doit inspect --run add-jitter")))


def _backlog(limit: int) -> None:
    from pipeline.issues.backlog import derive_backlog, render_top, write_backlog

    backlog = derive_backlog(loaded_workspace())
    path = write_backlog(workspace_root(), backlog)
    statuses = [e.status for e in backlog.issues_by_key.values()]
    counts = {s: statuses.count(s) for s in ("needs_cleanup", "open", "resolved")}
    print(
        f"wrote {path.relative_to(workspace_root())}: {len(backlog.issues_by_key)} issue key(s) "
        f"from {backlog.runs_read} run(s); "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
    )
    if backlog.issues_by_key:
        print(render_top(backlog, limit))


def task_inspect() -> dict[str, Any]:
    return make_task(
        "write runs/<run>/inspect.html: the run's whole story on one offline page (also at every terminal state)",
        _inspect,
        RUN_PARAM,
    )


def _report(task: Any) -> None:
    from pipeline.reporting.report import build_report

    stamps = getattr(task, _SCAN_ATTR, None)  # None: doit ran the action without the check
    if stamps is not None:
        delattr(task, _SCAN_ATTR)
    built = build_report(workspace_root(), stamps)
    paths = " and ".join(str(p.relative_to(workspace_root())) for p in built.paths)
    print(f"wrote {paths}: {built.runs} run(s), {built.reread} re-read into the rollup")


def _report_uptodate(task: Any, values: dict[str, Any]) -> bool:
    # A stat-based fingerprint of every run.json and run_issue_index.json (no file is
    # opened, no duckdb import): fast at 10,000 runs, and it is computed only when the
    # report task is selected, unlike a file_dep list built at every task load.
    from pipeline.reporting.report import INDEX_HTML, INDEX_MD, fingerprint
    from pipeline.store.rollup import scan

    stamps = scan(workspace_root())
    setattr(task, _SCAN_ATTR, stamps)  # the action refreshes the rollup from this scan
    digest = fingerprint(workspace_root(), stamps)
    task.value_savers.append(lambda: {"fingerprint": digest})
    pages = (workspace_root() / p for p in (INDEX_MD, INDEX_HTML))
    current = values.get("fingerprint") == digest and all(page.is_file() for page in pages)
    if current:
        print(f"{INDEX_MD} and {INDEX_HTML} are up to date (no run changed); `doit forget report` forces a rebuild")
    return current


def _sql(query: str, fmt: str) -> None:
    from pipeline.reporting.queries import run_sql

    print(run_sql(workspace_root(), need(query, "query", 'doit sql --query="FROM runs LIMIT 5"'), fmt), end="")


def _metrics_diff(a: str, b: str, fmt: str) -> None:
    from pipeline.reporting.queries import metrics_diff

    example = "doit metrics_diff --a run-1 --b run-2"
    print(metrics_diff(workspace_root(), need(a, "a", example), need(b, "b", example), fmt), end="")


def task_report() -> dict[str, Any]:
    return {
        "doc": "DuckDB reports over runs/: reports/index.md and index.html (skipped when no run changed)",
        "actions": [handled(_report)],
        "targets": ["reports/index.md", "reports/index.html"],  # reports.INDEX_MD, INDEX_HTML
        "uptodate": [_report_uptodate],
        "verbosity": 2,
    }


def task_sql() -> dict[str, Any]:
    return make_task(
        "ad-hoc SQL over runs/ with the views of reports/views.sql (docs/metrics.md)",
        _sql,
        {"name": "query", "long": "query", "type": str, "default": "", "help": "SQL, e.g. FROM runs LIMIT 5"},
        _FORMAT,
    )


def task_metrics_diff() -> dict[str, Any]:
    return make_task(
        "two runs side by side: tokens, cost, attempts, CI runs, issues by severity, duration",
        _metrics_diff,
        {"name": "a", "long": "a", "type": str, "default": "", "help": "the first run id"},
        {"name": "b", "long": "b", "type": str, "default": "", "help": "the second run id"},
        _FORMAT,
    )


def task_backlog() -> dict[str, Any]:
    return make_task(
        "derive the project issue backlog (DuckDB over runs/) into reports/project_issue_backlog.json",
        _backlog,
        {"name": "limit", "long": "limit", "type": int, "default": 10, "help": "how many top keys to print"},
    )


