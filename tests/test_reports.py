"""Reports: the DuckDB views, the rollup, `doit report`, `doit sql`, `doit metrics_diff`.

The fixture workspace holds three runs built with the models (testing/runtree.py):

- r-ok: DONE_SUCCESS, builder `claude`, 3 phases in 2 clean tiers, 4 CI runs, one minor
  test issue (test_x);
- r-budget: DONE_FAILED_BUDGET_EXHAUSTED, builder `codex`, T2 not_clean (P2 failed after
  two CI failures and an auditor attempt), issues gate:size (minor), test_x (minor, twice)
  and budget:tokens (major);
- r-old: DONE_SUCCESS, written "by an older schema version": its run.json lacks
  promoted_commit, promoted_at and debt_status; test_x again.

Every expected number below is worked out by hand from those specs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from pydantic import BaseModel

from pipeline.core.errors import InvalidInput
from pipeline.models.base import ID_PATTERN
from pipeline.models.enums import Complexity, IssueSource, PhaseState, RunState, Severity, TierState
from pipeline.models.events import Event
from pipeline.models.issues import PhaseIssueFile, ProjectBacklog, RunIssueIndex
from pipeline.models.reports import CiReport
from pipeline.models.results import AttemptRecord
from pipeline.models.run import PhaseRecord, RunRecord
from pipeline.reporting.queries import metrics_diff, run_sql
from pipeline.reporting.report import build_report
from pipeline.store import rollup
from testing.runtree import AttemptSpec, IssueSpec, PhaseSpec, RunSpec, TierSpec, write_run

ROOT = Path(__file__).resolve().parent.parent
TEST_X = "test:tests/test_a.py::test_x"
NODE_X = "tests/test_a.py::test_x"

RUNS = [
    RunSpec(
        run_id="r-ok",
        state=RunState.DONE_SUCCESS,
        created_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T01:00:00Z",
        tiers=(
            TierSpec("T1", "Core", TierState.COMPLETE, "clean"),
            TierSpec("T2", "Docs", TierState.COMPLETE, "clean"),
        ),
        phases=(
            PhaseSpec(
                "P1",
                "T1",
                "feature_implementation",
                Complexity.medium,
                PhaseState.COMPLETE,
                (AttemptSpec("passed", 800, 200, 0.01, ci="pass"),),
            ),
            PhaseSpec(
                "P2",
                "T1",
                "bugfix",
                Complexity.low,
                PhaseState.COMPLETE,
                (
                    AttemptSpec("ci_failed", 400, 100, 0.005, ci="fail", failing=(NODE_X,)),
                    AttemptSpec("passed", 600, 100, 0.007, ci="pass"),
                ),
                (IssueSpec(TEST_X, Severity.minor, IssueSource.test, "test_failure"),),
            ),
            PhaseSpec(
                "P3",
                "T2",
                "docs",
                Complexity.low,
                PhaseState.COMPLETE,
                (AttemptSpec("passed", 250, 50, 0.003, ci="pass"),),
            ),
        ),
    ),
    RunSpec(
        run_id="r-budget",
        state=RunState.DONE_FAILED_BUDGET_EXHAUSTED,
        created_at="2026-01-02T00:00:00Z",
        finished_at="2026-01-02T02:00:00Z",
        failure_reason="phase P2: token budget exhausted",
        tiers=(
            TierSpec("T1", "Core", TierState.COMPLETE, "clean"),
            TierSpec(
                "T2", "Schema", TierState.FAILED, "not_clean", ("tier is FAILED", "1 major issue(s) > 0 tolerated")
            ),
        ),
        phases=(
            PhaseSpec(
                "P1",
                "T1",
                "feature_implementation",
                Complexity.medium,
                PhaseState.COMPLETE,
                (
                    AttemptSpec("gate_failed", 1500, 500, 0.02, agent="codex"),
                    AttemptSpec("passed", 2500, 500, 0.03, agent="codex", ci="pass"),
                ),
                (IssueSpec("gate:size", Severity.minor, IssueSource.gate, "gate_size"),),
            ),
            PhaseSpec(
                "P2",
                "T2",
                "schema_contract_change",
                Complexity.high,
                PhaseState.FAILED,
                (
                    AttemptSpec("ci_failed", 8000, 2000, 0.1, agent="codex", ci="fail", failing=(NODE_X,)),
                    AttemptSpec("ci_failed", 8000, 2000, 0.1, agent="codex", ci="fail", failing=(NODE_X,)),
                    AttemptSpec("budget_refused", 3000, 1000, 0.04, agent="codex-review", role="auditor"),
                ),
                (
                    IssueSpec(TEST_X, Severity.minor, IssueSource.test, "test_failure", occurrences=2),
                    IssueSpec("budget:tokens", Severity.major, IssueSource.budget, "budget"),
                ),
            ),
        ),
    ),
    RunSpec(
        run_id="r-old",
        state=RunState.DONE_SUCCESS,
        created_at="2025-12-31T00:00:00Z",
        finished_at="2025-12-31T00:30:00Z",
        tiers=(TierSpec("T1", "Core", TierState.COMPLETE, "clean"),),
        phases=(
            PhaseSpec(
                "P1",
                "T1",
                "tests",
                Complexity.low,
                PhaseState.COMPLETE,
                (AttemptSpec("passed", 300, 100, 0.004, agent="command", ci="pass"),),
                (IssueSpec(TEST_X, Severity.minor, IssueSource.test, "test_failure"),),
            ),
        ),
        drop=("promoted_commit", "promoted_at", "debt_status"),
    ),
]


def build_workspace(root: Path) -> Path:
    for spec in RUNS:
        write_run(root, spec)
    return root


@pytest.fixture(scope="module")
def fixture_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("reports-ws"))


@pytest.fixture
def ws(fixture_ws: Path, tmp_path: Path) -> Path:
    """A private copy of the fixture workspace (tests that write reports or change runs)."""
    return Path(shutil.copytree(fixture_ws, tmp_path / "ws"))


def cli(ws: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=ws, capture_output=True, text=True, timeout=120
    )


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    return rollup.query_rows(con, sql)


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture(params=["rollup", "files"])
def con(request: pytest.FixtureRequest, fixture_ws: Path, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The views over the fixture, read through the rollup and straight from the files."""
    ws = Path(shutil.copytree(fixture_ws, tmp_path / "ws"))
    with rollup.connect(ws, rollup=request.param == "rollup") as connection:
        yield connection


# -- the readers against the JSON Schemas -----------------------------------------------------


def duck_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    """The DuckDB type a JSON Schema (as pydantic writes it) maps to; struct fields sorted."""
    if "$ref" in schema:
        return duck_type(defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:
        types = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return duck_type(types[0], defs) if len(types) == 1 else "JSON"
    if "enum" in schema or "const" in schema:
        return "VARCHAR"
    kind = schema.get("type")
    simple = {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}
    if kind in simple:
        return simple[kind]
    if kind == "array":
        return duck_type(schema["items"], defs) + "[]"
    if kind == "object" and "properties" in schema:
        fields = ", ".join(f"{n} {duck_type(s, defs)}" for n, s in sorted(schema["properties"].items()))
        return f"STRUCT({fields})"
    extra = schema.get("additionalProperties")
    if kind == "object" and isinstance(extra, dict) and extra:
        value = duck_type(extra, defs)
        return "JSON" if value == "JSON" else f"MAP(VARCHAR, {value})"
    return "JSON"


READERS: dict[str, type[BaseModel]] = {
    "read_run_records": RunRecord,
    "read_phase_records": PhaseRecord,
    "read_attempt_records": AttemptRecord,
    "read_ci_reports": CiReport,
    "read_phase_issue_files": PhaseIssueFile,
    "read_run_issue_indexes": RunIssueIndex,
    "read_event_logs": Event,
    "read_project_backlogs": ProjectBacklog,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_reader_columns_are_the_json_schema(reader: str) -> None:
    """Every field of the model, with its schema's type: a new model field fails here until
    views.sql declares it (read_json would otherwise drop it silently)."""
    schema = READERS[reader].model_json_schema()
    expected = {name: duck_type(s, schema.get("$defs", {})) for name, s in schema["properties"].items()}
    con = duckdb.connect()
    for statement in rollup.split_statements(rollup.views_sql()):
        if statement.startswith(f"CREATE OR REPLACE MACRO {reader}("):
            con.execute(statement)
    described = con.execute(f"DESCRIBE FROM {reader}('{rollup.none_file()}')").fetchall()
    actual = {name: str(kind) for name, kind, *_ in described}
    assert actual.pop("filename") == "VARCHAR"
    canonical = {name: scalar(con, f"SELECT typeof(NULL::{kind})") for name, kind in expected.items()}
    assert actual == canonical


def test_copies_of_views_sql_agree() -> None:
    assert (ROOT / "reports" / "views.sql").read_text() == rollup.views_sql()
    assert (ROOT / "reports" / "none.json").read_bytes() == b"" == rollup.none_file().read_bytes()
    assert rollup.ID_PATTERN == ID_PATTERN


def test_views_sql_runs_as_the_duckdb_cli_would(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Executed verbatim from the workspace root (like `duckdb -init reports/views.sql`): every
    statement works, and artifacts nobody wrote yet (the backlog file) give empty views."""
    (ws / "reports").mkdir()
    shutil.copy(rollup.none_file(), ws / "reports" / "none.json")
    monkeypatch.chdir(ws)
    con = duckdb.connect()
    con.execute(rollup.views_sql())
    counts = {
        v: scalar(con, f"SELECT count(*) FROM {v}")
        for v in (
            "runs",
            "tiers",
            "phases",
            "phase_records",
            "attempts",
            "ci_runs",
            "issues",
            "run_issues",
            "events",
            "backlog",
            "backlog_file",
        )
    }
    assert counts == {
        "runs": 3,
        "tiers": 5,
        "phases": 6,
        "phase_records": 6,
        "attempts": 10,
        "ci_runs": 8,
        "issues": 5,
        "run_issues": 5,
        "events": 12,
        "backlog": 3,
        "backlog_file": 0,
    }
    assert con.execute("SELECT filename FROM runs WHERE run_id = 'r-ok'").fetchone() == ("runs/r-ok/run.json",)


# -- each view against hand-computed numbers -------------------------------------------------


def test_runs_view(con: duckdb.DuckDBPyConnection) -> None:
    got = {r["run_id"]: r for r in rows(con, "FROM runs")}
    assert set(got) == {"r-ok", "r-budget", "r-old"}
    ok, budget, old = got["r-ok"], got["r-budget"], got["r-old"]
    assert (ok["tokens"], ok["cost_usd"], ok["ci_runs"], ok["builder_attempts"]) == (2500, pytest.approx(0.025), 4, 4)
    assert (ok["phases_total"], ok["phases_complete"], ok["tiers_not_clean"], ok["duration_s"]) == (3, 3, 0, 3600)
    assert ok["debt_status"] == "has_minor_debt" and ok["promotion_eligible_to_main"] is True
    assert (budget["tokens"], budget["builder_attempts"], budget["auditor_attempts"], budget["ci_runs"]) == (
        29000,
        4,
        1,
        3,
    )
    assert budget["cost_usd"] == pytest.approx(0.29)
    assert (budget["phases_failed"], budget["tiers_not_clean"], budget["duration_s"]) == (1, 1, 7200)
    assert budget["failure_reason"] == "phase P2: token budget exhausted"
    assert budget["debt_status"] == "has_major_debt" and budget["terminal"] is True
    # the older schema version: fields it did not write read NULL, the rest as usual
    assert (old["promoted_commit"], old["promoted_at"], old["debt_status"]) == (None, None, None)
    assert (old["tokens"], old["state"], old["created_at"].isoformat()) == (400, "DONE_SUCCESS", "2025-12-31T00:00:00")
    # runs written before usage had sources read as all reported
    assert (old["tokens_reserved"], old["cost_reserved_usd"], old["cost_estimated_usd"]) == (0, 0, 0)


def test_tiers_view(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(
        con,
        "SELECT run_id, tier_id, tier_index, cleanliness, promotion_blocked, tokens, ci_runs, "
        "cleanliness_reasons FROM tiers ORDER BY run_id, tier_index",
    )
    assert [(r["run_id"], r["tier_id"], r["promotion_blocked"], r["tokens"], r["ci_runs"]) for r in got] == [
        ("r-budget", "T1", False, 5000, 1),
        ("r-budget", "T2", True, 24000, 2),
        ("r-ok", "T1", False, 2200, 3),
        ("r-ok", "T2", False, 300, 1),
        ("r-old", "T1", False, 400, 1),
    ]
    assert got[1]["cleanliness_reasons"] == ["tier is FAILED", "1 major issue(s) > 0 tolerated"]


def test_phases_and_phase_records_views(con: duckdb.DuckDBPyConnection) -> None:
    phases = rows(
        con,
        "SELECT run_id, phase_id, slice, state, accepted, attempts, tokens FROM phases ORDER BY run_id, phase_index",
    )
    assert [(p["run_id"], p["phase_id"], p["slice"], p["accepted"], p["attempts"], p["tokens"]) for p in phases] == [
        ("r-budget", "P1", "feature_implementation:medium", True, 2, 5000),
        ("r-budget", "P2", "schema_contract_change:high", False, 3, 24000),
        ("r-ok", "P1", "feature_implementation:medium", True, 1, 1000),
        ("r-ok", "P2", "bugfix:low", True, 2, 1200),
        ("r-ok", "P3", "docs:low", True, 1, 300),
        ("r-old", "P1", "tests:low", True, 1, 400),
    ]
    rec = rows(con, "FROM phase_records WHERE run_id = 'r-budget' AND phase_id = 'P2'")[0]
    assert (rec["escalated"], rec["auditor_attempts"], rec["builder_attempts"], rec["ci_runs"]) == (True, 1, 2, 2)
    assert (rec["major_issues"], rec["minor_issues"], rec["failure_reason"]) == (1, 1, "budget_refused")
    assert rec["filename"].endswith("runs/r-budget/phases/02-P2/phase.json")


def test_attempts_view(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(
        con,
        "SELECT run_id, phase_index, phase_id, k, role, agent, outcome, gate_passed, accepted, tokens, "
        "cost_usd, filename FROM attempts ORDER BY run_id, phase_index, k",
    )
    assert len(got) == 10
    assert sum(a["tokens"] for a in got) == 2500 + 29000 + 400
    p2 = [a for a in got if a["run_id"] == "r-budget" and a["phase_id"] == "P2"]
    assert [(a["k"], a["role"], a["agent"], a["outcome"], a["gate_passed"]) for a in p2] == [
        (1, "builder", "codex", "ci_failed", True),
        (2, "builder", "codex", "ci_failed", True),
        (3, "auditor", "codex-review", "budget_refused", False),
    ]
    assert p2[0]["filename"].endswith("runs/r-budget/phases/02-P2/attempts/1/builder.json")
    assert p2[0]["phase_index"] == 2


def test_ci_runs_view(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(
        con,
        "SELECT run_id, phase_id, attempt, verdict, tries, failing, duration_s, tests_last_try "
        "FROM ci_runs ORDER BY run_id, phase_index, attempt",
    )
    assert [(c["run_id"], c["phase_id"], c["attempt"], c["verdict"], c["failing"]) for c in got] == [
        ("r-budget", "P1", 2, "pass", 0),
        ("r-budget", "P2", 1, "fail", 1),
        ("r-budget", "P2", 2, "fail", 1),
        ("r-ok", "P1", 1, "pass", 0),
        ("r-ok", "P2", 1, "fail", 1),
        ("r-ok", "P2", 2, "pass", 0),
        ("r-ok", "P3", 1, "pass", 0),
        ("r-old", "P1", 1, "pass", 0),
    ]
    assert got[1]["duration_s"] == 1.5 and got[1]["tests_last_try"] == 2


def test_issue_views(con: duckdb.DuckDBPyConnection) -> None:
    phase_issues = rows(
        con,
        "SELECT run_id, phase_id, issue_key, effective_severity, occurrence_count, source "
        "FROM issues ORDER BY run_id, phase_index, issue_key",
    )
    assert [(i["run_id"], i["phase_id"], i["issue_key"], i["occurrence_count"]) for i in phase_issues] == [
        ("r-budget", "P1", "gate:size", 1),
        ("r-budget", "P2", "budget:tokens", 1),
        ("r-budget", "P2", TEST_X, 2),
        ("r-ok", "P2", TEST_X, 1),
        ("r-old", "P1", TEST_X, 1),
    ]
    run_issues = rows(
        con,
        "SELECT run_id, issue_key, effective_severity, seen_in_tiers, first_phase_index "
        "FROM run_issues ORDER BY run_id, issue_key",
    )
    assert [(i["run_id"], i["issue_key"], i["seen_in_tiers"]) for i in run_issues] == [
        ("r-budget", "budget:tokens", ["T2"]),
        ("r-budget", "gate:size", ["T1"]),
        ("r-budget", TEST_X, ["T2"]),
        ("r-ok", TEST_X, ["T1"]),
        ("r-old", TEST_X, ["T1"]),
    ]


def test_events_view(con: duckdb.DuckDBPyConnection) -> None:
    got = rows(con, "SELECT run_id, count(*) AS n, max(seq) AS last FROM events GROUP BY run_id ORDER BY run_id")
    assert [(e["run_id"], e["n"], e["last"]) for e in got] == [("r-budget", 4, 4), ("r-ok", 5, 5), ("r-old", 3, 3)]


def test_backlog_view(con: duckdb.DuckDBPyConnection) -> None:
    got = {b["issue_key"]: b for b in rows(con, "FROM backlog")}
    x = got[TEST_X]
    # seen in 3 runs, in tiers T1 and T2 (distinct tier ids: its spread); 1 + 2 + 1 occurrences
    assert (x["age_in_runs"], x["age_in_tiers"], x["occurrences"], x["base_severity"]) == (3, 2, 4, "minor")
    assert (x["first_seen_run_id"], x["last_seen_run_id"], x["status"]) == ("r-old", "r-budget", "needs_cleanup")
    assert x["last_seen_at"].isoformat() == "2026-01-02T02:00:00"
    assert (got["gate:size"]["age_in_runs"], got["gate:size"]["status"]) == (1, "open")
    # a major issue never "needs cleanup" by aging: it is already the worst severity
    assert (got["budget:tokens"]["base_severity"], got["budget:tokens"]["status"]) == ("major", "open")


def test_backlog_file_view_reads_the_materialised_backlog(ws: Path) -> None:
    from pipeline.core.jsonio import write_model
    from pipeline.models.issues import BacklogEntry

    entry = BacklogEntry(
        category="test_failure",
        base_severity=Severity.minor,
        age_in_runs=3,
        age_in_tiers=3,
        first_seen_run_id="r-old",
        last_seen_run_id="r-budget",
        last_seen_at="2026-01-02T02:00:00Z",
        status="needs_cleanup",
    )
    backlog = ProjectBacklog(issues_by_key={TEST_X: entry}, runs_read=3)
    write_model(ws / "reports" / "project_issue_backlog.json", backlog)
    with rollup.connect(ws) as con:
        got = rows(con, "SELECT issue_key, status, age_in_runs, runs_read FROM backlog_file")
    assert got == [{"issue_key": TEST_X, "status": "needs_cleanup", "age_in_runs": 3, "runs_read": 3}]


# -- the report ------------------------------------------------------------------------------


def test_report_content(ws: Path) -> None:
    built = build_report(ws)
    assert (built.runs, built.reread) == (3, 3)
    md = (ws / "reports" / "index.md").read_text()
    assert "- 3 runs: 2 DONE_SUCCESS, 1 DONE_FAILED_*, 0 not finished; 2 eligible for promotion." in md
    assert (
        "| r-budget | DONE_FAILED_BUDGET_EXHAUSTED | has_major_debt | normal | multi_tier | "
        "phase P2: token budget exhausted | 29,000 | $0.2900 | 3 |" in md
    )
    assert "| r-budget | T2 | Schema | FAILED | not_clean | yes | tier is FAILED; 1 major issue(s) > 0 tolerated" in md
    assert f"| proj | {TEST_X} | test_failure | minor | 3 | 2 | 4 | r-budget | needs_cleanup |" in md
    # budget aborts: T2 took 24,000 of the aborted run's 29,000 tokens
    assert "| T2 | 1 | 1 | 24,000 | $0.2400 | 83% |" in md
    assert "| schema_contract_change:high | 1 | 1 | 24,000 | $0.2400 | 83% |" in md
    assert "| budget-aborted runs | 1 | 0 (0%) | 1 | 24,000 | 1 of 1 (100%) |" in md
    # agents: claude 3 phases, first attempts passed/ci_failed/passed; codex gate_failed/ci_failed
    assert "| claude | 3 | 4 | 100% | 67% | 3 | 833 | $0.0083 |" in md
    assert "| codex | 2 | 4 | 50% | 0% | 1 | 25,000 | $0.2500 |" in md
    assert "| command | 1 | 1 | 100% | 100% | 1 | 400 | $0.0040 |" in md
    assert "| schema_contract_change | 1 | 3.00 | 0 (0%) | — |" in md
    # the spend by source: these runs' CLIs reported everything (nothing estimated or reserved)
    assert "| state | runs | tokens | of which reserved | cost | reported | estimated | reserved | CI runs |" in md
    html = (ws / "reports" / "index.html").read_text()
    assert html.count("<svg") == 3 and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<script" not in html


def test_issue_category_chart_leaves_out_keys_resolved_in_their_run(ws: Path) -> None:
    build_report(ws)
    assert "<title>test_failure — minor: 3</title>" in (ws / "reports" / "index.html").read_text()
    index = ws / "runs" / "r-ok" / "run_issue_index.json"
    data = json.loads(index.read_text())
    data["issues_by_key"][TEST_X]["status"] = "resolved"  # r-ok fixed test_x within the run
    index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.utime(ws / "runs" / "r-ok" / "run.json")  # the run's record changed (its stamp)
    build_report(ws)
    html = (ws / "reports" / "index.html").read_text()
    assert "<title>test_failure — minor: 2</title>" in html and "distinct open keys per run" in html


def test_report_is_deterministic(ws: Path) -> None:
    build_report(ws)
    first = (ws / "reports" / "index.html").stat().st_mtime_ns
    build_report(ws)
    assert (ws / "reports" / "index.html").stat().st_mtime_ns == first  # same bytes: not rewritten


def test_doit_report_is_up_to_date_until_a_run_changes(ws: Path) -> None:
    first = cli(ws, "report")
    assert first.returncode == 0, first.stderr
    assert "wrote reports/index.md and reports/index.html: 3 run(s), 3 re-read" in first.stdout
    index = ws / "reports" / "index.md"
    mtime = index.stat().st_mtime_ns
    second = cli(ws, "report")
    assert second.returncode == 0 and "up to date" in second.stdout and "wrote" not in second.stdout
    assert index.stat().st_mtime_ns == mtime
    run_json = ws / "runs" / "r-ok" / "run.json"
    data = json.loads(run_json.read_text())
    data["spend"]["tokens"] = 2600  # a run moved on
    run_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    third = cli(ws, "report")
    assert third.returncode == 0 and "3 run(s), 1 re-read" in third.stdout, third.stdout + third.stderr
    assert "| r-ok | DONE_SUCCESS | has_minor_debt | normal | multi_tier |   | 2,600 |" in index.read_text()
    index.unlink()  # a missing target rebuilds too
    assert "wrote" in cli(ws, "report").stdout


def test_rollup_follows_changes_and_removals(ws: Path) -> None:
    assert rollup.refresh(ws) == rollup.Refresh(runs=3, reread=3, removed=0)
    assert rollup.refresh(ws) == rollup.Refresh(runs=3, reread=0, removed=0)
    shutil.rmtree(ws / "runs" / "r-old")
    time.sleep(0.01)
    # A run's stamp is its run.json, the last file the supervisor writes whenever the run's
    # record changes (one stat per run, not two): a touch of run_issue_index.json alone is
    # not seen until run.json changes; deleting the rollup re-reads every run.
    index = ws / "runs" / "r-ok" / "run_issue_index.json"
    os.utime(index)
    assert rollup.refresh(ws) == rollup.Refresh(runs=2, reread=0, removed=1)
    os.utime(ws / "runs" / "r-ok" / "run.json")
    assert rollup.refresh(ws) == rollup.Refresh(runs=2, reread=1, removed=0)
    shutil.rmtree(ws / "reports" / "rollup")
    assert rollup.refresh(ws) == rollup.Refresh(runs=2, reread=2, removed=0)
    with rollup.connect(ws, refresh_first=False) as con:
        assert rows(con, "SELECT count(*) AS n FROM attempts") == [{"n": 9}]
        assert rows(con, "SELECT count(*) AS n FROM run_issues WHERE run_id = 'r-old'") == [{"n": 0}]


def test_rollup_keeps_each_attempts_run_and_phase(ws: Path) -> None:
    # parsed from the filename once, at ingest: a report does not run the regex per attempt
    rollup.refresh(ws)
    con = duckdb.connect()
    con.execute(f"ATTACH '{ws / rollup.ROLLUP_DB}' AS r (READ_ONLY)")
    stored = con.execute(
        "SELECT path.run_id, path.phase_index, path.phase_id, k FROM r.raw_attempts "
        "WHERE run_id = 'r-budget' ORDER BY path.phase_index, k"
    ).fetchall()
    con.close()
    assert ("r-budget", "02", "P2", 3) in stored and all(run == "r-budget" for run, *_ in stored)
    query = (
        "SELECT * EXCLUDE (filename, path), path.run_id, path.phase_index, path.phase_id, "
        "regexp_replace(filename, '^.*runs/', 'runs/') AS f FROM located_attempts"
    )
    with rollup.connect(ws, refresh_first=False) as con:
        over_rollup = sorted(map(repr, con.execute(query).fetchall()))
    with rollup.connect(ws, rollup=False) as con:
        over_files = sorted(map(repr, con.execute(query).fetchall()))
    assert over_rollup == over_files and len(over_files) == 10


def test_a_broken_rollup_is_rebuilt(ws: Path) -> None:
    rollup.refresh(ws)
    (ws / rollup.ROLLUP_DB).write_bytes(b"not a database")
    assert rollup.refresh(ws).reread == 3


def test_a_broken_run_json_names_the_file(ws: Path) -> None:
    (ws / "runs" / "r-ok" / "run.json").write_text('{"run_id": "r-ok",\n')
    with pytest.raises(InvalidInput) as exc:
        rollup.refresh(ws)
    assert "runs/r-ok/run.json" in exc.value.message and "doit validate" in exc.value.fix


def test_reader_processes_build_the_same_rollup(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one run per batch: three batches, read by two reader processes
    query = "SELECT * EXCLUDE (filename), filename FROM {} ORDER BY ALL"
    views = ("runs", "phase_records", "attempts", "ci_runs", "issues", "run_issues")
    monkeypatch.setattr(rollup, "INGEST_READERS", 0)
    assert rollup.refresh(ws).reread == 3
    with rollup.connect(ws, refresh_first=False) as con:
        alone = {v: con.execute(query.format(v)).fetchall() for v in views}
    shutil.rmtree(ws / "reports" / "rollup")
    monkeypatch.setattr(rollup, "INGEST_BATCH", 1)
    monkeypatch.setattr(rollup, "INGEST_READERS", 2)
    assert rollup.refresh(ws).reread == 3
    with rollup.connect(ws, refresh_first=False) as con:
        assert {v: con.execute(query.format(v)).fetchall() for v in views} == alone
    assert all(alone.values())
    # a broken file read by a reader process is named like one read here
    shutil.rmtree(ws / "reports" / "rollup")
    (ws / "runs" / "r-ok" / "phases" / "01-P1" / "phase.json").write_text("[1]\n")
    with pytest.raises(InvalidInput) as exc:
        rollup.refresh(ws)
    assert "runs/r-ok/phases/01-P1/phase.json" in exc.value.message


def test_a_run_filed_under_another_directory_is_refused(ws: Path) -> None:
    shutil.move(ws / "runs" / "r-ok", ws / "runs" / "r-moved")
    with pytest.raises(InvalidInput, match="'r-ok', which is not its directory's name"):
        rollup.refresh(ws)


def test_an_empty_workspace_reports_no_runs(tmp_path: Path) -> None:
    built = build_report(tmp_path)
    assert built.runs == 0
    assert "- 0 runs:" in (tmp_path / "reports" / "index.md").read_text()
    assert run_sql(tmp_path, "SELECT count(*) AS n FROM attempts", "csv") == "n\n0\n"


# -- doit sql and doit metrics_diff ------------------------------------------------------------

QUERY = "SELECT run_id, tokens, created_at, promotion_reasons FROM runs ORDER BY run_id"


def test_sql_formats(ws: Path) -> None:
    table = cli(ws, "sql", "--query", QUERY)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["run_id", "tokens", "created_at", "promotion_reasons"]
    assert "r-budget  29000   2026-01-02T00:00:00" in table.stdout and table.stdout.endswith("(3 rows)\n")
    assert run_sql(ws, QUERY, "csv").splitlines()[:2] == [
        "run_id,tokens,created_at,promotion_reasons",
        "r-budget,29000,2026-01-02T00:00:00,[]",
    ]
    assert json.loads(run_sql(ws, QUERY, "json"))[2] == {
        "run_id": "r-old",
        "tokens": 400,
        "created_at": "2025-12-31T00:00:00",
        "promotion_reasons": [],
    }
    # `--query=...`: doit would take a separate word holding `=` for one of its variables
    eq = cli(ws, "sql", "--query=SELECT count(*) AS n FROM runs WHERE state = 'DONE_SUCCESS'", "--format=csv")
    assert (eq.returncode, eq.stdout) == (0, "n\n2\n"), eq.stderr
    md = cli(ws, "sql", "--query", "SELECT 'a|b' AS x, NULL AS y", "--format", "markdown")
    assert md.stdout == "| x | y |\n| --- | --- |\n| a\\|b | NULL |\n"


def test_sql_bad_query_prints_duckdbs_message(ws: Path) -> None:
    bad = cli(ws, "sql", "--query", "SELEC * FROM runs")
    assert bad.returncode == 2
    assert 'Parser Error: syntax error at or near "SELEC"' in bad.stderr and "Traceback" not in bad.stderr
    unknown = cli(ws, "sql", "--query", "FROM no_such_view")
    assert unknown.returncode == 2 and "Table with name no_such_view does not exist" in unknown.stderr
    assert cli(ws, "sql", "--query", "FROM runs", "--format", "xml").returncode == 2
    missing = cli(ws, "sql")
    assert missing.returncode == 2 and "missing --query" in missing.stderr


def test_sql_cannot_damage_the_rollup(ws: Path) -> None:
    with pytest.raises(InvalidInput, match="read-only"):
        run_sql(ws, "DELETE FROM rollup.raw_runs")
    assert run_sql(ws, "SELECT count(*) AS n FROM runs", "csv") == "n\n3\n"


def test_metrics_diff(ws: Path) -> None:
    out = cli(ws, "metrics_diff", "--a", "r-ok", "--b", "r-budget")
    assert out.returncode == 0, out.stderr
    lines = {line.split("  ")[0]: line.split() for line in out.stdout.splitlines()}
    assert lines["tokens"][-3:] == ["2500", "29000", "26500"]
    assert lines["CI runs"][-3:] == ["4", "3", "-1"]
    assert lines["issues: minor"][-3:] == ["1", "2", "1"]
    assert lines["issues: major"][-3:] == ["0", "1", "1"]
    assert lines["duration (s, start to end)"][-3:] == ["3600.0", "7200.0", "3600.0"]
    assert lines["state"][-3:] == ["DONE_SUCCESS", "DONE_FAILED_BUDGET_EXHAUSTED", "differs"]
    data = json.loads(metrics_diff(ws, "r-ok", "r-budget", "json"))
    assert {"metric": "attempts", "r-ok": 4, "r-budget": 5, "delta (b - a)": 1} in data
    assert {"metric": "cost (USD)", "r-ok": 0.025, "r-budget": 0.29, "delta (b - a)": 0.265} in data
    same = json.loads(metrics_diff(ws, "r-budget", "r-budget", "json"))
    assert {"metric": "issues: minor", "r-budget": 2, "r-budget (again)": 2, "delta (b - a)": 0} in same
    nope = cli(ws, "metrics_diff", "--a", "r-ok", "--b", "r-nope")
    assert nope.returncode == 2 and "no run 'r-nope'" in nope.stderr and "Traceback" not in nope.stderr


# -- the HTML page in a real browser ------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

PROBE = """<script>
addEventListener('load', () => {
  const svgs = [...document.querySelectorAll('figure svg')];
  const drawn = svgs.map(svg => [...svg.querySelectorAll('rect.bar')]
    .filter(r => { const b = r.getBoundingClientRect(); return b.width > 0 && b.height > 0; }).length);
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({svgs: svgs.length, drawn: drawn,
    widths: svgs.map(s => Math.round(s.getBoundingClientRect().width))});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_html_charts_render_in_a_headless_browser(ws: Path) -> None:
    chromium = CHROMIUM
    assert chromium is not None
    build_report(ws)
    page = ws / "reports" / "probe.html"  # the report plus a measuring script (the report has none)
    page.write_text((ws / "reports" / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={ws / 'chromium-profile'}",
    ]
    done = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert '<pre id="probe">' in done.stdout, done.stderr[-2000:]
    probe = json.loads(done.stdout.split('<pre id="probe">')[1].split("</pre>")[0].replace("&quot;", '"'))
    assert probe["svgs"] == 3
    # spend: 3 bars (one per run); issues: 3 categories (test_failure and budget split in two colours
    # only where both exist); outcomes: one bar part per (category, state)
    assert probe["drawn"][0] == 3 and probe["drawn"][1] >= 3 and probe["drawn"][2] >= 5, probe
    assert all(width > 300 for width in probe["widths"]), probe
    shot = ws / "shot.png"
    subprocess.run(
        [
            chromium,
            *flags,
            "--hide-scrollbars",
            "--window-size=900,900",
            f"--screenshot={shot}",
            (ws / "reports" / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=90,
    )
    assert shot.stat().st_size > 20_000  # a blank page compresses to a few KB


def test_the_documented_queries_run(ws: Path) -> None:
    """docs/metrics.md's examples are real: each one runs on the fixture workspace."""
    import re

    text = (ROOT / "docs" / "metrics.md").read_text()
    queries = re.findall(r'--query="\n(.*?)"\n```', text, flags=re.S)
    assert len(queries) >= 5
    for query in queries:
        run_sql(ws, query, "table")


def test_sql_reads_file_views_it_names(ws: Path) -> None:
    """`doit sql` leaves the file-reading views it does not need empty, and fills those it names."""
    assert run_sql(ws, "SELECT count(*) AS n FROM ci_runs", "csv") == "n\n8\n"
    assert run_sql(ws, "SELECT count(*) AS n FROM raw_phase_issues", "csv") == "n\n6\n"  # files
    assert run_sql(ws, "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM issues) AS n", "csv") == (
        "n\n17\n"
    )


def _views() -> list[str]:
    statements = rollup.split_statements(rollup.views_sql())
    return [s.split()[4] for s in statements if s.startswith("CREATE OR REPLACE VIEW ")]


def test_sql_defines_what_a_query_reaches_and_it_reads_the_same(ws: Path) -> None:
    """A query gets only the statements it reaches; every view reads what it reads with all defined."""
    with rollup.connect(ws) as full:
        expected = {v: scalar(full, f"SELECT count(*) FROM {v}") for v in _views()}
    assert len(expected) >= 15 and sum(expected.values()) > 0
    for view, n in expected.items():
        assert run_sql(ws, f"SELECT count(*) AS n FROM {view}", "csv") == f"n\n{n}\n", view
    needed = rollup.needed_statements(rollup.split_statements(rollup.views_sql()), "FROM runs")
    defined = {m.group(1) or m.group(2) for s in needed if (m := rollup._DEFINES.match(s))}
    assert {"runs", "raw_runs", "read_run_records", "run_files", "utc"} <= defined
    assert defined.isdisjoint({"events", "raw_events", "event_files", "backlog", "ci_runs"})


@pytest.mark.parametrize(
    "query", ["SHOW TABLES", "SELECT view_name FROM duckdb_views() WHERE NOT internal", "SELECT 1"]
)
def test_sql_catalog_queries_see_every_view(ws: Path, query: str) -> None:
    out = run_sql(ws, query, "csv")
    if query != "SELECT 1":
        assert {"runs", "events", "backlog", "attempts", "run_issues"} <= set(out.split())


@pytest.mark.parametrize("raw", ["two", "-1", "1e9", "999"])
def test_a_bad_ingest_tuning_variable_is_named_and_ignored_not_a_crash_at_import(raw: str) -> None:
    import subprocess
    import sys

    env = {**os.environ, "AUTOPACK_INGEST_READERS": raw, "AUTOPACK_INGEST_THREADS": raw}
    code = "from pipeline.store import rollup; print(rollup.INGEST_READERS >= 0, rollup.INGEST_THREADS)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "1"]
    assert f"ignoring AUTOPACK_INGEST_READERS={raw!r}" in done.stderr and "fix or unset it" in done.stderr
