-- Autopack: DuckDB views over a workspace's runs/ (docs/metrics.md). Paths are relative to the
-- workspace root, so from there:
--
--     duckdb -init reports/views.sql             then e.g.  FROM runs ORDER BY created_at;
--     doit sql --query "FROM runs LIMIT 5"       the same views (over the rollup, see below)
--
-- `doit report` writes this file into reports/ from the copy shipped in the package
-- (pipeline/data/views.sql); edits made here are overwritten. Keep your own views in
-- another file and `.read` it after this one.
--
-- Three layers:
--   1. readers: one table macro per artifact. Every read_json declares `columns`, copied
--      from the artifact's JSON Schema (schemas/*.schema.json; tests/test_reports.py fails
--      when a model gains a field that is missing here), so types never depend on which
--      files were sampled and no field is dropped silently. A file written before a field
--      existed reads NULL there. `filename` records the file each row came from.
--      (`union_by_name` is not needed: with explicit columns every file is read into the
--      same shape. `hive_partitioning` is off: `runs/<id>/` is not a key=value path.)
--   2. raw_*: one row per artifact file, the artifact's own fields plus `filename`.
--      `doit report`, `doit sql` and the backlog keep raw_runs, raw_phases,
--      raw_run_issues, raw_phase_issues and raw_ci (and the attempts inside phase.json)
--      in an incremental rollup, reports/rollup/rollup.duckdb, re-read only for runs
--      whose run.json changed; the other raw views read the files directly
--      (DuckDB lists a deep glob slowly: ~30 s for 200,000 builder.json files).
--   3. the views: runs, tiers, phases, phase_records, attempts (over located_attempts), ci_runs, issues,
--      run_issues, events, backlog (derived here), backlog_file (the materialised file).
--
-- Timestamps are ISO-8601 UTC strings in the artifacts; the views cast them to TIMESTAMP
-- (UTC). Costs are USD.

-- 1. readers ------------------------------------------------------------------------------

CREATE OR REPLACE MACRO read_run_records(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    base_commit: 'VARCHAR',
    base_ref: 'VARCHAR',
    branch: 'VARCHAR',
    budgets: 'STRUCT(cost_cap_usd DOUBLE, max_duration_minutes BIGINT, max_minor_issues_total BIGINT, max_phases BIGINT, token_cap BIGINT)',
    chain_next: 'VARCHAR',
    chained_from: 'VARCHAR',
    created_at: 'VARCHAR',
    current_phase: 'VARCHAR',
    debt_status: 'VARCHAR',
    events_count: 'BIGINT',
    events_head: 'VARCHAR',
    failure_reason: 'VARCHAR',
    finished_at: 'VARCHAR',
    isolation: 'VARCHAR',
    last_snapshot: 'VARCHAR',
    phases: 'STRUCT(attempts BIGINT, commit VARCHAR, complexity VARCHAR, cost_usd DOUBLE, index BIGINT, name VARCHAR, phase_id VARCHAR, state VARCHAR, tag VARCHAR, task_category VARCHAR, tier_id VARCHAR, tokens BIGINT)[]',
    plan_sha256: 'VARCHAR',
    project_id: 'VARCHAR',
    promoted_at: 'VARCHAR',
    promoted_commit: 'VARCHAR',
    promotion_eligible_to_main: 'BOOLEAN',
    promotion_reasons: 'VARCHAR[]',
    run_id: 'VARCHAR',
    run_scope: 'VARCHAR',
    safety_profile: 'VARCHAR',
    schema_version: 'BIGINT',
    spend: 'STRUCT(active_seconds DOUBLE, auditor_attempts BIGINT, builder_attempts BIGINT, ci_runs BIGINT, cost_estimated_usd DOUBLE, cost_reserved_usd DOUBLE, cost_usd DOUBLE, major_issues BIGINT, minor_issues BIGINT, tokens BIGINT, tokens_reserved BIGINT)',
    state: 'VARCHAR',
    target_repo: 'VARCHAR',
    tiers: 'STRUCT(ci_cap_hit BOOLEAN, cleanliness VARCHAR, cleanliness_reasons VARCHAR[], major_issue_count BIGINT, minor_issue_count BIGINT, name VARCHAR, spend STRUCT(active_seconds DOUBLE, auditor_attempts BIGINT, builder_attempts BIGINT, ci_runs BIGINT, cost_estimated_usd DOUBLE, cost_reserved_usd DOUBLE, cost_usd DOUBLE, major_issues BIGINT, minor_issues BIGINT, tokens BIGINT, tokens_reserved BIGINT), state VARCHAR, tier_id VARCHAR, token_cap_hit BOOLEAN)[]',
    updated_at: 'VARCHAR',
    worktree: 'VARCHAR'
});

CREATE OR REPLACE MACRO read_phase_records(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    approved_attempt: 'BIGINT',
    attempts: 'STRUCT(agent VARCHAR, base_commit VARCHAR, command VARCHAR, excluded_files VARCHAR[], exit_code BIGINT, fingerprint VARCHAR, finished_at VARCHAR, k BIGINT, outcome VARCHAR, patch_files VARCHAR[], patch_sha256 VARCHAR, reason VARCHAR, result_notes VARCHAR, role VARCHAR, started_at VARCHAR, timed_out BOOLEAN, transient_errors BIGINT, usage STRUCT(cost_usd DOUBLE, model VARCHAR, sources STRUCT(cost_usd VARCHAR, tokens_cached VARCHAR, tokens_in VARCHAR, tokens_out VARCHAR), tokens_cached BIGINT, tokens_in BIGINT, tokens_out BIGINT, turns BIGINT))[]',
    commit: 'VARCHAR',
    current_attempt: 'BIGINT',
    escalated: 'BOOLEAN',
    failure_reason: 'VARCHAR',
    feedback: 'VARCHAR',
    index: 'BIGINT',
    name: 'VARCHAR',
    phase_id: 'VARCHAR',
    run_id: 'VARCHAR',
    schema_version: 'BIGINT',
    spend: 'STRUCT(active_seconds DOUBLE, auditor_attempts BIGINT, builder_attempts BIGINT, ci_runs BIGINT, cost_estimated_usd DOUBLE, cost_reserved_usd DOUBLE, cost_usd DOUBLE, major_issues BIGINT, minor_issues BIGINT, tokens BIGINT, tokens_reserved BIGINT)',
    state: 'VARCHAR',
    step: 'VARCHAR',
    tag: 'VARCHAR',
    tampering_approved_attempt: 'BIGINT',
    tampering_reason: 'VARCHAR',
    tampering_review_attempt: 'BIGINT',
    tier_id: 'VARCHAR'
});

CREATE OR REPLACE MACRO read_attempt_records(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    agent: 'VARCHAR',
    base_commit: 'VARCHAR',
    command: 'VARCHAR',
    excluded_files: 'VARCHAR[]',
    exit_code: 'BIGINT',
    fingerprint: 'VARCHAR',
    finished_at: 'VARCHAR',
    k: 'BIGINT',
    outcome: 'VARCHAR',
    patch_files: 'VARCHAR[]',
    patch_sha256: 'VARCHAR',
    reason: 'VARCHAR',
    result_notes: 'VARCHAR',
    role: 'VARCHAR',
    started_at: 'VARCHAR',
    timed_out: 'BOOLEAN',
    transient_errors: 'BIGINT',
    usage: 'STRUCT(cost_usd DOUBLE, model VARCHAR, sources STRUCT(cost_usd VARCHAR, tokens_cached VARCHAR, tokens_in VARCHAR, tokens_out VARCHAR), tokens_cached BIGINT, tokens_in BIGINT, tokens_out BIGINT, turns BIGINT)'
});

CREATE OR REPLACE MACRO read_ci_reports(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    attempt: 'BIGINT',
    environment_error: 'VARCHAR',
    failing_tests: 'VARCHAR[]',
    flaky_tests: 'VARCHAR[]',
    phase_id: 'VARCHAR',
    profile: 'VARCHAR',
    schema_version: 'BIGINT',
    tries: 'STRUCT(n BIGINT, steps STRUCT(cmd VARCHAR, duration_s DOUBLE, junit VARCHAR, log VARCHAR, missing_command BOOLEAN, name VARCHAR, passed_not_listed BIGINT, returncode BIGINT, tests STRUCT(message VARCHAR, node_id VARCHAR, outcome VARCHAR)[], timed_out BOOLEAN)[], verdict VARCHAR)[]',
    verdict: 'VARCHAR'
});

CREATE OR REPLACE MACRO read_phase_issue_files(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    issue_state: 'VARCHAR',
    issues: 'STRUCT(category VARCHAR, complexity VARCHAR, effective_severity VARCHAR, evidence_refs VARCHAR[], expected_fail BOOLEAN, first_seen_run VARCHAR, issue_key VARCHAR, last_seen_run VARCHAR, message VARCHAR, occurrence_count BIGINT, resolved_in_attempt BIGINT, seen_in_attempts BIGINT[], severity VARCHAR, source VARCHAR, status VARCHAR, task_category VARCHAR)[]',
    major_issue_count: 'BIGINT',
    minor_issue_count: 'BIGINT',
    phase_id: 'VARCHAR',
    schema_version: 'BIGINT',
    tier_id: 'VARCHAR'
});

CREATE OR REPLACE MACRO read_run_issue_indexes(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 67108864, columns = {
    issues_by_key: 'MAP(VARCHAR, STRUCT(category VARCHAR, effective_severity VARCHAR, first_phase_index BIGINT, last_phase_index BIGINT, occurrence_count BIGINT, seen_in_phases VARCHAR[], seen_in_tiers VARCHAR[], severity VARCHAR, status VARCHAR))',
    run_id: 'VARCHAR',
    schema_version: 'BIGINT'
});

CREATE OR REPLACE MACRO read_event_logs(files) AS TABLE
SELECT * FROM read_json(files, format = 'newline_delimited', records = true, filename = true,
    hive_partitioning = false, columns = {
    data: 'JSON',
    entity: 'VARCHAR',
    from_state: 'VARCHAR',
    kind: 'VARCHAR',
    prev_sha256: 'VARCHAR',
    seq: 'BIGINT',
    to_state: 'VARCHAR',
    ts: 'VARCHAR'
});

CREATE OR REPLACE MACRO read_project_backlogs(files) AS TABLE
SELECT * FROM read_json(files, format = 'unstructured', records = true, filename = true,
    hive_partitioning = false, maximum_object_size = 268435456, columns = {
    issues_by_key: 'MAP(VARCHAR, STRUCT(age_in_runs BIGINT, age_in_tiers BIGINT, base_severity VARCHAR, category VARCHAR, evidence_refs VARCHAR[], first_seen_run_id VARCHAR, last_seen_at VARCHAR, last_seen_phase_id VARCHAR, last_seen_run_id VARCHAR, message VARCHAR, resolved_by VARCHAR, status VARCHAR))',
    project_id: 'VARCHAR',
    runs_read: 'BIGINT',
    schema_version: 'BIGINT'
});

-- The run id, phase index and phase id of an artifact's path: runs/<run_id>/<file> or
-- runs/<run_id>/phases/<NN>-<phase_id>/[(attempts|ci|audit)/<k>/]<file>. Anchored at the
-- end, so a workspace path that itself contains a runs/ directory does not confuse them.
CREATE OR REPLACE MACRO artifact_path(path) AS regexp_extract(path,
    '(^|/)runs/([^/]+)/(phases/([0-9]+)-([^/]+)/((attempts|ci|audit)/[^/]+/)?)?[^/]+$',
    ['_start', 'run_id', '_phase', 'phase_index', 'phase_id']);
CREATE OR REPLACE MACRO run_of(path) AS nullif(artifact_path(path).run_id, '');
CREATE OR REPLACE MACRO phase_index_of(path) AS TRY_CAST(artifact_path(path).phase_index AS BIGINT);
CREATE OR REPLACE MACRO phase_of(path) AS nullif(artifact_path(path).phase_id, '');
CREATE OR REPLACE MACRO utc(ts) AS TRY_CAST(ts AS TIMESTAMP);

-- 2. raw views: one row per file ----------------------------------------------------------

-- `pattern` when some file matches it, else reports/none.json (an empty file, written
-- beside this one): a view over artifacts nobody has written yet (no CI run so far, no
-- backlog file) is empty instead of an error. The choice is made when this file is read.
CREATE OR REPLACE MACRO files_or_none(pattern) AS
    CASE WHEN EXISTS (FROM glob(pattern)) THEN pattern ELSE 'reports/none.json' END;

SET VARIABLE run_files = files_or_none('runs/*/run.json');
SET VARIABLE phase_files = files_or_none('runs/*/phases/*/phase.json');
SET VARIABLE attempt_files = files_or_none('runs/*/phases/*/attempts/*/builder.json');
SET VARIABLE ci_files = files_or_none('runs/*/phases/*/ci/*/ci.json');
SET VARIABLE phase_issue_files = files_or_none('runs/*/phases/*/issues.json');
SET VARIABLE run_issue_files = files_or_none('runs/*/run_issue_index.json');
SET VARIABLE event_files = files_or_none('runs/*/events.jsonl');
SET VARIABLE backlog_files = files_or_none('reports/project_issue_backlog.json');

CREATE OR REPLACE VIEW raw_runs AS FROM read_run_records(getvariable('run_files'));
CREATE OR REPLACE VIEW raw_phases AS FROM read_phase_records(getvariable('phase_files'));
CREATE OR REPLACE VIEW raw_attempts AS FROM read_attempt_records(getvariable('attempt_files'));
CREATE OR REPLACE VIEW raw_ci AS FROM read_ci_reports(getvariable('ci_files'));
CREATE OR REPLACE VIEW raw_phase_issues AS FROM read_phase_issue_files(getvariable('phase_issue_files'));
CREATE OR REPLACE VIEW raw_run_issues AS FROM read_run_issue_indexes(getvariable('run_issue_files'));
CREATE OR REPLACE VIEW raw_events AS FROM read_event_logs(getvariable('event_files'));
CREATE OR REPLACE VIEW raw_backlog_file AS FROM read_project_backlogs(getvariable('backlog_files'));

-- 3. the views ------------------------------------------------------------------------------

-- One row per run (run.json).
CREATE OR REPLACE VIEW runs AS
SELECT
    run_id, project_id, state, starts_with(state, 'DONE_') AS terminal,
    safety_profile, run_scope, debt_status, failure_reason,
    promotion_eligible_to_main, promotion_reasons,
    spend.tokens AS tokens, spend.cost_usd AS cost_usd,
    -- the parts of the spend that were estimated (price table) or reserved (unknown usage)
    coalesce(spend.cost_estimated_usd, 0) AS cost_estimated_usd,
    coalesce(spend.cost_reserved_usd, 0) AS cost_reserved_usd,
    coalesce(spend.tokens_reserved, 0) AS tokens_reserved,
    spend.builder_attempts AS builder_attempts, spend.auditor_attempts AS auditor_attempts,
    spend.ci_runs AS ci_runs, spend.active_seconds AS active_seconds,
    spend.minor_issues AS minor_issues, spend.major_issues AS major_issues,
    budgets.token_cap AS token_cap, budgets.cost_cap_usd AS cost_cap_usd,
    budgets.max_duration_minutes AS max_duration_minutes,
    len(phases) AS phases_total,
    len(list_filter(phases, lambda p: p.state = 'COMPLETE')) AS phases_complete,
    len(list_filter(phases, lambda p: p.state = 'FAILED')) AS phases_failed,
    len(tiers) AS tiers_total,
    len(list_filter(tiers, lambda t: t.cleanliness = 'not_clean')) AS tiers_not_clean,
    utc(created_at) AS created_at, utc(updated_at) AS updated_at, utc(finished_at) AS finished_at,
    -- wall-clock time from start to the terminal state (active_seconds is time spent working)
    epoch(utc(finished_at) - utc(created_at)) AS duration_s,
    base_ref, base_commit, branch, target_repo, worktree, plan_sha256, current_phase, last_snapshot,
    promoted_commit, utc(promoted_at) AS promoted_at, chained_from, chain_next, isolation,
    events_count, events_head, schema_version, filename
FROM raw_runs;

-- One row per tier of each run (run.json tiers[]). promotion_blocked: a not_clean tier
-- keeps the run from being promoted (docs/architecture.md, Governance).
CREATE OR REPLACE VIEW tiers AS
SELECT
    run_id, project_id, run_state, safety_profile, run_created_at,
    t.tier_id, tier_index, t.name, t.state, t.cleanliness, t.cleanliness_reasons,
    coalesce(t.cleanliness = 'not_clean', false) AS promotion_blocked,
    t.spend.tokens AS tokens, t.spend.cost_usd AS cost_usd,
    t.spend.builder_attempts AS builder_attempts, t.spend.auditor_attempts AS auditor_attempts,
    t.spend.ci_runs AS ci_runs, t.spend.active_seconds AS active_seconds,
    t.spend.minor_issues AS minor_issues, t.spend.major_issues AS major_issues,
    filename
FROM (
    SELECT run_id, project_id, state AS run_state, safety_profile, utc(created_at) AS run_created_at,
           unnest(tiers) AS t, generate_subscripts(tiers, 1) AS tier_index, filename
    FROM raw_runs
);

-- One row per phase of each run (the run.json phases[] summaries: one file per run).
CREATE OR REPLACE VIEW phases AS
SELECT
    run_id, project_id, run_state, run_created_at,
    p.phase_id, p.tier_id, p.index AS phase_index, p.name, p.task_category, p.complexity,
    p.task_category || ':' || p.complexity AS slice,
    p.state, p.state = 'COMPLETE' AS accepted, p.attempts, p.tokens, p.cost_usd, p.commit, p.tag,
    filename
FROM (
    SELECT run_id, project_id, state AS run_state, utc(created_at) AS run_created_at,
           unnest(phases) AS p, filename
    FROM raw_runs
);

-- One row per phase record (phase.json): the phase's own spend, escalation and failure.
CREATE OR REPLACE VIEW phase_records AS
SELECT
    run_id, phase_id, tier_id, index AS phase_index, name, state, step, current_attempt,
    len(attempts) AS attempts, escalated, approved_attempt,
    spend.tokens AS tokens, spend.cost_usd AS cost_usd,
    spend.builder_attempts AS builder_attempts, spend.auditor_attempts AS auditor_attempts,
    spend.ci_runs AS ci_runs, spend.active_seconds AS active_seconds,
    spend.minor_issues AS minor_issues, spend.major_issues AS major_issues,
    failure_reason, feedback, commit, tag, schema_version, filename
FROM raw_phases;

-- raw_attempts with `path`, the run id, phase index and phase id its filename names
-- (artifact_path). The rollup stores `path` as a column, parsed once at ingest: at 10,000
-- runs the regex over 200,000 filenames was most of the report's agent table.
CREATE OR REPLACE VIEW located_attempts AS SELECT *, artifact_path(filename) AS path FROM raw_attempts;

-- One row per builder/auditor/submitted attempt (attempts/<k>/builder.json).
-- gate_passed: the patch got past the gate to CI; accepted: CI passed and it was committed.
CREATE OR REPLACE VIEW attempts AS
SELECT
    path.run_id, TRY_CAST(path.phase_index AS BIGINT) AS phase_index, path.phase_id,
    k, role, agent, command, outcome, reason, exit_code, timed_out,
    outcome IN ('ci_failed', 'passed') AS gate_passed, outcome = 'passed' AS accepted,
    usage.tokens_in AS tokens_in, usage.tokens_out AS tokens_out, usage.tokens_cached AS tokens_cached,
    usage.tokens_in + usage.tokens_out AS tokens, usage.cost_usd AS cost_usd, usage.turns AS turns,
    utc(started_at) AS started_at, utc(finished_at) AS finished_at,
    epoch(utc(finished_at) - utc(started_at)) AS duration_s,
    patch_files, patch_sha256, fingerprint, base_commit, result_notes, filename
FROM located_attempts;

-- One row per CI run (ci/<k>/ci.json: up to 3 tries of the profile's steps).
CREATE OR REPLACE VIEW ci_runs AS
SELECT
    path.run_id, TRY_CAST(path.phase_index AS BIGINT) AS phase_index, phase_id, attempt,
    profile, verdict, len(tries) AS tries,
    list_sum(list_transform(tries, lambda t: coalesce(list_sum(list_transform(t.steps, lambda s: s.duration_s)), 0)))
        AS duration_s,
    len(flatten(list_transform(tries[-1].steps, lambda s: s.tests)))
        + coalesce(list_sum(list_transform(tries[-1].steps, lambda s: coalesce(s.passed_not_listed, 0))), 0)
        AS tests_last_try,
    failing_tests, flaky_tests, len(failing_tests) AS failing, len(flaky_tests) AS flaky,
    environment_error, filename
FROM (SELECT *, artifact_path(filename) AS path FROM raw_ci);

-- One row per issue of each phase file (issues.json, docs/architecture.md, Issues).
CREATE OR REPLACE VIEW issues AS
SELECT
    run_of(filename) AS run_id, phase_index_of(filename) AS phase_index, phase_id, tier_id, issue_state,
    i.issue_key, i.severity, i.effective_severity, i.source, i.category, i.task_category, i.complexity,
    i.expected_fail, i.occurrence_count, i.first_seen_run, i.last_seen_run, i.evidence_refs, i.message,
    coalesce(i.status, 'open') AS status, filename
FROM (SELECT filename, phase_id, tier_id, issue_state, unnest(issues) AS i FROM raw_phase_issues);

-- One row per distinct issue key of each run (run_issue_index.json, docs/architecture.md, Issues).
CREATE OR REPLACE VIEW run_issues AS
SELECT
    run_id, e.key AS issue_key, e.value.category AS category, e.value.severity AS severity,
    e.value.effective_severity AS effective_severity,
    e.value.first_phase_index AS first_phase_index, e.value.last_phase_index AS last_phase_index,
    e.value.occurrence_count AS occurrence_count,
    e.value.seen_in_tiers AS seen_in_tiers, e.value.seen_in_phases AS seen_in_phases,
    coalesce(e.value.status, 'open') AS status, filename
FROM (SELECT run_id, filename, unnest(map_entries(issues_by_key)) AS e FROM raw_run_issues);

-- One row per event (events.jsonl).
CREATE OR REPLACE VIEW events AS
SELECT run_of(filename) AS run_id, seq, utc(ts) AS ts, kind, entity, from_state, to_state, data,
       prev_sha256, filename
FROM raw_events;

-- The project issue backlog (docs/architecture.md, Issues), derived from every run's issue index:
-- ages count distinct runs and distinct tier ids, never records (issues resolved within
-- their run are left out). status is needs_cleanup once a minor issue's runs OR tiers
-- reach the aging thresholds of the safety profile of
-- the run it was last seen in (the built-in ruleset: normal 3 runs / 2 tiers,
-- safety_critical 2 / 1), else open. The file `doit backlog` materialises,
-- reports/project_issue_backlog.json (the backlog_file view below), is the authority on
-- status: it also knows which keys were resolved and applies the workspace's ruleset.
CREATE OR REPLACE VIEW backlog AS
WITH seen AS (
    SELECT r.project_id, r.safety_profile, i.run_id, i.issue_key, i.category, i.severity,
           i.effective_severity, i.occurrence_count, i.seen_in_tiers,
           r.created_at, coalesce(r.finished_at, r.updated_at) AS seen_at
    FROM run_issues AS i JOIN runs AS r USING (run_id)
    WHERE i.status = 'open'
),
tiers_seen AS (
    SELECT project_id, issue_key, count(DISTINCT tier_id) AS age_in_tiers
    FROM (SELECT project_id, issue_key, run_id, unnest(seen_in_tiers) AS tier_id FROM seen)
    GROUP BY ALL
),
agg AS (
    SELECT
        project_id, issue_key,
        arg_max(category, {t: created_at, r: run_id}) AS category,
        CASE WHEN bool_or(severity = 'major') THEN 'major' ELSE 'minor' END AS base_severity,
        CASE WHEN bool_or(effective_severity = 'major') THEN 'major' ELSE 'minor' END AS effective_severity,
        count(DISTINCT run_id) AS age_in_runs,
        sum(occurrence_count)::BIGINT AS occurrences,
        arg_min(run_id, {t: created_at, r: run_id}) AS first_seen_run_id,
        arg_max(run_id, {t: created_at, r: run_id}) AS last_seen_run_id,
        min(created_at) AS first_seen_at,
        max(seen_at) AS last_seen_at,
        arg_max(safety_profile, {t: created_at, r: run_id}) AS safety_profile
    FROM seen
    GROUP BY project_id, issue_key
)
SELECT
    agg.project_id, agg.issue_key, category, base_severity, effective_severity,
    age_in_runs, coalesce(age_in_tiers, 0) AS age_in_tiers, occurrences,
    first_seen_run_id, last_seen_run_id, first_seen_at, last_seen_at,
    CASE WHEN base_severity = 'minor' AND (
             age_in_runs >= (CASE WHEN safety_profile = 'safety_critical' THEN 2 ELSE 3 END)
             OR coalesce(age_in_tiers, 0) >= (CASE WHEN safety_profile = 'safety_critical' THEN 1 ELSE 2 END))
         THEN 'needs_cleanup' ELSE 'open' END AS status
FROM agg LEFT JOIN tiers_seen USING (project_id, issue_key);

-- The materialised backlog file (reports/project_issue_backlog.json), when it exists.
CREATE OR REPLACE VIEW backlog_file AS
SELECT
    e.key AS issue_key, e.value.category AS category, e.value.base_severity AS base_severity,
    e.value.age_in_runs AS age_in_runs, e.value.age_in_tiers AS age_in_tiers,
    e.value.first_seen_run_id AS first_seen_run_id, e.value.last_seen_run_id AS last_seen_run_id,
    utc(e.value.last_seen_at) AS last_seen_at, e.value.last_seen_phase_id AS last_seen_phase_id,
    e.value.status AS status, e.value.resolved_by AS resolved_by, e.value.message AS message,
    e.value.evidence_refs AS evidence_refs, runs_read, filename
FROM (SELECT runs_read, filename, unnest(map_entries(issues_by_key)) AS e FROM raw_backlog_file);
