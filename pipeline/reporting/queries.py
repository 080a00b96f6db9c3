"""`doit sql` and `doit metrics_diff`: ad-hoc DuckDB queries over the views, in four output formats.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import InvalidInput
from pipeline.reporting.render import md_table
from pipeline.reporting.sections import Table
from pipeline.store import rollup

if TYPE_CHECKING:
    pass


FORMATS = ("table", "csv", "json", "markdown")




def _plain(value: Any) -> Any:
    """A DuckDB value as plain JSON data (timestamps as ISO text, decimals as numbers)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    return value


def _cell(value: Any, null: str) -> str:
    if value is None:
        return null
    plain = _plain(value)
    if isinstance(plain, dict | list):
        return json.dumps(plain, ensure_ascii=False, sort_keys=False)
    return str(plain)


def format_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    if fmt == "json":
        data = [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(v, "") for v in row] for row in rows)
        return out.getvalue()
    cells = [[_cell(v, "NULL") for v in row] for row in rows]
    if fmt == "markdown":
        table = Table(list(columns), [[c.replace("\n", " ") for c in row] for row in cells])
        return "\n".join(md_table(table)).rstrip() + "\n"
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines) + "\n"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown --format {fmt!r}", f"use one of: {', '.join(FORMATS)}")
    return fmt


def run_sql(workspace: Path, query: str, fmt: str = "table") -> str:
    """Run `query` with every view defined; a query DuckDB rejects is InvalidInput (exit 2)."""
    import duckdb

    check_format(fmt)
    if not query.strip():
        raise InvalidInput("empty --query", 'pass SQL, e.g. `doit sql --query="FROM runs LIMIT 5"`')
    with rollup.connect(workspace, query=query) as con:
        try:
            cur = con.execute(query)
            columns = [d[0] for d in cur.description or []]
            rows = cur.fetchall() if columns else []
        except duckdb.Error as exc:
            raise InvalidInput(
                f"the query failed: {exc}",
                'the views are listed by `doit sql --query="SHOW TABLES"`; docs/metrics.md has examples',
            ) from exc
    return format_rows(columns, rows, fmt)


DIFF_SQL = """
SELECT r.run_id, r.state, r.debt_status, r.promotion_eligible_to_main AS promotion_eligible,
       r.tokens, r.cost_usd, r.builder_attempts, r.auditor_attempts,
       r.builder_attempts + r.auditor_attempts AS attempts, r.ci_runs,
       r.phases_complete, r.phases_total,
       count(i.issue_key) FILTER (i.effective_severity = 'minor' AND i.status = 'open') AS minor_issues,
       count(i.issue_key) FILTER (i.effective_severity = 'major' AND i.status = 'open') AS major_issues,
       coalesce(sum(i.occurrence_count), 0) AS issue_occurrences,
       r.duration_s, r.active_seconds
FROM runs AS r LEFT JOIN run_issues AS i USING (run_id)
GROUP BY ALL
"""


DIFF_METRICS = (
    ("state", "state"),
    ("debt_status", "debt status"),
    ("promotion_eligible", "promotion eligible"),
    ("tokens", "tokens"),
    ("cost_usd", "cost (USD)"),
    ("attempts", "attempts"),
    ("builder_attempts", "  builder"),
    ("auditor_attempts", "  auditor"),
    ("ci_runs", "CI runs"),
    ("phases_complete", "phases complete"),
    ("phases_total", "phases"),
    ("minor_issues", "issues: minor"),
    ("major_issues", "issues: major"),
    ("issue_occurrences", "issue occurrences"),
    ("duration_s", "duration (s, start to end)"),
    ("active_seconds", "active time (s)"),
)


def _delta(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, int | float) or not isinstance(b, int | float):
        return "same" if a == b else "differs"
    delta = b - a
    return round(delta, 6) if isinstance(delta, float) else delta


def metrics_diff(workspace: Path, a: str, b: str, fmt: str = "table") -> str:
    """Two runs side by side: one row per metric, the runs as columns, and b - a."""
    check_format(fmt)
    for run_id in (a, b):
        if not (Path(workspace) / "runs" / run_id / "run.json").is_file():
            raise InvalidInput(
                f"no run {run_id!r}: runs/{run_id}/run.json not found",
                "`doit status` lists the runs; a run has a run.json once `doit start_run` made it",
            )
    with rollup.connect_runs(workspace, [a, b]) as con:
        try:
            found = {row["run_id"]: row for row in rollup.query_rows(con, DIFF_SQL)}
        except Exception as exc:
            if not rollup.is_duckdb_error(exc):
                raise
            raise InvalidInput(
                f"cannot read the records of runs {a} and {b} ({str(exc).splitlines()[0]})",
                f"`doit validate --run {a}` (and --run {b}) names the broken artifact; fix or remove it",
            ) from exc
    for run_id in (a, b):
        if run_id not in found:
            raise InvalidInput(
                f"runs/{run_id}/run.json names another run id", "a run's directory is named after its run_id"
            )
    columns = ["metric", a, b if b != a else f"{b} (again)", "delta (b - a)"]
    rows = [
        [label, _plain(found[a][key]), _plain(found[b][key]), _delta(found[a][key], found[b][key])]
        for key, label in DIFF_METRICS
    ]
    return format_rows(columns, rows, fmt)
