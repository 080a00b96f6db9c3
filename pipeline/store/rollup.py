"""DuckDB over the run tree: the views of `reports/views.sql` and the rollup that keeps them fast.

One module on purpose: the views, the rollup cache and its staleness check share one notion
of which files changed; apart, they would drift.

Measured on the 2-core machine (bench/reports.py):
DuckDB's read_json costs ~50-120 µs per file (10,000 run.json: 0.4-0.8 s, slower than a
json.load loop), and listing a deep glob is far worse (200,000 builder.json under
`runs/*/phases/*/attempts/*/`: ~30 s). So the sources reports and the project backlog
need — run.json, run_issue_index.json, phase.json (whose attempts[] are the
AttemptRecords of builder.json), every phase's issues.json and ci.json — are kept in
`reports/rollup/rollup.duckdb`, one table per raw view (plus flat tables derived at
ingest: attempts, the tests CI saw pass, each run's issue keys for the backlog), and
a run is re-read only when its run.json changed (mtime, size, inode; every write of the
run's record ends with run.json, see `scan`).

Re-reading: Python reads the changed runs' files in batches and writes each batch as one
newline-delimited temp file per source; a worker thread hands each to the same reader
macro the views use (one DuckDB scan per batch, not one per file) while the next batch is
read. With more than one batch, reader processes (INGEST_READERS, forked) read batches
side by side. 10,000 runs of 10 phases (120,000 files) take ~3 s; a refresh that finds nothing
changed costs the stat calls (~70 ms) and does not open the rollup.

The rollup is a git-ignored cache: deleted, stale, broken or written by another DuckDB
version, it is rebuilt. Views are always defined by executing the packaged views.sql
(`pipeline/data/views.sql`, copied to `<workspace>/reports/views.sql` for the DuckDB CLI)
with the raw views of rolled-up sources pointed at the rollup tables. duckdb is imported
inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import AutopackError, InvalidInput, StepFailed
from pipeline.core.jsonio import write_text_atomic

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

REPORTS_DIR = Path("reports")
ROLLUP_DIR = REPORTS_DIR / "rollup"
ROLLUP_DB = ROLLUP_DIR / "rollup.duckdb"
BACKLOG_FILE = REPORTS_DIR / "project_issue_backlog.json"
# Bump when the rollup's own tables change in a way views.sql does not show.
ROLLUP_FORMAT = "7"
# Runs per ingest batch: reading one batch overlaps with DuckDB parsing the previous one.
INGEST_BATCH = 1000


def _env_count(name: str, default: int) -> int:
    """A tuning variable's value; a bad one is ignored (with its default) rather than
    stopping every command at import, and said on stderr once."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw.isdigit() and int(raw) <= 64:
        return int(raw)
    print(f"autopack: ignoring {name}={raw!r} (not a count from 0 to 64); using {default}: fix or unset it",
          file=sys.stderr)
    return default


INGEST_THREADS = max(1, _env_count("AUTOPACK_INGEST_THREADS", 1))
# Processes reading the files of a large re-read (more than one batch); 0: read in this
# process. Reading is Python-bound (open/read/close per small file), so two cores read
# two batches at once while DuckDB parses the previous ones.
INGEST_READERS = _env_count("AUTOPACK_INGEST_READERS", min(2, os.cpu_count() or 1))
# pipeline.models.base.ID_PATTERN (a test keeps them equal), not imported: the up-to-date
# check of `doit report` imports this module and should not pay for pydantic.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_IDS = re.compile(ID_PATTERN, re.MULTILINE)
_PHASE_DIR = re.compile(r"^[0-9]+-" + ID_PATTERN.lstrip("^"))


@dataclass(frozen=True)
class Source:
    """A raw view kept in the rollup: where each run's files are, how a row names its file.

    A `tagged` source's files do not name their run (issues.json, ci.json): each document
    is tagged with its own path as `filename` when it is concatenated, and its table keeps
    the run id (taken from that path) in an extra first column, `run_id`.
    """

    view: str
    reader: str
    pattern: str  # relative to runs/<run_id>/
    filename_sql: str = ""  # the row's file, rebuilt from its fields (the reader saw a temp file)
    tagged: bool = False


SOURCES = (
    Source("raw_runs", "read_run_records", "run.json", "'runs/' || run_id || '/run.json'"),
    Source(
        "raw_run_issues",
        "read_run_issue_indexes",
        "run_issue_index.json",
        "'runs/' || run_id || '/run_issue_index.json'",
    ),
    Source(
        "raw_phases",
        "read_phase_records",
        "phases/*/phase.json",
        "'runs/' || run_id || '/phases/' || printf('%02d', index) || '-' || phase_id || '/phase.json'",
    ),
    # what the project backlog reads (issues/backlog.py): every phase's issues, the tests CI saw
    Source("raw_phase_issues", "read_phase_issue_files", "phases/*/issues.json", tagged=True),
    Source("raw_ci", "read_ci_reports", "phases/*/ci/*/ci.json", tagged=True),
)

# In the rollup, attempts come from phase.json's attempts[] (written together with
# builder.json), so the attempts view needs no walk over attempts/*/builder.json. They are
# unnested once, at ingest, into a flat table (with the run id, to replace a run's rows).
# Each row keeps `path` (artifact_path of its filename: what views.sql's located_attempts
# adds), so reports do not run that regex over every attempt each time.
_ATTEMPTS_OF_GONE_RUNS = (
    "SELECT *, artifact_path(filename) AS path FROM ("
    "SELECT run_id, a.*, regexp_replace(filename, 'phase[.]json$', 'attempts/' || a.k || '/builder.json') "
    "AS filename FROM (SELECT run_id, filename, unnest(attempts) AS a FROM rollup.raw_phases "
    "WHERE run_id IN (SELECT run_id FROM gone)))"
)


# The tests each CI report saw pass, one row per (run, phase, test): what the backlog asks
# of ci.json (a test:<node_id> key is resolved by a later green run), unnested once at
# ingest rather than at every start_run (10,000 runs: ~1 s of unnesting tries and steps).
_GREEN_TESTS_OF_GONE_RUNS = r"""
WITH tries AS (
    SELECT run_id, regexp_extract(filename, 'phases[/\\][0-9]+-([^/\\]+)[/\\]ci[/\\]', 1) AS phase_id,
           unnest(tries) AS try
    FROM rollup.raw_ci WHERE run_id IN (SELECT run_id FROM gone)
), steps AS (
    SELECT run_id, phase_id, unnest(try.steps) AS step FROM tries
), tests AS (
    SELECT run_id, phase_id, unnest(step.tests) AS t FROM steps
)
SELECT DISTINCT run_id, phase_id, t.node_id AS node_id FROM tests WHERE t.outcome = 'passed'
"""


# Each run's contribution to the project backlog, one flat row per (run, issue key): what
# the backlog aggregates across runs (issues/backlog.py), so a start_run groups ~one row per
# run and key instead of unnesting every phase's issues (10,000 runs: ~100,000 issues).
# `source` has the columns of read_phase_issue_files (filename: the file's path); issues
# resolved within their run do not age and are left out. An artifact path's run id and
# phase index come from `filename`; evidence inside a run's record is relative to that
# run and made workspace-relative here.
_SEP = r"[/\\]"
_PART = r"[^/\\]+"
ISSUE_KEYS_SQL = f"""
WITH files AS (
    SELECT regexp_extract(
               filename, '({_PART}){_SEP}phases{_SEP}([0-9]+)-{_PART}{_SEP}issues\\.json$',
               ['run_id', 'phase_index']) AS loc,
           phase_id, tier_id, issues
    FROM @ISSUES@
), hits AS (
    SELECT loc.run_id AS run_id, CAST(loc.phase_index AS BIGINT) AS phase_index, phase_id, tier_id,
           unnest(issues) AS issue
    FROM files
)
SELECT run_id, issue.issue_key AS issue_key,
       min(phase_index) AS first_phase_index,
       max(phase_index) AS last_phase_index,
       list_distinct(list(tier_id)) AS tiers,
       arg_max(phase_id, phase_index) AS last_phase_id,
       arg_max(issue.category, phase_index) AS category,
       arg_max(issue.severity, phase_index) AS severity,
       arg_max(coalesce(issue.message, ''), phase_index) AS message,
       arg_max(coalesce(issue.task_category, ''), phase_index) AS task_category,
       list_distinct(flatten(list(list_transform(coalesce(issue.evidence_refs, []), lambda ref: CASE
           WHEN regexp_matches(ref, '^(phases|incident|tiers){_SEP}') THEN 'runs/' || run_id || '/' || ref
           ELSE ref END)))) AS evidence
FROM hits
WHERE issue.issue_key IS NOT NULL AND coalesce(issue.status, 'open') <> 'resolved'
GROUP BY run_id, issue.issue_key
"""


def _issue_keys_of(source: str) -> str:
    return ISSUE_KEYS_SQL.replace("@ISSUES@", source)


@dataclass(frozen=True)
class Refresh:
    runs: int
    reread: int
    removed: int


# -- views.sql --------------------------------------------------------------------------


def _data(name: str) -> Path:
    # importlib.resources, not pipeline.config.profiles: the up-to-date check of `doit report`
    # imports this module and must not pay for pydantic and YAML.
    from importlib import resources

    return Path(str(resources.files("pipeline") / "data" / name))


def views_sql() -> str:
    return _data("views.sql").read_text(encoding="utf-8")


def none_file() -> Path:
    """An empty file: what a raw view reads when no artifact of its kind exists yet."""
    return _data("none.json")


def split_statements(sql: str) -> list[str]:
    """The statements of views.sql: each ends with `;` at the end of a line (comments skipped)."""
    statements: list[str] = []
    current: list[str] = []
    for line in sql.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        if line.rstrip().endswith(";") and not line.lstrip().startswith("--"):
            statements.append("\n".join(current))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


_RAW_VIEW = re.compile(r"^CREATE OR REPLACE VIEW (raw_\w+) AS FROM \w+\(getvariable\('(\w+)'\)\);$")
_ANY_VIEW = re.compile(r"^CREATE OR REPLACE VIEW (\w+) AS ")
_READ_VIEW = re.compile(r"^CREATE OR REPLACE VIEW (raw_\w+) AS FROM (\w+)\(")
_SET_FILES = re.compile(r"^SET VARIABLE (\w+) = files_or_none\('([^']*)'\);$")


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def define_views(
    con: DuckDBPyConnection,
    workspace: Path,
    overrides: Mapping[str, str],
    runs: Sequence[str] | None = None,
    needed_by: str | None = None,
) -> None:
    """Execute views.sql on `con` for `workspace`; `overrides` maps a view (usually a raw one) to its SQL.

    With `needed_by` (a query), only the macros, variables and views that query can reach
    are defined (see `needed_statements`).

    File patterns are made absolute unless the workspace is the current directory (DuckDB
    resolves relative paths against the process's), so `filename` stays relative in the
    usual case of a task run from the workspace. With `runs`, every raw view reads only
    those runs' files (listed here, so no glob walks the whole tree).
    """
    base = "" if Path(workspace).resolve() == Path.cwd().resolve() else str(Path(workspace).resolve()) + "/"
    if any(ch in base for ch in "*?[]{}"):
        raise InvalidInput(f"{workspace}: the path holds a glob character", "run the reports from the workspace itself")
    statements = split_statements(views_sql())
    if needed_by is not None:
        statements = needed_statements(statements, needed_by)
    skipped_vars = {m.group(2) for s in statements if (m := _RAW_VIEW.match(s)) and m.group(1) in overrides}
    for statement in statements:
        raw, files = _RAW_VIEW.match(statement), _SET_FILES.match(statement)
        view = raw or _ANY_VIEW.match(statement)
        if view and view.group(1) in overrides:
            statement = f"CREATE OR REPLACE VIEW {view.group(1)} AS {overrides[view.group(1)]};"
        elif files and files.group(1) in skipped_vars:
            continue
        elif files and runs is not None:
            statement = f"SET VARIABLE {files.group(1)} = {_listed(workspace, files.group(2), runs)};"
        elif files:
            statement = f"SET VARIABLE {files.group(1)} = files_or_none({_sql_text(base + files.group(2))});"
        elif statement.startswith("CREATE OR REPLACE MACRO files_or_none"):
            statement = statement.replace("'reports/none.json'", _sql_text(str(none_file())))
        con.execute(statement)


_DEFINES = re.compile(r"^CREATE OR REPLACE (?:MACRO|VIEW) (\w+)|^SET VARIABLE (\w+)")
_WORD = re.compile(r"[a-z_][a-z0-9_]*")
# A query naming one of these looks at the catalog (`SHOW TABLES`, `FROM duckdb_views()`):
# it gets every view.
_CATALOG_WORDS = frozenset(
    {"show", "describe", "summarize", "pragma", "information_schema", "pg_catalog", "sqlite_master"}
)


# What a statement of views.sql reads: a relation after FROM/JOIN, a macro call, a variable.
_REFERENCE = re.compile(
    r"getvariable\('([a-z_][a-z0-9_]*)'\)|\b(?:from|join)\s+([a-z_][a-z0-9_]*)|([a-z_][a-z0-9_]*)\s*\("
)


def _words(sql: str) -> set[str]:
    return set(_WORD.findall(sql.lower()))


def _references(statement: str) -> set[str]:
    code = "\n".join(line.split("--", 1)[0] for line in statement.lower().splitlines())
    return {next(g for g in m.groups() if g) for m in _REFERENCE.finditer(code)}


def needed_statements(statements: Sequence[str], query: str) -> list[str]:
    """The statements of views.sql that `query` reaches, in their order.

    A query can only read a view, macro or variable it names (any word of the query counts;
    a statement of views.sql reads what follows its FROM/JOIN, the macros it calls and
    its getvariable() names), so the rest are left undefined: binding each of the ~35
    statements costs DuckDB ~1 ms, more than the query itself over the rollup. A query
    that names none of them, or looks at the catalog, gets them all.
    """
    defines: dict[str, int] = {}
    for i, statement in enumerate(statements):
        if m := _DEFINES.match(statement):
            defines[(m.group(1) or m.group(2)).lower()] = i
    words = _words(query)
    if words & _CATALOG_WORDS or any(w.startswith("duckdb_") for w in words):
        return list(statements)
    todo = [defines[w] for w in words if w in defines]
    if not todo:
        return list(statements)
    keep: set[int] = set()
    while todo:
        i = todo.pop()
        if i not in keep:
            keep.add(i)
            todo += [defines[w] for w in _references(statements[i]) if w in defines and defines[w] != i]
    return [st for i, st in enumerate(statements) if i in keep or not _DEFINES.match(st)]


def _listed(workspace: Path, pattern: str, runs: Sequence[str]) -> str:
    """The files of `pattern` (`runs/*/...`) in the given runs, as a SQL list literal."""
    root = Path(workspace).resolve()
    found: list[Path] = []
    for run_id in runs:
        if pattern.startswith("runs/*/"):
            found += sorted((root / "runs" / run_id).glob(pattern.removeprefix("runs/*/")))
    return "[" + ", ".join(_sql_text(str(p)) for p in (found or [none_file()])) + "]"


# -- scanning ---------------------------------------------------------------------------


def _stat_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "-"
    return f"{st.st_mtime_ns}.{st.st_size}.{st.st_ino}"


def scan(workspace: Path) -> dict[str, str]:
    """run id -> stamp (mtime, size, inode) of its run.json, for every started run.

    One stat call per run, relative to an open runs/ directory, and nothing else (10,000
    runs: ~35-50 ms under load, half of what stat-ing run_issue_index.json too cost):
    `doit sql` and the up-to-date check of `doit report` pay it every time. run.json is
    the run's last write whenever its record changes (the recorder rewrites it, with
    `updated_at`, after the phase, issue and CI files it summarises), so its stamp stands
    for the run; a hand edit of run.json itself, in place or by rename, is seen too. A
    hand edit of another file alone is not: touch run.json, or delete `reports/rollup/`
    (a cache, rebuilt by the next report) to have every run re-read.
    """
    runs: dict[str, str] = {}
    root = os.path.join(str(workspace), "runs")
    try:
        names = os.listdir(root)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return runs
    try:
        stat_at = os.stat
        # one regex pass over every name, not a call per name (a name holding a line
        # break yields its parts: each is stat-ed like any other name, and names a run
        # only if that run's directory exists)
        for name in dict.fromkeys(_IDS.findall("\n".join(names))):
            try:
                st = stat_at(name + "/run.json", dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                continue
            runs[name] = f"{st.st_mtime_ns}.{st.st_size}.{st.st_ino}"
    finally:
        os.close(fd)
    return runs


def code_version() -> str:
    """Changes when the views or the rollup format change: both invalidate the rollup."""
    return hashlib.sha256((ROLLUP_FORMAT + "\n" + views_sql()).encode()).hexdigest()[:16]


def fingerprint(workspace: Path, extra: str = "", current: Mapping[str, str] | None = None) -> str:
    """A cheap digest of everything reports read (stat calls only, no file is opened).

    `current`: a `scan` the caller already made (`doit report` hands the one of its
    up-to-date check to `refresh`: one scan per invocation, not two).
    """
    digest = hashlib.sha256(f"{code_version()}\n{extra}\n".encode())
    digest.update(_stat_stamp(str(Path(workspace) / BACKLOG_FILE)).encode())
    stamps = sorted((scan(workspace) if current is None else current).items())
    digest.update("".join(f"\n{run_id} {stamp}" for run_id, stamp in stamps).encode())
    return digest.hexdigest()


# -- the rollup -------------------------------------------------------------------------


def _source_files(run_dir: str, pattern: str) -> list[str]:
    """The files of `pattern` (`*`: a phase directory, or any directory deeper) in a run."""
    # Plain strings and os.scandir: at 100,000 files pathlib's overhead is most of the time.
    paths = [run_dir]
    for depth, part in enumerate(pattern.split("/")):
        if part != "*":
            paths = [f"{p}/{part}" for p in paths]
            continue
        found: list[str] = []
        for p in paths:
            try:
                with os.scandir(p) as entries:
                    found += sorted(
                        e.path for e in entries if (_PHASE_DIR.match(e.name) if depth == 1 else e.is_dir())
                    )
            except (FileNotFoundError, NotADirectoryError):
                continue
        paths = found
    return paths


# DuckDB's limit for one document (`maximum_object_size` in views.sql).
_MAX_BYTES = 67108864
# What stands for a file that is not one JSON object, not a regular file or too large:
# not JSON, so the bulk read fails and `_first_bad_file` names the file.
NOT_A_DOCUMENT = b"!"


def read_artifact(path: str) -> bytes | None:
    """The file's bytes; None when it is missing. A FIFO, device or directory where an
    artifact belongs (a record checked out from git can hold anything) is never waited
    on or read without bound: it reads as `NOT_A_DOCUMENT`."""
    # os.open/os.read: half the cost of open() and its buffered reader, per small file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return NOT_A_DOCUMENT
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return NOT_A_DOCUMENT
        data = os.read(fd, 1 << 16)
        if len(data) == 1 << 16:
            chunks = [data]
            size = len(data)
            while size <= _MAX_BYTES and (more := os.read(fd, 1 << 20)):
                chunks.append(more)
                size += len(more)
            data = b"".join(chunks)
        return data if len(data) <= _MAX_BYTES else NOT_A_DOCUMENT
    finally:
        os.close(fd)


def one_line(data: bytes, tag: str | None = None) -> bytes:
    """The document on one line, with `"filename": tag` first when given; anything but a
    JSON object becomes `NOT_A_DOCUMENT` (DuckDB refuses it and the file is named)."""
    # Valid JSON has no raw line break inside a string, so dropping them all makes the
    # pretty-printed file one line: DuckDB splits newline-delimited input across threads
    # (5x faster than reading the pretty-printed stream).
    body = data.translate(None, b"\r\n").strip()
    if not body.startswith(b"{"):
        return NOT_A_DOCUMENT
    if tag is None:
        return body
    rest = body[1:].lstrip()
    head = b'{"filename":' + json.dumps(tag).encode()
    return head + (rest if rest.startswith(b"}") else b"," + rest)


def _concatenate(workspace: Path, run_ids: Sequence[str], into: Path, tag: str) -> list[tuple[Source, Path]]:
    """One temp file per source holding these runs' files, one document per line."""
    out = {s.view: into / f"{s.view}-{tag}.ndjson" for s in SOURCES}
    written: set[str] = set()
    runs = f"{workspace}/runs"
    handles = {view: open(path, "wb") for view, path in out.items()}  # noqa: SIM115
    try:
        for run_id in run_ids:
            run_dir = f"{runs}/{run_id}"
            for source in SOURCES:
                for path in _source_files(run_dir, source.pattern):
                    data = read_artifact(path)
                    if data is not None:
                        named = f"runs/{path[len(runs) + 1 :]}" if source.tagged else None
                        handles[source.view].write(one_line(data, named) + b"\n")
                        written.add(source.view)
    finally:
        for handle in handles.values():
            handle.close()
    return [(s, out[s.view]) for s in SOURCES if s.view in written]


def _first_bad_file(workspace: Path, run_ids: Sequence[str]) -> str:
    """Which file broke a bulk read (only looked for after one failed)."""
    runs = os.path.join(str(workspace), "runs")
    for run_id in run_ids:
        for source in SOURCES:
            for path in _source_files(os.path.join(runs, run_id), source.pattern):
                data = read_artifact(path)
                try:
                    if data is not None and not isinstance(json.loads(data), dict):
                        return f"{path}: not a JSON object"
                except ValueError as exc:
                    return f"{path}: {exc}"
    return ""


def _create_tables(con: DuckDBPyConnection) -> None:
    empty = _sql_text(str(none_file()))
    for source in SOURCES:
        if source.tagged:
            con.execute(
                f"CREATE TABLE rollup.{source.view} AS SELECT NULL::VARCHAR AS run_id, * "
                f"FROM {source.reader}_tagged({empty})"
            )
        else:
            con.execute(f"CREATE TABLE rollup.{source.view} AS FROM {source.reader}({empty})")
    con.execute(
        "CREATE TABLE rollup.raw_attempts AS SELECT NULL::VARCHAR AS run_id, *, artifact_path(filename) AS path "
        f"FROM read_attempt_records({empty})"
    )
    con.execute("CREATE TABLE rollup.green_tests (run_id VARCHAR, phase_id VARCHAR, node_id VARCHAR)")
    con.execute(f"CREATE TABLE rollup.issue_keys AS {_issue_keys_of('rollup.raw_phase_issues')} LIMIT 0")
    con.execute("CREATE TABLE rollup.rollup_files (run_id VARCHAR PRIMARY KEY, stamp VARCHAR NOT NULL)")
    con.execute("CREATE TABLE rollup.rollup_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO rollup.rollup_meta VALUES ('version', ?)", [_rollup_version()])


def _rollup_version() -> str:
    import duckdb

    return f"{code_version()} duckdb {duckdb.__version__}"


def _readers(con: DuckDBPyConnection) -> None:
    """The reader macros of views.sql, reading one document per line (what `_concatenate`
    writes); they live in the in-memory catalog of the ingesting connection only."""
    tagged = {s.reader for s in SOURCES if s.tagged}
    for statement in split_statements(views_sql()):
        if statement.startswith("CREATE OR REPLACE MACRO artifact_path("):
            con.execute(statement)  # the `path` of raw_attempts, kept at ingest
        if statement.startswith("CREATE OR REPLACE MACRO read_"):
            statement = statement.replace("format = 'unstructured'", "format = 'newline_delimited'")
            con.execute(statement)
            name = statement.split("(", 1)[0].rsplit(" ", 1)[1]
            if name in tagged:
                # the same reader for documents tagged with their path (`one_line`): the
                # path is a column declared last, where `filename = true` puts it
                assert statement.endswith("\n});") and "filename = true" in statement
                con.execute(
                    statement.replace(f"MACRO {name}(", f"MACRO {name}_tagged(", 1)
                    .replace("filename = true", "filename = false")
                    .removesuffix("\n});")
                    + ",\n    filename: 'VARCHAR'\n});"
                )


def _attach_rw(con: DuckDBPyConnection, db: Path) -> None:
    """Attach the rollup for writing; a stale, foreign or broken one is replaced."""
    import duckdb

    try:
        con.execute(f"ATTACH {_sql_text(str(db))} AS rollup")
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise StepFailed(
                f"{db} is in use by another process: {exc}", "wait for the other `doit report`/`doit sql` to finish"
            ) from exc
        _drop_files(db)
        con.execute(f"ATTACH {_sql_text(str(db))} AS rollup")
    try:
        row = con.execute("SELECT value FROM rollup.rollup_meta WHERE key = 'version'").fetchone()
    except duckdb.Error:
        row = None
    if row is not None and row[0] == _rollup_version():
        return
    con.execute("DETACH rollup")
    _drop_files(db)
    con.execute(f"ATTACH {_sql_text(str(db))} AS rollup")
    _create_tables(con)


def _drop_files(db: Path) -> None:
    for path in (db, db.with_name(db.name + ".wal")):
        path.unlink(missing_ok=True)


def _fresh_marker(db: Path, current: Mapping[str, str]) -> str:
    """What the rollup was last made from: the runs' stamps, the rollup file, the code."""
    import duckdb

    digest = hashlib.sha256(_rollup_version().encode())
    digest.update("".join(f"\n{run_id} {stamp}" for run_id, stamp in sorted(current.items())).encode())
    wal = db.with_name(db.name + ".wal")
    return f"{digest.hexdigest()} {_stat_stamp(str(db))} {_stat_stamp(str(wal))} {duckdb.__version__}"


def refresh(workspace: Path, current: Mapping[str, str] | None = None) -> Refresh:
    """Bring the rollup up to date with runs/: re-read changed runs, forget deleted ones.

    When nothing changed since the last refresh (`fresh` marker: a digest of every run's
    stamp and of the rollup file's own stat) the rollup is not even opened. `current` is a
    `scan` made moments before by the same command; a run that changed since then has a
    newer stamp than the one recorded, so the next refresh re-reads it.
    """
    workspace = Path(workspace)
    db = workspace / ROLLUP_DB
    marker = db.parent / "fresh"
    db.parent.mkdir(parents=True, exist_ok=True)
    # a cache: never committed, whatever the workspace's own .gitignore says
    write_text_atomic(db.parent / ".gitignore", "# the reports' rollup cache (doit report)\n*\n")
    current = dict(scan(workspace) if current is None else current)
    with contextlib.suppress(FileNotFoundError):
        if marker.read_text(encoding="utf-8") == _fresh_marker(db, current):
            return Refresh(runs=len(current), reread=0, removed=0)
    con = _memory()
    try:
        # One DuckDB thread parses while this one reads the next batch of files: on two
        # cores that overlaps better than DuckDB's threads competing with the reader.
        con.execute(f"SET threads = {INGEST_THREADS}")
        _readers(con)
        _attach_rw(con, db)
        known = dict(con.execute("SELECT run_id, stamp FROM rollup.rollup_files").fetchall())
        changed = sorted(r for r, stamp in current.items() if known.get(r) != stamp)
        removed = sorted(set(known) - set(current))
        if changed or removed:
            _apply(con, workspace, changed, removed, current)
    finally:
        con.close()
    # written once the rollup file is closed (its stat is final)
    write_text_atomic(marker, _fresh_marker(db, current))
    return Refresh(runs=len(current), reread=len(changed), removed=len(removed))


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _apply(
    con: DuckDBPyConnection, workspace: Path, changed: list[str], removed: list[str], current: Mapping[str, str]
) -> None:
    """Replace the rows of changed and removed runs, in one transaction.

    Reading the files (Python, holding the GIL) and parsing them (DuckDB, which releases it)
    overlap: runs go in batches, and each batch's temp files are inserted by a worker thread
    while the next batch is read. Only that thread uses the connection until it is done.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    con.execute("BEGIN TRANSACTION")
    try:
        # Lists travel as one newline-joined string: DuckDB converts a Python list
        # parameter element by element, probing imports (numpy, pandas) for each.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE gone AS SELECT unnest(string_split(?, chr(10))) AS run_id",
            ["\n".join(changed + removed)],
        )
        for view in [*(s.view for s in SOURCES), "raw_attempts", "green_tests", "issue_keys"]:
            con.execute(f"DELETE FROM rollup.{view} WHERE run_id IN (SELECT run_id FROM gone)")
        with (
            tempfile.TemporaryDirectory(dir=workspace / ROLLUP_DIR, prefix=".ingest-") as tmp,
            ThreadPoolExecutor(max_workers=1) as duck,
        ):
            pending: list[Future[None]] = []
            for concatenated in _read_batches(workspace, changed, Path(tmp)):
                for source, path in concatenated:
                    pending.append(duck.submit(_insert, con, source, path))
            errors = [f.exception() for f in pending]
        if first := next((e for e in errors if e is not None), None):
            raise first
        _check_run_ids(con)
        con.execute(f"INSERT INTO rollup.raw_attempts BY NAME {_ATTEMPTS_OF_GONE_RUNS}")
        con.execute(f"INSERT INTO rollup.green_tests {_GREEN_TESTS_OF_GONE_RUNS}")
        gone = "(SELECT * FROM rollup.raw_phase_issues WHERE run_id IN (SELECT run_id FROM gone))"
        con.execute(f"INSERT INTO rollup.issue_keys {_issue_keys_of(gone)}")
        con.execute("RESET threads")  # the commit compresses and writes: every core helps
        con.execute("DELETE FROM rollup.rollup_files WHERE run_id IN (SELECT run_id FROM gone)")
        if changed:
            con.execute(
                "INSERT INTO rollup.rollup_files SELECT unnest(string_split(?, chr(10))), "
                "unnest(string_split(?, chr(10)))",
                ["\n".join(changed), "\n".join(current[r] for r in changed)],
            )
        con.execute("COMMIT")
    except BaseException as exc:
        con.execute("ROLLBACK")
        if isinstance(exc, AutopackError) or not is_duckdb_error(exc):
            raise
        bad = _first_bad_file(workspace, changed)
        raise InvalidInput(
            f"cannot read the run records{': ' + bad if bad else ''} ({str(exc).splitlines()[0]})",
            "`doit validate --run <run>` names the broken artifact; fix or remove it",
        ) from exc


def _read_batches(workspace: Path, changed: Sequence[str], into: Path) -> Iterator[list[tuple[Source, Path]]]:
    """`_concatenate` over batches of the changed runs, in order: in reader processes when
    there is more than one batch (a one-run refresh does not pay for starting them)."""
    batches = list(_batches(changed, INGEST_BATCH))
    tags = [str(n) for n in range(len(batches))]
    if INGEST_READERS < 1 or len(batches) < 2:
        yield from map(_concatenate, [workspace] * len(batches), batches, [into] * len(batches), tags)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: spawn and forkserver re-import the main module (doit's, a test's), and `map`
    # starts every reader before the DuckDB thread gets its first batch to insert.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=INGEST_READERS, mp_context=context) as readers:
        yield from readers.map(_concatenate, [workspace] * len(batches), batches, [into] * len(batches), tags)


def is_duckdb_error(exc: BaseException) -> bool:
    import duckdb

    return isinstance(exc, duckdb.Error)


def _insert(con: DuckDBPyConnection, source: Source, path: Path) -> None:
    if source.tagged:
        reader = f"{source.reader}_tagged({_sql_text(str(path))})"
        con.execute(
            f"INSERT INTO rollup.{source.view} SELECT regexp_extract(filename, '^runs/([^/]+)/', 1) AS run_id, * "
            f"FROM {reader}"
        )
    else:
        reader = f"{source.reader}({_sql_text(str(path))})"
        con.execute(
            f"INSERT INTO rollup.{source.view} SELECT * REPLACE ({source.filename_sql} AS filename) FROM {reader}"
        )
    path.unlink()


def _check_run_ids(con: DuckDBPyConnection) -> None:
    """Rows are replaced by run_id: a file naming another run than its directory would linger."""
    for source in (s for s in SOURCES if not s.tagged):  # a tagged row's run is its path's
        strays = con.execute(
            f"SELECT DISTINCT coalesce(run_id, 'null') FROM rollup.{source.view} "
            "WHERE run_id IS NULL OR run_id NOT IN (SELECT run_id FROM rollup.rollup_files UNION ALL FROM gone) "
            "LIMIT 5"
        ).fetchall()
        if strays:
            raise InvalidInput(
                f"a {source.pattern} under runs/ names run id(s) {', '.join(repr(r[0]) for r in strays)}, "
                "which is not its directory's name",
                "a run's directory is named after its run_id; rename the directory or restore the file",
            )


# -- connections ------------------------------------------------------------------------


def _memory() -> DuckDBPyConnection:
    import duckdb

    con = duckdb.connect()
    # DuckDB draws a progress bar on a terminal for long statements: not in our output.
    con.execute("SET enable_progress_bar = false")
    return con


# The raw views that read files (without the rollup, or not kept in it), and the views built on them.
FILE_VIEWS = {
    "raw_ci": "ci_runs",
    "raw_phase_issues": "issues",
    "raw_events": "events",
    "raw_backlog_file": "backlog_file",
}


def _placeholders(query: str) -> dict[str, str]:
    """Empty, typed stand-ins for the file-reading raw views that `query` does not name.

    DuckDB lists a view's glob each time the view, or a view over it, is bound: ~45 ms per
    statement at 10,000 runs (runs/* holds 10,000 entries), twice per file view. A query
    cannot read a view without naming it (or its raw view), so unnamed ones stay empty.
    """
    words = set(re.findall(r"[a-z_][a-z0-9_]*", query.lower()))
    empty = _sql_text(str(none_file()))
    out = {}
    for statement in split_statements(views_sql()):
        m = _READ_VIEW.match(statement)
        if m and m.group(1) in FILE_VIEWS and not words & {m.group(1), FILE_VIEWS[m.group(1)]}:
            out[m.group(1)] = f"FROM {m.group(2)}({empty})"
    return out


@contextlib.contextmanager
def connect(
    workspace: Path, *, rollup: bool = True, refresh_first: bool = True, query: str | None = None
) -> Iterator[DuckDBPyConnection]:
    """An in-memory DuckDB connection with every view of views.sql defined over `workspace`.

    With `rollup` (the default) the rollup is refreshed first (unless the caller just did)
    and the rolled-up raw views read it, attached read-only so an ad-hoc query cannot damage
    it; without, every view reads the files. Given the `query` to be run, the views that
    read files and that it does not name are left empty (see `_placeholders`).
    """
    overrides: dict[str, str] = {}
    con = _memory()
    try:
        if rollup and refresh_first:
            try:
                refresh(workspace)
            except PermissionError:  # a read-only checkout: no cache, the views read the files
                rollup = False
        if rollup:
            con.execute(f"ATTACH {_sql_text(str(Path(workspace) / ROLLUP_DB))} AS rollup (READ_ONLY)")
            overrides = {
                s.view: f"SELECT * EXCLUDE (run_id) FROM rollup.{s.view}" if s.tagged else f"FROM rollup.{s.view}"
                for s in SOURCES
            }
            overrides["raw_attempts"] = "SELECT * EXCLUDE (run_id, path) FROM rollup.raw_attempts"
            overrides["located_attempts"] = "SELECT * EXCLUDE (run_id) FROM rollup.raw_attempts"
        if query is not None:
            overrides.update(_placeholders(query))
        define_views(con, workspace, overrides, needed_by=query or None)
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def connect_runs(workspace: Path, run_ids: Sequence[str]) -> Iterator[DuckDBPyConnection]:
    """The views over just these runs' files (no rollup, no walk over runs/)."""
    con = _memory()
    try:
        define_views(con, workspace, {}, runs=list(dict.fromkeys(run_ids)))  # a run named twice: once
        yield con
    finally:
        con.close()


def query_rows(con: DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of `sql` as dicts (column name -> value)."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description or []]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
