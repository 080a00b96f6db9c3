"""The sections of `doit report`: each one DuckDB query over the views, rendered as tables and charts.

One module on purpose: every section is a short query plus its table, read side by side;
splitting them would scatter the report's one vocabulary (limits, labels) over files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.reporting import charts
from pipeline.store import rollup

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection


RUN_LIST_LIMIT = 100


TIER_LIST_LIMIT = 50


BACKLOG_LIMIT = 20


BUDGET_ABORT = "DONE_FAILED_BUDGET_EXHAUSTED"


@dataclass(frozen=True)
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: frozenset[int] = frozenset()  # column positions right-aligned in HTML
    links: dict[int, list[str]] = field(default_factory=dict)  # column -> per-row href ("" for none)


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
            "SELECT state, count(*) AS runs, sum(tokens) AS tokens, sum(cost_usd) AS cost, sum(ci_runs) AS ci, "
            "sum(cost_estimated_usd) AS estimated, sum(cost_reserved_usd) AS reserved, "
            "sum(tokens_reserved) AS tokens_reserved "
            "FROM runs GROUP BY state ORDER BY runs DESC, state",
            [
                ("state", "text", lambda r: r["state"]),
                ("runs", "num", lambda r: _num(r["runs"])),
                ("tokens", "num", lambda r: _num(r["tokens"])),
                ("of which reserved", "num", lambda r: _num(r["tokens_reserved"])),
                ("cost", "num", lambda r: _usd(r["cost"])),
                ("reported", "num", lambda r: _usd((r["cost"] or 0) - (r["estimated"] or 0) - (r["reserved"] or 0))),
                ("estimated", "num", lambda r: _usd(r["estimated"])),
                ("reserved", "num", lambda r: _usd(r["reserved"])),
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
        # a key resolved within its run (fixed by a later attempt) is no open issue
        "WHERE status <> 'resolved' GROUP BY category ORDER BY count(*) DESC, category LIMIT 12",
    )
    return charts.stacked_bar_chart(
        "Issues by category (distinct open keys per run)",
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
        ("Issues by category (distinct open keys per run)", _issues_chart(con)),
        ("Phase outcomes by task category", _outcomes_chart(con)),
    ]
    return Report(runs, _when(totals.get("newest")), summary, sections, figures)
