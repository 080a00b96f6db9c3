"""The project issue backlog (docs/architecture.md, Issues), derived by DuckDB from every run's record.

The backlog is never a shared mutable file: it is recomputed from the runs'
own artifacts (`runs/*/run.json`, `runs/*/phases/*/issues.json`, `runs/*/strategy.json`,
`runs/*/phases/*/ci/*/ci.json`) and materialised to `reports/project_issue_backlog.json`
by `write_backlog`. `age_in_runs` counts the distinct runs a key was seen in (its
persistence), `age_in_tiers` the distinct tier ids (its spread across the plan), never
records. Issues resolved within their run (fixed by a later attempt) are not counted.

Order: runs are ordered by `created_at` (to the second), then run id; an appearance of a
key is ordered by (run, phase index). A key is

- `resolved` when, at or after its newest appearance, a COMPLETE `debt_cleanup` phase
  lists it in `cleans` (its own attempts may have seen the key: the phase still ended
  green), or, for a `test:<node_id>` key, when a run created after the one it was last
  seen in ran that test green;
- `needs_cleanup` when its base severity is minor and it is old enough (playbook §5.3):
  seen in at least `aging_runs` runs **or** in at least `aging_tiers` distinct tiers;
- `open` otherwise.

Thresholds come from the caller, or per key from its strategy slice: the ruleset's
`categories.<task_category>.aging_runs/aging_tiers` of the phase it was last seen in, else
the safety profile given (the new run's) or of the run it was last seen in (`normal` 3 runs
/ 2 tiers, `safety_critical` 2 / 1 in the built-in ruleset).

`project_id` is the project of the newest run read (`doit backlog`); start_run writes its
plan's instead.

One module on purpose: the SQL over the rollup and over the gathered files, and the Python
that decides each key's status, share one encoding of order (a run's rank and a phase
index folded into `ord`); apart, the two reading paths could drift from each other.

run.json, issues.json and ci.json are read from the rollup (`pipeline.store.rollup`,
brought up to date first: only runs whose run.json changed are re-read), so a start_run
pays for what changed, not for the tree (10,000 runs: 23 s when every file was read,
see bench/README.md). When the rollup cannot be used (another
process is writing it, a read-only workspace) they are gathered by Python into one
newline-delimited stream each (every document tagged with its path as `filename`) and
read by the same SQL; the two give the same backlog, byte for byte (a test keeps them
so). The JSON is read with explicit column types (never sampled), so a file whose first
records happen to be empty still gives the same types, and records written before a field
existed (e.g. `cleans`) read NULL there.
"""

from __future__ import annotations

import glob
import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config.workspace import Workspace
from pipeline.core.errors import InvalidInput, StepFailed
from pipeline.core.jsonio import write_model
from pipeline.issues.gathered import GATHERED_OPTIONS, gather, read_gathered, with_filename
from pipeline.models.enums import SafetyProfile, Severity
from pipeline.models.issues import BacklogEntry, BacklogStatus, ProjectBacklog
from pipeline.models.ruleset import Ruleset
from pipeline.store import rollup

if TYPE_CHECKING:
    import duckdb

BACKLOG_PATH = Path("reports") / "project_issue_backlog.json"
DEBT_CATEGORY = "debt_cleanup"
TEST_PREFIX = "test:"
EVIDENCE_CAP = 20

# (run rank, phase index) folded into one sortable number; phase indexes stay far below it.
_RANK_SCALE = 1_000_000
_SEP = r"[/\\]"
_PART = r"[^/\\]+"

_READ_OPTIONS = "format = 'auto', filename = true, hive_partitioning = false, union_by_name = true"

_RUN_COLUMNS = (
    "{'created_at': 'VARCHAR', 'updated_at': 'VARCHAR', 'finished_at': 'VARCHAR', "
    "'safety_profile': 'VARCHAR', 'project_id': 'VARCHAR', "
    "'phases': 'STRUCT(phase_id VARCHAR, state VARCHAR, task_category VARCHAR)[]'}"
)
_ISSUE_COLUMNS = (
    "{'phase_id': 'VARCHAR', 'tier_id': 'VARCHAR', 'issues': "
    "'STRUCT(issue_key VARCHAR, severity VARCHAR, category VARCHAR, message VARCHAR, "
    "evidence_refs VARCHAR[], status VARCHAR, task_category VARCHAR)[]'}"
)
_STRATEGY_COLUMNS = (
    "{'phases': 'STRUCT(phase_id VARCHAR, \"index\" BIGINT, task_category VARCHAR, cleans VARCHAR[])[]'}"
)
_CI_COLUMNS = "{'tries': 'STRUCT(steps STRUCT(tests STRUCT(node_id VARCHAR, outcome VARCHAR)[])[])[]'}"

_RUNS_SQL = f"""
CREATE TEMP TABLE runs AS
SELECT run_id, created_at, seen_at, safety_profile, project_id, phases,
       row_number() OVER (ORDER BY created_at, run_id) AS run_rank
FROM (
    SELECT regexp_extract(filename, '({_PART}){_SEP}run\\.json$', 1) AS run_id,
           created_at,
           coalesce(finished_at, updated_at, created_at) AS seen_at,
           coalesce(safety_profile, 'normal') AS safety_profile,
           project_id,
           coalesce(phases, []) AS phases
    FROM @RUNS@
)
"""

# Across runs, over each run's contribution per key (`rollup.ISSUE_KEYS_SQL`: kept in the
# rollup at ingest, or computed from the gathered files): a run's rank and the key's first
# or last phase index in it fold into `ord`.
_KEYS_SQL = f"""
WITH seen AS (
    SELECT k.*, r.run_rank * {_RANK_SCALE} + k.first_phase_index AS first_ord,
           r.run_rank * {_RANK_SCALE} + k.last_phase_index AS ord, r.seen_at, r.safety_profile
    FROM @KEYS@ k JOIN runs r USING (run_id)
)
SELECT issue_key,
       count(DISTINCT run_id) AS age_in_runs,
       len(list_distinct(flatten(list(tiers)))) AS age_in_tiers,
       arg_min(run_id, first_ord) AS first_seen_run_id,
       arg_max(run_id, ord) AS last_seen_run_id,
       arg_max(seen_at, ord) AS last_seen_at,
       arg_max(last_phase_id, ord) AS last_seen_phase_id,
       arg_max(category, ord) AS category,
       arg_max(severity, ord) AS severity,
       arg_max(message, ord) AS message,
       arg_max(safety_profile, ord) AS safety_profile,
       arg_max(task_category, ord) AS task_category,
       max(ord) AS last_ord,
       list_sort(list_distinct(flatten(list(evidence)))) AS evidence_refs
FROM seen
GROUP BY issue_key
ORDER BY issue_key
"""

# Runs with a COMPLETE debt_cleanup phase (run.json's phase summaries): only their
# strategy.json is read for what each such phase cleans.
_DEBT_RUNS_SQL = f"""
SELECT DISTINCT run_id
FROM (SELECT run_id, unnest(phases) AS st FROM runs)
WHERE st.task_category = '{DEBT_CATEGORY}' AND st.state = 'COMPLETE'
ORDER BY run_id
"""

_DEBT_SQL = f"""
WITH plans AS (
    SELECT regexp_extract(filename, '({_PART}){_SEP}strategy\\.json$', 1) AS run_id,
           unnest(phases) AS ph
    FROM read_json($strategies, columns = {_STRATEGY_COLUMNS}, {_READ_OPTIONS})
), states AS (
    SELECT run_id, unnest(phases) AS st FROM runs
), done AS (
    SELECT p.run_id, p.ph.phase_id AS phase_id, p.ph.cleans AS cleans,
           r.run_rank * {_RANK_SCALE} + p.ph."index" AS ord
    FROM plans p
    JOIN runs r USING (run_id)
    JOIN states s ON s.run_id = p.run_id AND s.st.phase_id = p.ph.phase_id
    WHERE p.ph.task_category = '{DEBT_CATEGORY}' AND s.st.state = 'COMPLETE'
)
SELECT unnest(cleans) AS issue_key, run_id, phase_id, ord
FROM done
WHERE cleans IS NOT NULL
ORDER BY ord
"""

# Every test a CI report saw pass, for the test:<node_id> keys asked about.
_GREEN_SQL = f"""
WITH reports AS (
    SELECT regexp_extract(
               filename, '({_PART}){_SEP}phases{_SEP}([0-9]+)-({_PART}){_SEP}ci{_SEP}{_PART}{_SEP}ci\\.json$',
               ['run_id', 'phase_index', 'phase_id']) AS loc,
           tries
    FROM @CI@
), tries AS (
    SELECT loc, unnest(tries) AS try FROM reports
), steps AS (
    SELECT loc, unnest(try.steps) AS step FROM tries
), tests AS (
    SELECT loc, unnest(step.tests) AS t FROM steps
)
SELECT DISTINCT '{TEST_PREFIX}' || t.node_id AS issue_key, r.run_id, loc.phase_id AS phase_id, r.run_rank
FROM tests JOIN runs r ON r.run_id = loc.run_id
WHERE t.outcome = 'passed' AND list_contains($keys, '{TEST_PREFIX}' || t.node_id)
ORDER BY issue_key, r.run_rank, phase_id
"""


# Where the three SQL statements above read from: the gathered files, or the rollup.
_FROM_FILES = {
    "@RUNS@": f"read_json($runs, columns = {with_filename(_RUN_COLUMNS)}, {GATHERED_OPTIONS})",
    "@KEYS@": "(" + rollup.ISSUE_KEYS_SQL.replace(
        "@ISSUES@", f"read_json($issues, columns = {with_filename(_ISSUE_COLUMNS)}, {GATHERED_OPTIONS})"
    ) + ")",
    "@CI@": f"read_json($ci, columns = {with_filename(_CI_COLUMNS)}, {GATHERED_OPTIONS})",
}
_FROM_ROLLUP = {
    # only the phase summaries' fields the backlog reads (the rest would be copied for nothing)
    "@RUNS@": "(SELECT created_at, updated_at, finished_at, safety_profile, project_id, filename, "
    "list_transform(phases, "
    "p -> {'phase_id': p.phase_id, 'state': p.state, 'task_category': p.task_category}) AS phases "
    "FROM rollup.raw_runs)",
    "@KEYS@": "rollup.issue_keys",
}

# The rollup variant of _GREEN_SQL over the tests it unnested at ingest; per key only the
# last green report (by run rank, then phase id) is returned: `_resolution` uses no other.
_GREEN_ROLLUP_SQL = f"""
SELECT '{TEST_PREFIX}' || g.node_id AS issue_key,
       arg_max(r.run_id, (r.run_rank, g.phase_id)) AS run_id,
       arg_max(g.phase_id, (r.run_rank, g.phase_id)) AS phase_id,
       max(r.run_rank) AS run_rank
FROM rollup.green_tests g JOIN runs r USING (run_id)
WHERE list_contains($keys, '{TEST_PREFIX}' || g.node_id)
GROUP BY issue_key
ORDER BY issue_key
"""


def _sql(template: str, sources: Mapping[str, str]) -> str:
    for name, source in sources.items():
        template = template.replace(name, source)
    return template


@dataclass(frozen=True)
class _Seen:
    """One key's aggregate over every appearance, as DuckDB computed it."""

    key: str
    age_in_runs: int
    age_in_tiers: int
    first_seen_run_id: str
    last_seen_run_id: str
    last_seen_at: str
    last_seen_phase_id: str | None
    category: str
    severity: Severity
    message: str
    safety_profile: str
    task_category: str
    last_ord: int
    evidence_refs: list[str]


# -- reading ---------------------------------------------------------------------------


def _pattern(workspace: Path, *parts: str) -> str:
    """An absolute glob under `workspace/runs/`; the workspace part matches literally."""
    return str(Path(glob.escape(str(Path(workspace).resolve()))).joinpath("runs", *parts))


def _has_files(con: duckdb.DuckDBPyConnection, pattern: str) -> bool:
    row = con.execute("SELECT count(*) FROM glob($p)", {"p": pattern}).fetchone()
    return bool(row and row[0])


def _attach_rollup(con: duckdb.DuckDBPyConnection, workspace: Path, current: Mapping[str, str]) -> bool:
    """Bring the rollup up to date and attach it; False when it cannot be (a read-only
    workspace, another process writing it): then the backlog reads the files."""
    import duckdb

    try:
        rollup.refresh(workspace, current)
    except (PermissionError, StepFailed):
        return False
    db = str(Path(workspace) / rollup.ROLLUP_DB).replace("'", "''")
    try:
        con.execute(f"ATTACH '{db}' AS rollup (READ_ONLY)")
    except duckdb.Error:
        return False
    return True


def _load_runs(con: duckdb.DuckDBPyConnection, workspace: Path, tmp: Path | None) -> int:
    """The `runs` table; `tmp` None: from the attached rollup, else from the gathered files."""
    if tmp is None:
        con.execute(_sql(_RUNS_SQL, _FROM_ROLLUP))
    else:
        gathered = gather(workspace, ("*", "run.json"), tmp)
        if gathered is None:
            return 0
        read_gathered(con, _sql(_RUNS_SQL, _FROM_FILES), {"runs": str(gathered[0])}, gathered)
    row = con.execute("SELECT count(*) FROM runs").fetchone()
    return int(row[0]) if row else 0


def _newest_project(con: duckdb.DuckDBPyConnection) -> str | None:
    """The project of the newest run read: the project the backlog is `doit backlog`'s for
    (start_run writes its own plan's instead)."""
    row = con.execute("SELECT project_id FROM runs ORDER BY run_rank DESC LIMIT 1").fetchone()
    return str(row[0]) if row and row[0] else None


def _seen(con: duckdb.DuckDBPyConnection, workspace: Path, tmp: Path | None) -> list[_Seen]:
    if tmp is None:
        rows = con.execute(_sql(_KEYS_SQL, _FROM_ROLLUP)).fetchall()
    else:
        gathered = gather(workspace, ("*", "phases", "*", "issues.json"), tmp)
        if gathered is None:
            return []
        rows = read_gathered(con, _sql(_KEYS_SQL, _FROM_FILES), {"issues": str(gathered[0])}, gathered).fetchall()
    return [
        _Seen(
            key=row[0],
            age_in_runs=int(row[1]),
            age_in_tiers=int(row[2]),
            first_seen_run_id=row[3],
            last_seen_run_id=row[4],
            last_seen_at=row[5] or "",
            last_seen_phase_id=row[6],
            category=row[7] or "",
            severity=Severity(row[8] or Severity.minor.value),
            message=row[9] or "",
            safety_profile=row[10] or SafetyProfile.normal.value,
            task_category=row[11] or "",
            last_ord=int(row[12]),
            evidence_refs=[str(ref) for ref in (row[13] or [])],
        )
        for row in rows
    ]


def _debt_cleanings(con: duckdb.DuckDBPyConnection, workspace: Path) -> dict[str, list[tuple[int, str]]]:
    """key -> [(position, "run/phase")] of the COMPLETE debt_cleanup phases that clean it."""
    runs = [row[0] for row in con.execute(_DEBT_RUNS_SQL).fetchall()]
    files = [_pattern(workspace, run_id, "strategy.json") for run_id in runs]
    files = [f for f in files if _has_files(con, f)]
    if not files:
        return {}
    found: dict[str, list[tuple[int, str]]] = {}
    for key, run_id, phase_id, ord_ in con.execute(_DEBT_SQL, {"strategies": files}).fetchall():
        found.setdefault(key, []).append((int(ord_), f"{run_id}/{phase_id}"))
    return found


def _green_tests(
    con: duckdb.DuckDBPyConnection, workspace: Path, keys: list[str], tmp: Path | None
) -> dict[str, list[tuple[int, str]]]:
    """test key -> [(run rank, "run/phase")] of the CI reports that saw that test pass."""
    if not keys:
        return {}
    if tmp is None:
        rows = con.execute(_GREEN_ROLLUP_SQL, {"keys": keys}).fetchall()
    else:
        gathered = gather(workspace, ("*", "phases", "*", "ci", "*", "ci.json"), tmp)
        if gathered is None:
            return {}
        params = {"ci": str(gathered[0]), "keys": keys}
        rows = read_gathered(con, _sql(_GREEN_SQL, _FROM_FILES), params, gathered).fetchall()
    found: dict[str, list[tuple[int, str]]] = {}
    for key, run_id, phase_id, rank in rows:
        found.setdefault(key, []).append((int(rank), f"{run_id}/{phase_id}"))
    return found


# -- deciding --------------------------------------------------------------------------


def _resolution(
    seen: _Seen, debt: Mapping[str, list[tuple[int, str]]], green: Mapping[str, list[tuple[int, str]]]
) -> str | None:
    """What resolved the key after its newest appearance, or None."""
    cleaned = [where for ord_, where in debt.get(seen.key, []) if ord_ >= seen.last_ord]
    if cleaned:
        return f"debt_cleanup {cleaned[-1]}"
    last_rank = seen.last_ord // _RANK_SCALE
    passed = [where for rank, where in green.get(seen.key, []) if rank > last_rank]
    if passed:
        return f"ci {passed[-1]}"
    return None


def is_aged(entry: BacklogEntry, aging_runs: int, aging_tiers: int) -> bool:
    """A minor, unresolved key seen in enough runs OR enough distinct tiers (playbook §5.3).

    The two ages measure different things: `age_in_runs` persistence across runs,
    `age_in_tiers` spread across the plan's tiers. A threshold is met when the age reaches
    it ("at least"), so the defaults read as "seen in 3 runs" and "seen in 2 tiers".
    """
    return (
        entry.status != "resolved"
        and entry.base_severity == Severity.minor
        and (entry.age_in_runs >= aging_runs or entry.age_in_tiers >= aging_tiers)
    )


def _thresholds_for(
    seen: _Seen, ruleset: Ruleset, thresholds: tuple[int, int] | None, profile_name: SafetyProfile | None
) -> tuple[int, int]:
    """The caller's thresholds, else the key's strategy slice (its category's own
    thresholds), else the safety profile's (the new run's, or the last-seen run's)."""
    if thresholds is not None:
        return thresholds
    try:
        profile = ruleset.safety_profiles[profile_name or SafetyProfile(seen.safety_profile)]
    except (ValueError, KeyError):
        profile = ruleset.safety_profiles[SafetyProfile.normal]
    category = ruleset.canonical_category(seen.task_category) if seen.task_category else None
    rule = ruleset.categories.get(category) if category else None
    runs = rule.aging_runs if rule is not None and rule.aging_runs is not None else profile.aging_runs
    tiers = rule.aging_tiers if rule is not None and rule.aging_tiers is not None else profile.aging_tiers
    return runs, tiers


def _entry(seen: _Seen, resolved_by: str | None, aging: tuple[int, int]) -> BacklogEntry:
    entry = BacklogEntry(
        category=seen.category,
        base_severity=seen.severity,
        age_in_runs=seen.age_in_runs,
        age_in_tiers=seen.age_in_tiers,
        first_seen_run_id=seen.first_seen_run_id,
        last_seen_run_id=seen.last_seen_run_id,
        last_seen_at=seen.last_seen_at,
        status="resolved" if resolved_by else "open",
        last_seen_phase_id=seen.last_seen_phase_id,
        # what points into the code first: a cap must not drop it for run-record paths
        evidence_refs=sorted(seen.evidence_refs, key=lambda ref: (ref.startswith("runs/"), ref))[:EVIDENCE_CAP],
        message=seen.message,
        resolved_by=resolved_by,
    )
    status: BacklogStatus = "needs_cleanup" if is_aged(entry, *aging) else entry.status
    return entry.model_copy(update={"status": status})


def derive_backlog(
    workspace: Path | Workspace, thresholds: tuple[int, int] | None = None, profile: SafetyProfile | None = None
) -> ProjectBacklog:
    """The backlog of every issue key of every started run under `workspace/runs/`.

    `thresholds` = (aging_runs, aging_tiers) for every key; None takes them per key from the
    safety profile of the run the key was last seen in (see the module docstring).
    """
    import duckdb

    ws = Workspace.of(workspace)
    workspace = ws.root
    ruleset = ws.ruleset.ruleset
    current = rollup.scan(workspace)
    if not current:
        return ProjectBacklog()  # no started run (what the files would say too, without DuckDB)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")  # no bar drawn over the command's output
        with tempfile.TemporaryDirectory(prefix="autopack-backlog-") as tmp:
            source = None if _attach_rollup(con, workspace, current) else Path(tmp)
            runs_read = _load_runs(con, workspace, source)
            if not runs_read:
                return ProjectBacklog()
            project_id = _newest_project(con)
            seen = _seen(con, workspace, source)
            debt = _debt_cleanings(con, workspace)
            keys = [s.key for s in seen if s.key.startswith(TEST_PREFIX)]
            green = _green_tests(con, workspace, keys, source)
    except duckdb.Error as exc:
        # DuckDB names the file and the position; a broken artifact is the user's to repair.
        raise InvalidInput(
            f"cannot derive the project backlog from {Path(workspace) / 'runs'}: {exc}",
            "`doit validate` names every broken run artifact; restore it from git",
        ) from exc
    finally:
        con.close()
    entries = {
        s.key: _entry(s, _resolution(s, debt, green), _thresholds_for(s, ruleset, thresholds, profile)) for s in seen
    }
    return ProjectBacklog(project_id=project_id, issues_by_key=dict(sorted(entries.items())), runs_read=runs_read)


def needs_cleanup_keys(backlog: ProjectBacklog) -> dict[str, Severity]:
    """Keys the backlog marked needs_cleanup (each under its own slice's thresholds) ->
    major: their effective severity in the next run, for routing and thresholds."""
    entries = sorted(backlog.issues_by_key.items())
    return {key: Severity.major for key, entry in entries if entry.status == "needs_cleanup"}


def aged_keys(backlog: ProjectBacklog, aging_runs: int, aging_tiers: int) -> dict[str, Severity]:
    """Minor keys that need cleanup under these thresholds -> major (their effective
    severity for the next run, docs/architecture.md, Issues)."""
    return {
        key: Severity.major
        for key, entry in sorted(backlog.issues_by_key.items())
        if is_aged(entry, aging_runs, aging_tiers)
    }


def write_backlog(workspace: Path, backlog: ProjectBacklog | None = None) -> Path:
    """Materialise the backlog to `reports/project_issue_backlog.json` (canonical JSON)."""
    path = Path(workspace) / BACKLOG_PATH
    write_model(path, backlog if backlog is not None else derive_backlog(workspace))
    return path


def other_runs_have_issues(workspace: Path, run_id: str) -> bool:
    """True when a started run other than `run_id` recorded an issue.

    start_run asks this first: reading one small index per run is much cheaper than
    starting DuckDB, and most projects' first runs have nothing to age.
    """
    runs_dir = Path(workspace) / "runs"
    if not runs_dir.is_dir():
        return False
    for index in runs_dir.glob("*/run_issue_index.json"):
        if index.parent.name == run_id:
            continue
        try:
            data: Any = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return True  # let the backlog read (and report) it
        if not isinstance(data, dict) or data.get("issues_by_key"):
            return True
    return False


def top_keys(backlog: ProjectBacklog, limit: int = 10) -> list[tuple[str, BacklogEntry]]:
    """The keys most worth a look: needing cleanup first, then open, oldest first."""
    order = {"needs_cleanup": 0, "open": 1, "resolved": 2}
    ranked = sorted(
        backlog.issues_by_key.items(),
        key=lambda item: (order[item[1].status], -item[1].age_in_runs, -item[1].age_in_tiers, item[0]),
    )
    return ranked[:limit]


def render_top(backlog: ProjectBacklog, limit: int = 10) -> str:
    """A plain table of `top_keys` for a terminal or a CI log."""
    rows = [
        [key, entry.status, entry.base_severity.value, str(entry.age_in_runs), str(entry.age_in_tiers),
         entry.last_seen_run_id]
        for key, entry in top_keys(backlog, limit)
    ]
    headers = ["issue_key", "status", "severity", "runs", "tiers", "last run"]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)])
