"""`doit report`, `doit sql` and `doit metrics_diff`: DuckDB over the run tree (layer L5).

The SQL lives in two places: views.sql (what every view means; shared with the DuckDB
CLI) and the report queries below, written against those views only, so a number on the
report can be re-derived with `doit sql`. The report is deterministic: it names the
newest run update it saw, not the time it was made, so an unchanged run tree gives an
unchanged page.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import charts, rollup
from pipeline.errors import InvalidInput
from pipeline.jsonio import write_text_atomic

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

# Bump when the report's content or layout changes: an up-to-date report is rebuilt.
REPORT_FORMAT = "1"
INDEX_MD = rollup.REPORTS_DIR / "index.md"
INDEX_HTML = rollup.REPORTS_DIR / "index.html"
FORMATS = ("table", "csv", "json", "markdown")
RUN_LIST_LIMIT = 100
TIER_LIST_LIMIT = 50
BACKLOG_LIMIT = 20
BUDGET_ABORT = "DONE_FAILED_BUDGET_EXHAUSTED"


def fingerprint(workspace: Path) -> str:
    """What `doit report` compares to decide it is up to date (stat calls only)."""
    return rollup.fingerprint(workspace, extra=f"report {REPORT_FORMAT}")


# -- the report's content -----------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: frozenset[int] = frozenset()  # column positions right-aligned in HTML


@dataclass
class Section:
    title: str
    anchor: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


@dataclass
class Report:
    runs: int
    newest_update: str
    summary: list[str]
    sections: list[Section]
    charts: list[tuple[str, str]]  # (title, svg)


def _num(value: Any) -> str:
    """A count or token figure: whole numbers with thousands separators."""
    if value is None:
        return "—"
    return f"{round(value):,}"


def _plural(n: Any, word: str) -> str:
    return f"{_num(n)} {word}{'' if n == 1 else 's'}"


def _usd(value: Any) -> str:
    if value is None:
        return "—"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:,.4f}"


def _pct(part: Any, whole: Any) -> str:
    return "—" if not whole else f"{100 * (part or 0) / whole:.0f}%"


def _text(value: Any, limit: int = 100) -> str:
    if value is None:
        return ""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, dt.datetime) else "—"


def _table(
    con: DuckDBPyConnection,
    sql: str,
    columns: Sequence[tuple[str, str, Callable[[dict[str, Any]], str]]],
    caption: str = "",
    params: Sequence[Any] = (),
) -> Table:
    """Rows of `sql` shaped by `columns`: (header, kind: "num" or "text", formatter)."""
    rows = rollup.query_rows(con, sql, params)
    return Table(
        headers=[c[0] for c in columns],
        rows=[[fmt(row) for _, _, fmt in columns] for row in rows],
        caption=caption,
        numeric=frozenset(i for i, c in enumerate(columns) if c[1] == "num"),
    )


def _one(con: DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> dict[str, Any]:
    rows = rollup.query_rows(con, sql, params)
    return rows[0] if rows else {}


def _runs_section(con: DuckDBPyConnection, total: int) -> Section:
    section = Section("Runs", "runs")
    section.tables.append(
        _table(
            con,
            "SELECT state, count(*) AS runs, sum(tokens) AS tokens, sum(cost_usd) AS cost, sum(ci_runs) AS ci "
            "FROM runs GROUP BY state ORDER BY runs DESC, state",
            [
                ("state", "text", lambda r: r["state"]),
                ("runs", "num", lambda r: _num(r["runs"])),
                ("tokens", "num", lambda r: _num(r["tokens"])),
                ("cost", "num", lambda r: _usd(r["cost"])),
                ("CI runs", "num", lambda r: _num(r["ci"])),
            ],
            "by state",
        )
    )
    shown = min(total, RUN_LIST_LIMIT)
    caption = ("the newest run" if shown == 1 else f"the {shown} newest runs") + (
        f' of {total:,} (all of them: `doit sql --query="FROM runs ORDER BY created_at DESC"`)' if total > shown else ""
    )
    section.tables.append(
        _table(
            con,
            "SELECT run_id, state, debt_status, safety_profile, run_scope, failure_reason, tokens, cost_usd, "
            "ci_runs, created_at FROM runs ORDER BY created_at DESC NULLS LAST, run_id DESC LIMIT ?",
            [
                ("run", "text", lambda r: r["run_id"]),
                ("state", "text", lambda r: r["state"]),
                ("debt", "text", lambda r: r["debt_status"] or ""),
                ("safety", "text", lambda r: r["safety_profile"] or ""),
                ("scope", "text", lambda r: r["run_scope"] or ""),
                ("failure reason", "text", lambda r: _text(r["failure_reason"])),
                ("tokens", "num", lambda r: _num(r["tokens"])),
                ("cost", "num", lambda r: _usd(r["cost_usd"])),
                ("CI runs", "num", lambda r: _num(r["ci_runs"])),
                ("started", "text", lambda r: _when(r["created_at"])),
            ],
            caption,
            [RUN_LIST_LIMIT],
        )
    )
    return section


def _tiers_section(con: DuckDBPyConnection) -> Section:
    counts = _one(
        con,
        "SELECT count(*) AS tiers, count(*) FILTER (cleanliness = 'clean') AS clean, "
        "count(*) FILTER (cleanliness = 'not_clean') AS not_clean, count(*) FILTER (cleanliness IS NULL) AS open, "
        "count(DISTINCT run_id) FILTER (promotion_blocked) AS blocked_runs FROM tiers",
    )
    section = Section("Tier cleanliness", "tiers")
    section.paragraphs.append(
        f"{_plural(counts.get('tiers') or 0, 'tier')}: {_num(counts.get('clean'))} clean, "
        f"{_num(counts.get('not_clean'))} not_clean, {_num(counts.get('open'))} not finished. "
        f"A not_clean tier blocks its run's promotion (promotion_blocked): "
        f"{_plural(counts.get('blocked_runs') or 0, 'run')} blocked by at least one."
    )
    section.tables.append(
        _table(
            con,
            "SELECT run_id, tier_id, name, state, cleanliness, promotion_blocked, "
            "array_to_string(cleanliness_reasons, '; ') AS reasons, tokens, ci_runs FROM tiers "
            "ORDER BY run_created_at DESC NULLS LAST, run_id DESC, tier_index LIMIT ?",
            [
                ("run", "text", lambda r: r["run_id"]),
                ("tier", "text", lambda r: r["tier_id"]),
                ("name", "text", lambda r: _text(r["name"], 40)),
                ("state", "text", lambda r: r["state"]),
                ("cleanliness", "text", lambda r: r["cleanliness"] or "—"),
                ("promotion blocked", "text", lambda r: "yes" if r["promotion_blocked"] else "no"),
                ("reasons", "text", lambda r: _text(r["reasons"])),
                ("tokens", "num", lambda r: _num(r["tokens"])),
                ("CI runs", "num", lambda r: _num(r["ci_runs"])),
            ],
            f"tiers of the newest runs (at most {TIER_LIST_LIMIT})",
            [TIER_LIST_LIMIT],
        )
    )
    return section


def _backlog_section(con: DuckDBPyConnection) -> Section:
    section = Section("Issue backlog: top keys", "backlog")
    section.paragraphs.append(
        "Issue keys ranked by the distinct runs they appeared in, then distinct tiers, then occurrences "
        "(the `backlog` view, derived from every run's run_issue_index.json). needs_cleanup: aged past the "
        "safety profile's thresholds."
    )
    section.tables.append(
        _table(
            con,
            "SELECT project_id, issue_key, category, base_severity, effective_severity, age_in_runs, age_in_tiers, "
            "occurrences, last_seen_run_id, status FROM backlog "
            "ORDER BY age_in_runs DESC, age_in_tiers DESC, occurrences DESC, project_id, issue_key LIMIT ?",
            [
                ("project", "text", lambda r: r["project_id"]),
                ("issue key", "text", lambda r: _text(r["issue_key"], 80)),
                ("category", "text", lambda r: r["category"]),
                (
                    "severity",
                    "text",
                    lambda r: (
                        r["base_severity"]
                        + ("" if r["effective_severity"] == r["base_severity"] else f" → {r['effective_severity']}")
                    ),
                ),
                ("runs", "num", lambda r: _num(r["age_in_runs"])),
                ("tiers", "num", lambda r: _num(r["age_in_tiers"])),
                ("occurrences", "num", lambda r: _num(r["occurrences"])),
                ("last seen", "text", lambda r: r["last_seen_run_id"]),
                ("status", "text", lambda r: r["status"]),
            ],
            params=[BACKLOG_LIMIT],
        )
    )
    return section


def _budget_section(con: DuckDBPyConnection) -> Section:
    section = Section("Budget aborts", "budget")
    aborted = _one(
        con,
        "SELECT count(*) AS runs, sum(tokens) AS tokens, sum(cost_usd) AS cost, "
        "(SELECT count(*) FROM runs) AS all_runs, (SELECT sum(tokens) FROM runs) AS all_tokens FROM runs "
        "WHERE state = ?",
        [BUDGET_ABORT],
    )
    if aborted.get("runs"):
        section.paragraphs.append(
            f"{_num(aborted['runs'])} of {_num(aborted['all_runs'])} runs ended {BUDGET_ABORT} "
            f"({_pct(aborted['runs'], aborted['all_runs'])}), spending {_num(aborted['tokens'])} tokens "
            f"({_pct(aborted['tokens'], aborted['all_tokens'])} of all tokens), {_usd(aborted['cost'])}."
        )
    else:
        section.paragraphs.append(f"No run ended {BUDGET_ABORT}.")
    section.tables.append(
        _aborted_spend_by(
            con,
            "tiers",
            "tier_id",
            ("tier", "runs", "failed here"),
            "which tiers the spend of budget-aborted runs went to",
        )
    )
    section.tables.append(
        _aborted_spend_by(
            con,
            "phases",
            "slice",
            ("task_category:complexity", "phases", "failed"),
            "which task_category:complexity slices dominated that spend",
        )
    )
    section.tables.append(
        _table(
            con,
            "SELECT CASE WHEN r.state = ? THEN 'budget-aborted runs' ELSE 'other runs' END AS scope, "
            "count(*) FILTER (p.auditor_attempts > 0) AS audited, "
            "count(*) FILTER (p.auditor_attempts > 0 AND p.state = 'COMPLETE') AS audited_complete, "
            "sum(p.auditor_attempts) AS auditor_attempts, sum(p.tokens) FILTER (p.auditor_attempts > 0) AS tokens, "
            "count(*) FILTER (p.auditor_attempts = 0 AND p.attempts > 1) AS retried, "
            "count(*) FILTER (p.auditor_attempts = 0 AND p.attempts > 1 AND p.state = 'COMPLETE') AS retried_complete "
            "FROM phase_records AS p JOIN runs AS r USING (run_id) GROUP BY scope ORDER BY scope",
            [
                ("runs", "text", lambda r: r["scope"]),
                ("phases with auditor attempts", "num", lambda r: _num(r["audited"])),
                (
                    "of them accepted",
                    "num",
                    lambda r: f"{_num(r['audited_complete'])} ({_pct(r['audited_complete'], r['audited'])})",
                ),
                ("auditor attempts", "num", lambda r: _num(r["auditor_attempts"])),
                ("tokens in those phases", "num", lambda r: _num(r["tokens"])),
                (
                    "retried without auditor: accepted",
                    "num",
                    lambda r: (
                        f"{_num(r['retried_complete'])} of {_num(r['retried'])} "
                        f"({_pct(r['retried_complete'], r['retried'])})"
                    ),
                ),
            ],
            "did auditor attempts help? phases that reached the auditor and were accepted, against phases "
            "retried by the builder alone",
            [BUDGET_ABORT],
        )
    )
    return section


def _aborted_spend_by(
    con: DuckDBPyConnection, view: str, key: str, headers: tuple[str, str, str], caption: str
) -> Table:
    """The spend of budget-aborted runs by `key` of `view` (tiers or phases): rows, FAILED
    rows, tokens, cost and share of tokens; `headers` names the key, row and FAILED columns."""
    return _table(
        con,
        f"SELECT {key} AS item, count(*) AS n, count(*) FILTER (state = 'FAILED') AS failed, sum(tokens) AS tokens, "
        "sum(cost_usd) AS cost, sum(tokens) / nullif(sum(sum(tokens)) OVER (), 0) AS share "
        f"FROM {view} WHERE run_state = ? GROUP BY {key} ORDER BY tokens DESC NULLS LAST, {key} LIMIT 10",
        [
            (headers[0], "text", lambda r: r["item"]),
            (headers[1], "num", lambda r: _num(r["n"])),
            (headers[2], "num", lambda r: _num(r["failed"])),
            ("tokens", "num", lambda r: _num(r["tokens"])),
            ("cost", "num", lambda r: _usd(r["cost"])),
            ("share of tokens", "num", lambda r: _pct(r["share"], 1)),
        ],
        caption,
        [BUDGET_ABORT],
    )


AGENTS_SQL = """
WITH builder AS (SELECT * FROM attempts WHERE role = 'builder'),
first AS (
    SELECT run_id, phase_id, arg_min(agent, k) AS agent, arg_min(outcome, k) AS first_outcome
    FROM builder GROUP BY run_id, phase_id
),
outcome AS (
    SELECT f.agent, count(*) AS phases,
           count(*) FILTER (f.first_outcome IN ('ci_failed', 'passed')) AS first_gate_pass,
           count(*) FILTER (f.first_outcome = 'passed') AS first_accepted,
           count(*) FILTER (p.state = 'COMPLETE') AS accepted
    FROM first AS f JOIN phases AS p USING (run_id, phase_id)
    WHERE f.first_outcome <> 'running'
    GROUP BY f.agent
),
spend AS (SELECT agent, count(*) AS attempts, sum(tokens) AS tokens, sum(cost_usd) AS cost FROM builder GROUP BY agent)
SELECT agent, phases, attempts, first_gate_pass, first_accepted, accepted, tokens, cost,
       tokens / nullif(accepted, 0) AS tokens_per_accepted, cost / nullif(accepted, 0) AS cost_per_accepted
FROM outcome JOIN spend USING (agent)
ORDER BY phases DESC, agent
"""


def _agents_section(con: DuckDBPyConnection) -> Section:
    section = Section("Agent comparison", "agents")
    section.paragraphs.append(
        "By builder agent (the preset name, or `command` for an inline command). First-attempt gate pass: the "
        "first patch got past the gate to CI; first-attempt accepted: it also passed CI. Cost and tokens per "
        "accepted phase: everything the agent's builder attempts spent, divided by the phases accepted."
    )
    section.tables.append(
        _table(
            con,
            AGENTS_SQL,
            [
                ("agent", "text", lambda r: r["agent"]),
                ("phases", "num", lambda r: _num(r["phases"])),
                ("attempts", "num", lambda r: _num(r["attempts"])),
                ("first-attempt gate pass", "num", lambda r: _pct(r["first_gate_pass"], r["phases"])),
                ("first-attempt accepted", "num", lambda r: _pct(r["first_accepted"], r["phases"])),
                ("accepted phases", "num", lambda r: _num(r["accepted"])),
                ("tokens / accepted", "num", lambda r: _num(r["tokens_per_accepted"])),
                ("cost / accepted", "num", lambda r: _usd(r["cost_per_accepted"])),
            ],
        )
    )
    section.tables.append(
        _table(
            con,
            "SELECT task_category, count(*) AS phases, avg(attempts) AS mean_attempts, "
            "count(*) FILTER (accepted) AS accepted, sum(tokens) AS tokens FROM phases WHERE attempts > 0 "
            "GROUP BY task_category ORDER BY phases DESC, task_category",
            [
                ("task_category", "text", lambda r: r["task_category"]),
                ("phases", "num", lambda r: _num(r["phases"])),
                ("mean attempts", "num", lambda r: f"{r['mean_attempts']:.2f}"),
                ("accepted", "num", lambda r: f"{_num(r['accepted'])} ({_pct(r['accepted'], r['phases'])})"),
                ("tokens / accepted", "num", lambda r: _num(r["tokens"] / r["accepted"]) if r["accepted"] else "—"),
            ],
            "mean attempts per phase, by task category (phases that ran at least once)",
        )
    )
    return section


# -- charts ---------------------------------------------------------------------------------

STATE_COLOR = {"DONE_SUCCESS": charts.PALETTE["good"], BUDGET_ABORT: charts.PALETTE["warn"]}
SPEND_BUCKETS = 60


def _spend_chart(con: DuckDBPyConnection) -> str:
    rows = rollup.query_rows(
        con,
        "SELECT run_id, created_at, cost_usd, tokens, state FROM runs "
        "WHERE created_at IS NOT NULL ORDER BY created_at, run_id",
    )
    title = "Spend per run over time"
    if len(rows) <= SPEND_BUCKETS * 2:
        bars = [
            charts.Bar(
                label=r["created_at"].strftime("%m-%d"),
                value=r["cost_usd"] or 0.0,
                tooltip=f"{r['run_id']} ({_when(r['created_at'])}): {_usd(r['cost_usd'])}, "
                f"{_num(r['tokens'])} tokens, {r['state']}",
                color=STATE_COLOR.get(
                    r["state"], charts.PALETTE["bad"] if "FAILED" in r["state"] else charts.PALETTE["neutral"]
                ),
            )
            for r in rows
        ]
        return charts.column_chart(
            title,
            bars,
            "cost per run (USD)",
            "runs in start order; green: DONE_SUCCESS, orange: budget abort, red: other failure",
        )
    start, end = rows[0]["created_at"], rows[-1]["created_at"]
    width = max((end - start) / SPEND_BUCKETS, dt.timedelta(seconds=1))
    buckets: list[list[dict[str, Any]]] = [[] for _ in range(SPEND_BUCKETS)]
    for r in rows:
        buckets[min(int((r["created_at"] - start) / width), SPEND_BUCKETS - 1)].append(r)
    bars = []
    for i, bucket in enumerate(buckets):
        day = start + width * i
        mean = sum(r["cost_usd"] or 0 for r in bucket) / len(bucket) if bucket else 0.0
        bars.append(
            charts.Bar(
                label=day.strftime("%Y-%m-%d"),
                value=mean,
                tooltip=f"from {_when(day)}: {len(bucket)} runs, mean {_usd(mean)} per run, "
                f"total {_usd(sum(r['cost_usd'] or 0 for r in bucket))}",
            )
        )
    return charts.column_chart(
        title, bars, "mean cost per run (USD)", f"{len(rows):,} runs in {SPEND_BUCKETS} equal time buckets"
    )


def _issues_chart(con: DuckDBPyConnection) -> str:
    rows = rollup.query_rows(
        con,
        "SELECT category, count(*) FILTER (effective_severity = 'minor') AS minor, "
        "count(*) FILTER (effective_severity = 'major') AS major FROM run_issues "
        "GROUP BY category ORDER BY count(*) DESC, category LIMIT 12",
    )
    return charts.stacked_bar_chart(
        "Issues by category (distinct keys per run)",
        [charts.StackedRow(r["category"], {"minor": r["minor"], "major": r["major"]}) for r in rows],
        [charts.Series("minor", charts.PALETTE["minor"]), charts.Series("major", charts.PALETTE["major"])],
    )


def _outcomes_chart(con: DuckDBPyConnection) -> str:
    rows = rollup.query_rows(
        con,
        "SELECT task_category, count(*) FILTER (state = 'COMPLETE') AS complete, "
        "count(*) FILTER (state = 'FAILED') AS failed, count(*) FILTER (state = 'SKIPPED') AS skipped, "
        "count(*) FILTER (state NOT IN ('COMPLETE', 'FAILED', 'SKIPPED')) AS not_run FROM phases "
        "GROUP BY task_category ORDER BY count(*) DESC, task_category LIMIT 12",
    )
    return charts.stacked_bar_chart(
        "Phase outcomes by task category",
        [
            charts.StackedRow(
                r["task_category"],
                {
                    "COMPLETE": r["complete"],
                    "FAILED": r["failed"],
                    "SKIPPED": r["skipped"],
                    "not run (yet)": r["not_run"],
                },
            )
            for r in rows
        ],
        [
            charts.Series("COMPLETE", charts.PALETTE["good"]),
            charts.Series("FAILED", charts.PALETTE["bad"]),
            charts.Series("SKIPPED", charts.PALETTE["neutral"]),
            charts.Series("not run (yet)", "#cfd8dc"),
        ],
    )


# -- building -------------------------------------------------------------------------------


def collect(con: DuckDBPyConnection) -> Report:
    totals = _one(
        con,
        "SELECT count(*) AS runs, count(*) FILTER (state = 'DONE_SUCCESS') AS succeeded, "
        "count(*) FILTER (starts_with(state, 'DONE_FAILED')) AS failed, count(*) FILTER (NOT terminal) AS active, "
        "count(*) FILTER (promotion_eligible_to_main) AS eligible, sum(tokens) AS tokens, sum(cost_usd) AS cost, "
        "sum(ci_runs) AS ci, max(updated_at) AS newest FROM runs",
    )
    runs = int(totals.get("runs") or 0)
    summary = [
        f"{_plural(runs, 'run')}: {_num(totals.get('succeeded'))} DONE_SUCCESS, {_num(totals.get('failed'))} "
        f"DONE_FAILED_*, {_num(totals.get('active'))} not finished; {_num(totals.get('eligible'))} eligible for "
        "promotion.",
        f"Spend: {_num(totals.get('tokens'))} tokens, {_usd(totals.get('cost'))}, {_num(totals.get('ci'))} CI runs.",
    ]
    sections = [
        _runs_section(con, runs),
        _tiers_section(con),
        _backlog_section(con),
        _budget_section(con),
        _agents_section(con),
    ]
    figures = [
        ("Spend per run over time", _spend_chart(con)),
        ("Issues by category (distinct keys per run)", _issues_chart(con)),
        ("Phase outcomes by task category", _outcomes_chart(con)),
    ]
    return Report(runs, _when(totals.get("newest")), summary, sections, figures)


@dataclass(frozen=True)
class Built:
    runs: int
    reread: int
    paths: tuple[Path, ...]


def build_report(workspace: Path) -> Built:
    """Refresh the rollup, query it, write reports/index.md and reports/index.html."""
    workspace = Path(workspace)
    reports_dir = workspace / rollup.REPORTS_DIR
    # The views file for `duckdb -init reports/views.sql`, and the empty file it falls back to.
    write_text_atomic(reports_dir / "views.sql", rollup.views_sql())
    write_text_atomic(reports_dir / "none.json", "")
    refreshed = rollup.refresh(workspace)
    with rollup.connect(workspace, refresh_first=False, query="") as con:
        report = collect(con)
    md, html = workspace / INDEX_MD, workspace / INDEX_HTML
    write_text_atomic(md, render_markdown(report))
    write_text_atomic(html, render_html(report))
    return Built(report.runs, refreshed.reread, (md, html))


# -- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or " "


def _md_table(table: Table) -> list[str]:
    lines = [f"*{_md_cell(table.caption)}*", ""] if table.caption else []
    if not table.rows:
        return [*lines, "(none)", ""]
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    lines.append("| " + " | ".join(_md_cell(h) for h in table.headers) + " |")
    lines.append("| " + " | ".join(align) + " |")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return [*lines, ""]


def render_markdown(report: Report) -> str:
    lines = [
        "# Autopack report",
        "",
        f"Generated by `doit report` from runs/ (newest run update {report.newest_update}). "
        'Charts: reports/index.html. Ad-hoc questions: `doit sql --query="..."` (docs/metrics.md).',
        "",
        *[f"- {line}" for line in report.summary],
        "",
    ]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += _md_table(table)
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.4rem 0 1.2rem;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f5f5f5}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding:.2rem 0}
figure{margin:1rem 0 1.6rem}figcaption{font-weight:600;margin:.3rem 0}
nav a{margin-right:1rem}.summary li{margin:.2rem 0}
"""


def _html_text(text: str) -> str:
    """Escaped text with `code` spans (the paragraphs are written for Markdown too)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(text))


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in table.numeric else ""

    parts = ["<table>"]
    if table.caption:
        parts.append(f"<caption>{_html_text(table.caption)}</caption>")
    parts.append("<tr>" + "".join(f"<th{cls(i)}>{escape(h)}</th>" for i, h in enumerate(table.headers)) + "</tr>")
    for row in table.rows:
        parts.append("<tr>" + "".join(f"<td{cls(i)}>{escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    if not table.rows:
        parts.append(f'<tr><td colspan="{len(table.headers)}">(none)</td></tr>')
    parts.append("</table>")
    return "\n".join(parts)


def render_html(report: Report) -> str:
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in report.sections)
    body = [
        "<h1>Autopack report</h1>",
        f"<p>Generated by <code>doit report</code> from runs/ (newest run update {escape(report.newest_update)}). "
        'Ad-hoc questions: <code>doit sql --query="..."</code> (docs/metrics.md).</p>',
        '<ul class="summary">' + "".join(f"<li>{escape(s)}</li>" for s in report.summary) + "</ul>",
        f'<nav><a href="#charts">Charts</a> {nav}</nav>',
        '<h2 id="charts">Charts</h2>',
        *[f"<figure><figcaption>{escape(title)}</figcaption>{svg}</figure>" for title, svg in report.charts],
    ]
    for section in report.sections:
        body.append(f'<h2 id="{section.anchor}">{escape(section.title)}</h2>')
        body += [f"<p>{_html_text(p)}</p>" for p in section.paragraphs]
        body += [_html_table(t) for t in section.tables]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Autopack report</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


# -- doit sql --------------------------------------------------------------------------------


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
        return "\n".join(_md_table(table)).rstrip() + "\n"
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


# -- doit metrics_diff ------------------------------------------------------------------------

DIFF_SQL = """
SELECT r.run_id, r.state, r.debt_status, r.promotion_eligible_to_main AS promotion_eligible,
       r.tokens, r.cost_usd, r.builder_attempts, r.auditor_attempts,
       r.builder_attempts + r.auditor_attempts AS attempts, r.ci_runs,
       r.phases_complete, r.phases_total,
       count(i.issue_key) FILTER (i.effective_severity = 'minor') AS minor_issues,
       count(i.issue_key) FILTER (i.effective_severity = 'major') AS major_issues,
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
        found = {row["run_id"]: row for row in rollup.query_rows(con, DIFF_SQL)}
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
