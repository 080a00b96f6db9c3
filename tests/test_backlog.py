"""The project issue backlog (docs/architecture.md, Issues) and debt_cleanup phases (§11.5.4).

Counting and aging run on synthetic run records (testing.synthetic: every file built with
the models) read by real DuckDB; the paths through start_run and a debt phase that cleans
a key use real runs (real git, a scripted builder, real CI commands).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import InvalidInput
from pipeline.core.jsonio import read_model
from pipeline.core.schemas import schema_for, validate_instance
from pipeline.issues.backlog import BACKLOG_PATH, aged_keys, derive_backlog, write_backlog
from pipeline.issues.debt import GROUP_OVER, append_debt_tier, plan_debt_phases, scope_for
from pipeline.models.enums import PhaseState, SafetyProfile, Severity
from pipeline.models.issues import BacklogEntry, ProjectBacklog
from pipeline.models.plan import Plan
from pipeline.models.strategy import Strategy
from pipeline.plan.file import load_plan, plan_sha256
from pipeline.run.driver import run_to_end
from pipeline.store import rollup
from testing.runs import RunSetup, command, make_workspace, phase, python_step, write_agent
from testing.synthetic import SynIssue, SynPhase, write_run

KEY = "lint:unused-import"
CRITICAL = SafetyProfile.safety_critical


def ts(day: int) -> str:
    return f"2020-01-{day:02d}T00:00:00Z"


def one_key_run(
    workspace: Path, run_id: str, day: int, key: str = KEY, profile: SafetyProfile = SafetyProfile.normal
) -> None:
    issue = SynIssue(key, evidence=("src/util.py:3",))
    write_run(workspace, run_id, ts(day), [SynPhase("P1", issues=(issue,))], profile=profile)


def entry(workspace: Path, key: str = KEY, thresholds: tuple[int, int] | None = None) -> BacklogEntry:
    return derive_backlog(workspace, thresholds).issues_by_key[key]


# -- counting ------------------------------------------------------------------------------


def test_empty_workspace_has_an_empty_backlog(tmp_path: Path) -> None:
    assert derive_backlog(tmp_path) == ProjectBacklog()
    (tmp_path / "runs" / "r1").mkdir(parents=True)  # a run not started: nothing to read
    assert derive_backlog(tmp_path).issues_by_key == {}


def test_a_broken_issue_file_is_a_clear_error(tmp_path: Path) -> None:
    one_key_run(tmp_path, "r1", 1)
    (tmp_path / "runs/r1/phases/01-P1/issues.json").write_text('{"phase_id": "P1", "issues": [')
    with pytest.raises(InvalidInput) as err:
        derive_backlog(tmp_path)
    assert "runs/r1/phases/01-P1/issues.json" in err.value.message
    assert "doit validate" in err.value.fix


@pytest.mark.parametrize("text", ['{"run_id": "r1", "phases": [', "[]", ""])
def test_a_broken_run_json_is_a_clear_error(tmp_path: Path, text: str) -> None:
    """The files are gathered into one stream for DuckDB: a broken one is still named."""
    one_key_run(tmp_path, "r1", 1)
    (tmp_path / "runs/r1/run.json").write_text(text)
    with pytest.raises(InvalidInput) as err:
        derive_backlog(tmp_path)
    assert "runs/r1/run.json" in err.value.message and "doit validate" in err.value.fix


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_issue_file_that_is_no_file_is_named_not_waited_on(tmp_path: Path, kind: str) -> None:
    one_key_run(tmp_path, "r1", 1)
    issues = tmp_path / "runs/r1/phases/01-P1/issues.json"
    issues.unlink()
    if kind == "fifo":
        os.mkfifo(issues)  # opening it to read would block until a writer came
    else:
        issues.mkdir()
    with pytest.raises(InvalidInput) as err:
        derive_backlog(tmp_path)
    assert "runs/r1/phases/01-P1/issues.json" in err.value.message


def test_an_empty_issue_file_object_reads_as_no_issues(tmp_path: Path) -> None:
    one_key_run(tmp_path, "r1", 1)
    one_key_run(tmp_path, "r2", 2)
    (tmp_path / "runs/r2/phases/01-P1/issues.json").write_text("{}\n")
    got = entry(tmp_path)
    assert (got.age_in_runs, got.first_seen_run_id, got.last_seen_run_id) == (1, "r1", "r1")


def test_same_key_twice_in_a_phase_is_one_run_one_tier(tmp_path: Path) -> None:
    write_run(tmp_path, "r1", ts(1), [SynPhase("P1", issues=(SynIssue(KEY),), repeats=2)])
    issues = json.loads((tmp_path / "runs/r1/phases/01-P1/issues.json").read_text())["issues"]
    assert issues[0]["occurrence_count"] == 2
    got = entry(tmp_path)
    assert (got.age_in_runs, got.age_in_tiers) == (1, 1)
    assert (got.first_seen_run_id, got.last_seen_run_id, got.last_seen_phase_id) == ("r1", "r1", "P1")
    assert (got.status, got.base_severity, got.category) == ("open", Severity.minor, "lint")
    assert got.last_seen_at == ts(1)


def test_same_key_in_two_tiers_of_one_run_ages_by_tiers(tmp_path: Path) -> None:
    issue = (SynIssue(KEY),)
    write_run(tmp_path, "r1", ts(1), [SynPhase("P1", "T1", issue), SynPhase("P2", "T2", issue)])
    got = entry(tmp_path)
    assert (got.age_in_runs, got.age_in_tiers) == (1, 2)
    assert got.status == "needs_cleanup"  # normal: 3 runs OR 2 tiers (playbook §5.3)
    assert aged_keys(derive_backlog(tmp_path), 3, 3) == {}
    assert got.last_seen_phase_id == "P2"
    # Two phases of one tier are one tier.
    write_run(tmp_path, "r1", ts(1), [SynPhase("P1", "T1", issue), SynPhase("P2", "T1", issue)])
    got = entry(tmp_path)
    assert (got.age_in_runs, got.age_in_tiers, got.status) == (1, 1, "open")


def test_ages_count_distinct_runs_and_order_by_creation(tmp_path: Path) -> None:
    # Created out of name order: first/last follow created_at, not the run id.
    one_key_run(tmp_path, "zz", 1)
    one_key_run(tmp_path, "aa", 3)
    write_run(tmp_path, "mm", ts(2), [SynPhase("P1", issues=(SynIssue("other"),))])
    got = entry(tmp_path, thresholds=(3, 2))
    assert (got.age_in_runs, got.age_in_tiers) == (2, 1)  # tiers: distinct tier ids, not (run, tier)
    assert (got.first_seen_run_id, got.last_seen_run_id, got.status) == ("zz", "aa", "open")
    one_key_run(tmp_path, "bb", 4)
    got = entry(tmp_path, thresholds=(3, 2))
    assert (got.age_in_runs, got.status) == (3, "needs_cleanup")
    assert derive_backlog(tmp_path).runs_read == 4


def test_major_keys_never_age(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        write_run(tmp_path, f"r{n}", ts(n), [SynPhase("P1", issues=(SynIssue(KEY, Severity.major),))])
    got = entry(tmp_path)
    assert (got.age_in_runs, got.base_severity, got.status) == (3, Severity.major, "open")
    assert aged_keys(derive_backlog(tmp_path), 3, 2) == {}


def test_thresholds_follow_the_safety_profile_of_the_last_run(tmp_path: Path) -> None:
    one_key_run(tmp_path, "r1", 1, key="a", profile=CRITICAL)
    one_key_run(tmp_path, "r2", 2, key="a", profile=CRITICAL)
    one_key_run(tmp_path, "r3", 3, key="b")
    backlog = derive_backlog(tmp_path)
    assert backlog.issues_by_key["a"].status == "needs_cleanup"  # safety_critical: 2 runs / 1 tier
    assert backlog.issues_by_key["b"].status == "open"  # normal: 1 run, 1 tier
    assert aged_keys(backlog, 2, 2) == {"a": Severity.major}  # b: 1 run, 1 tier
    assert aged_keys(backlog, 1, 5) == {"a": Severity.major, "b": Severity.major}
    assert aged_keys(backlog, 3, 2) == {}


# -- the rollup ------------------------------------------------------------------------------


def _mixed_workspace(workspace: Path) -> None:
    failing = SynIssue(TEST_KEY, category="test_failure", evidence=(NODE,))
    for n in (1, 2, 3):
        one_key_run(workspace, f"r{n}", n, profile=CRITICAL if n == 2 else SafetyProfile.normal)
    write_run(workspace, "r4", ts(4), [SynPhase("P1", issues=(failing,)), SynPhase("P2", "T2", issues=(failing,))])
    write_run(workspace, "r5", ts(5), [SynPhase("P1", tests=((NODE, "passed"),))])
    write_run(workspace, "r6", ts(6), [SynPhase("P1", issues=(SynIssue("lint:x"),)), debt_phase()])


def debt_phase() -> SynPhase:
    return SynPhase("DEBT.1", "DEBT", task_category="debt_cleanup", cleans=(KEY,))


def _hold_rollup(workspace: Path) -> subprocess.Popen[str]:
    """Another process with the rollup open for writing (a `doit report` under way)."""
    db = workspace / "reports" / "rollup" / "rollup.duckdb"
    code = f"import duckdb, sys; con = duckdb.connect({str(db)!r}); print('ready', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_the_backlog_reads_the_rollup_and_the_files_give_the_same_bytes(tmp_path: Path) -> None:
    """derive_backlog brings the rollup up to date and reads it; when another process holds
    the rollup it reads the files instead, to the same byte."""
    _mixed_workspace(tmp_path)
    from_rollup = write_backlog(tmp_path).read_bytes()
    assert rollup.refresh(tmp_path).reread == 0  # the backlog left the rollup current
    entries = derive_backlog(tmp_path).issues_by_key
    assert entries[TEST_KEY].resolved_by == "ci r5/P1" and entries[KEY].resolved_by == "debt_cleanup r6/DEBT.1"
    holder = _hold_rollup(tmp_path)
    try:
        write_run(tmp_path, "r6", ts(6), [SynPhase("P1", issues=(SynIssue("lint:x"),)), SynPhase("P2")])
        from_files = write_backlog(tmp_path).read_bytes()
    finally:
        holder.communicate("")
    assert json.loads(from_files)["issues_by_key"][KEY]["resolved_by"] is None
    assert write_backlog(tmp_path).read_bytes() == from_files  # the rollup caught up
    write_run(tmp_path, "r6", ts(6), [SynPhase("P1", issues=(SynIssue("lint:x"),)), debt_phase()])
    assert write_backlog(tmp_path).read_bytes() == from_rollup


def test_the_rollup_keeps_each_runs_issue_keys_flat(tmp_path: Path) -> None:
    """The backlog groups one row per (run, key) kept at ingest, not every phase's issues."""
    import duckdb

    write_run(tmp_path, "r1", ts(1), [SynPhase("P1", issues=(SynIssue(KEY),)), SynPhase("P2", issues=(SynIssue(KEY),))])
    write_run(tmp_path, "r2", ts(2), [SynPhase("P1", issues=(SynIssue("lint:x"),))])
    derive_backlog(tmp_path)
    with duckdb.connect(str(tmp_path / rollup.ROLLUP_DB), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, issue_key, first_phase_index, last_phase_index, last_phase_id FROM issue_keys ORDER BY ALL"
        ).fetchall()
    assert rows == [("r1", KEY, 1, 2, "P2"), ("r2", "lint:x", 1, 1, "P1")]


def test_a_removed_run_leaves_the_backlog(tmp_path: Path) -> None:
    _mixed_workspace(tmp_path)
    assert entry(tmp_path).age_in_runs == 3
    shutil.rmtree(tmp_path / "runs" / "r3")
    assert entry(tmp_path).age_in_runs == 2


# -- resolution ----------------------------------------------------------------------------

NODE = "tests/test_util.py::test_f"
TEST_KEY = f"test:{NODE}"


def test_test_key_is_resolved_by_a_later_green_ci_run(tmp_path: Path) -> None:
    failing = SynIssue(TEST_KEY, category="test_failure", evidence=(NODE,))
    # Green later in the run it failed in does not count: the run still recorded it.
    write_run(tmp_path, "r1", ts(1), [SynPhase("P1", issues=(failing,)), SynPhase("P2", tests=((NODE, "passed"),))])
    assert entry(tmp_path, TEST_KEY).status == "open"
    write_run(tmp_path, "r2", ts(2), [SynPhase("P1", tests=((NODE, "failed"), ("tests/other.py::t", "passed")))])
    assert entry(tmp_path, TEST_KEY).status == "open"
    write_run(tmp_path, "r3", ts(3), [SynPhase("P1", tests=((NODE, "passed"),))])
    got = entry(tmp_path, TEST_KEY)
    assert (got.status, got.resolved_by) == ("resolved", "ci r3/P1")
    # It comes back: open again (and its age keeps counting every run it was seen in).
    write_run(tmp_path, "r4", ts(4), [SynPhase("P1", issues=(failing,))])
    got = entry(tmp_path, TEST_KEY)
    assert (got.status, got.resolved_by, got.age_in_runs) == ("open", None, 2)
    write_run(tmp_path, "r5", ts(5), [SynPhase("P1", issues=(failing,))])
    assert (entry(tmp_path, TEST_KEY).status, entry(tmp_path, TEST_KEY).age_in_runs) == ("needs_cleanup", 3)


def test_complete_debt_phase_resolves_its_keys_a_failed_one_does_not(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        one_key_run(tmp_path, f"r{n}", n)
    assert entry(tmp_path).status == "needs_cleanup"
    debt = SynPhase("DEBT.1", "DEBT", task_category="debt_cleanup", cleans=(KEY,), state=PhaseState.FAILED)
    write_run(tmp_path, "r4", ts(4), [SynPhase("P1"), debt])
    assert entry(tmp_path).status == "needs_cleanup"
    done = SynPhase("DEBT.1", "DEBT", task_category="debt_cleanup", cleans=(KEY,))
    write_run(tmp_path, "r4", ts(4), [SynPhase("P1"), done])
    got = entry(tmp_path)
    assert (got.status, got.resolved_by) == ("resolved", "debt_cleanup r4/DEBT.1")
    assert aged_keys(derive_backlog(tmp_path), 1, 1) == {}
    # A phase that only says it cleans the key but is not a debt_cleanup phase does not count.
    write_run(tmp_path, "r4", ts(4), [SynPhase("P1", cleans=(KEY,))])
    assert entry(tmp_path).status == "needs_cleanup"


def test_write_backlog_is_canonical_and_validates(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        one_key_run(tmp_path, f"r{n}", n, key=f"k{4 - n}")
    path = write_backlog(tmp_path)
    assert path == tmp_path / BACKLOG_PATH
    text = path.read_text()
    data = json.loads(text)
    assert list(data["issues_by_key"]) == ["k1", "k2", "k3"]
    assert text == json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert validate_instance(data, schema_for(ProjectBacklog), source=str(path)) == []
    mtime = path.stat().st_mtime_ns
    write_backlog(tmp_path)
    assert path.stat().st_mtime_ns == mtime  # unchanged data: not rewritten


def test_doit_backlog_writes_the_file_and_prints_top_keys(tmp_path: Path) -> None:
    for n in (1, 2, 3):
        one_key_run(tmp_path, f"r{n}", n)
    one_key_run(tmp_path, "r4", 4, key="rare")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "backlog"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "2 issue key(s) from 4 run(s); 1 needs_cleanup, 1 open, 0 resolved" in lines[0]
    assert lines[2].split()[:5] == [KEY, "needs_cleanup", "minor", "3", "1"]  # 3 runs, one tier id
    assert lines[3].split()[:2] == ["rare", "open"]
    assert json.loads((tmp_path / BACKLOG_PATH).read_text())["project_id"] == "sample"  # the newest run's


def test_the_backlog_is_the_newest_runs_project(tmp_path: Path) -> None:
    one_key_run(tmp_path, "r1", 1)
    one_key_run(tmp_path, "r2", 2)
    run_json = tmp_path / "runs" / "r2" / "run.json"
    run_json.write_text(run_json.read_text().replace('"project_id": "sample"', '"project_id": "shop"'))
    assert derive_backlog(tmp_path).project_id == "shop"
    os.utime(tmp_path / "runs" / "r1" / "run.json")
    holder = _hold_rollup(tmp_path)  # the rollup busy: read from the files, the same project
    try:
        assert derive_backlog(tmp_path).project_id == "shop"
    finally:
        holder.communicate("")


# -- start_run: aged keys raise severity; debt phases ----------------------------------------

SUGGESTING_AGENT = f"""
if PHASE.startswith("DEBT"):
    write("src/util.py", "import os\\n\\n\\ndef f():\\n    return 1\\n")
else:
    write("src/feature_" + RUN_ID + ".py", "X = 1\\n")
    result(status="success", suggested_issues=[{{"issue_key": "{KEY}", "severity": "minor", "category": "lint"}}])
"""

FILES = {
    "src/__init__.py": "",
    "src/util.py": "import os\nimport sys\n\n\ndef f():\n    return 1\n",
    "tests/test_util.py": "def test_f():\n    assert True\n",
}


def workspace_with_history(tmp_path: Path, run_id: str, runs: int = 3, ruleset: str = "") -> RunSetup:
    setup = make_workspace(
        tmp_path,
        files=FILES,
        agent_body=SUGGESTING_AGENT,
        phases=[phase("F1", scope={"allow": ["src/**"]})],
        ci_steps=[python_step("import", "import src.util")],
        run_id=run_id,
    )
    for n in range(1, runs + 1):
        issue = SynIssue(KEY, evidence=("src/util.py:2", f"phases/01-P1/attempts/{n}/result.json"), message="unused")
        write_run(setup.workspace, f"old{n}", ts(n), [SynPhase("P1", issues=(issue,), scope=("src/**",))])
    if ruleset:
        (setup.workspace / "profiles").mkdir(exist_ok=True)
        (setup.workspace / "profiles" / "ruleset.yaml").write_text(ruleset)
    return setup


def strategy_of(setup: RunSetup) -> Strategy:
    return read_model(setup.run_dir / "strategy.json", Strategy)


def test_first_start_has_no_aging_note(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r1", runs=0)
    setup.start()
    assert strategy_of(setup).effective_severity == {}
    assert not [e for e in setup.events() if e["kind"] == "note" and e["data"]["what"] == "backlog_aging"]


def test_aged_minor_key_is_major_in_the_next_run(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r4")
    plan_before = setup.plan_path.read_text()
    setup.start()
    assert strategy_of(setup).effective_severity == {KEY: Severity.major}
    notes = [e for e in setup.events() if e["kind"] == "note" and e["data"]["what"] == "backlog_aging"]
    assert len(notes) == 1
    assert notes[0]["data"]["aged_issue_keys"] == [KEY]
    assert (notes[0]["data"]["aging_runs"], notes[0]["data"]["aging_tiers"]) == (3, 2)
    assert notes[0]["data"]["debt_phases"] == {}  # debt_cleanup is "off" by default
    assert setup.plan_path.read_text() == plan_before
    # The runner records the key again: base severity minor, effective severity major.
    run_to_end(setup.workspace, setup.run_id)
    issue = setup.issues("F1")["issues"][0]
    assert (issue["issue_key"], issue["severity"], issue["effective_severity"]) == (KEY, "minor", "major")
    assert entry(setup.workspace).age_in_runs == 4


def test_safety_critical_plan_ages_after_two_runs(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r3", runs=2)
    text = setup.plan_path.read_text()
    setup.plan_path.write_text(text.replace("safety_profile: normal", "safety_profile: safety_critical"))
    setup.start()
    assert strategy_of(setup).effective_severity == {KEY: Severity.major}
    assert (strategy_of(setup).aging_runs, strategy_of(setup).aging_tiers) == (2, 1)


COMMENTED_PLAN = """\
# The plan of r4, written by a person.
run_id: r4
project_id: sample
target:
  repo: {repo}
  base: main
safety_profile: normal   # keep it normal
agents:
  builder: {{command: {builder}}}
  auditor: {{command: {auditor}}}
ci:
  normal:
    steps:
      - {{name: import, run: {ci}, timeout_s: 60}}
tiers:
  # Feature work comes first.
  - tier_id: T1
    name: Features
    phases:
      - phase_id: F1
        name: Add a feature
        task_category: feature_implementation
        complexity: low
        scope: {{allow: ["src/**"]}}   # only the package
# trailing words of the author
"""


def test_debt_phase_is_added_before_freezing_and_resolves_the_key(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r4", ruleset="debt_cleanup: auto\n")
    assert setup.agent is not None
    # debt_cleanup is never auto-applied: an auditor reviews the cleanup before apply.
    auditor = write_agent(tmp_path / "agents" / "auditor.py", 'result(verdict="approve", notes="clean")')
    original = COMMENTED_PLAN.format(
        repo=json.dumps(str(setup.repo)),
        builder=json.dumps(command(setup.agent)),
        auditor=json.dumps(command(auditor)),
        ci=json.dumps(python_step("import", "import src.util")["run"]),
    )
    setup.plan_path.write_text(original)

    setup.start()
    text = setup.plan_path.read_text()
    assert text.startswith(original.split("# trailing words")[0])  # every line the person wrote, in place
    assert "# trailing words of the author" in text
    assert setup.run_json()["plan_sha256"] == plan_sha256(setup.plan_path)
    plan, _ = load_plan(setup.plan_path)
    assert [t.tier_id for t in plan.tiers] == ["T1", "DEBT"]
    debt = plan.tiers[-1].phases[0]
    assert (debt.phase_id, debt.task_category, debt.cleans) == ("DEBT.1", "debt_cleanup", [KEY])
    assert debt.scope.allow == ["src/util.py"]
    assert KEY in debt.description and "src/util.py:2" in debt.description
    assert "runs/old3/phases/01-P1/attempts/3/result.json" in debt.description  # evidence others can open
    ps = strategy_of(setup).phase("DEBT.1")
    assert (ps.cleans, ps.complexity.value, ps.tier_id) == ([KEY], "medium", "DEBT")
    note = next(e for e in setup.events() if e["kind"] == "note" and e["data"]["what"] == "backlog_aging")
    assert note["data"]["debt_phases"] == {"DEBT.1": [KEY]}

    outcomes = run_to_end(setup.workspace, setup.run_id)
    assert outcomes[-1].run_state.value == "DONE_SUCCESS", [o.message for o in outcomes]
    debt_rec = setup.phase_json("DEBT.1")
    assert (debt_rec["state"], debt_rec["approved_attempt"]) == ("COMPLETE", 1)
    assert (setup.phase_dir("DEBT.1") / "audit" / "1" / "auditor.json").is_file()
    assert setup.git("show", f"{setup.branch}:src/util.py").startswith("import os\n\n")
    got = entry(setup.workspace)
    assert (got.status, got.resolved_by) == ("resolved", "debt_cleanup r4/DEBT.1")


def test_debt_phase_takes_the_category_defaults(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r4", ruleset="debt_cleanup: auto\n")
    setup.start()
    ps = strategy_of(setup).phase("DEBT.1")
    assert (ps.task_category, ps.complexity.value, ps.auto_apply) == ("debt_cleanup", "medium", False)
    assert (ps.max_builder_attempts, ps.incident_token_cap, ps.auditor_profile) == (2, 100000, "debt_cleanup_review")


def test_restart_after_an_interrupted_start_adds_no_second_debt_tier(tmp_path: Path) -> None:
    setup = workspace_with_history(tmp_path, "r4", ruleset="debt_cleanup: auto\n")

    plan, _ = load_plan(setup.plan_path)
    backlog = derive_backlog(setup.workspace)
    debt = plan_debt_phases(setup.workspace, setup.repo, plan, backlog, {KEY: Severity.major}, thresholds=(3, 2),
                            max_phases=25)
    append_debt_tier(setup.plan_path, debt.phases)  # as if start_run died right after
    setup.start()
    assert [p.phase_id for p in strategy_of(setup).phases] == ["F1", "DEBT.1"]


# -- planning debt phases ------------------------------------------------------------------


def backlog_of(entries: dict[str, BacklogEntry]) -> ProjectBacklog:
    return ProjectBacklog(issues_by_key=entries)


def make_entry(category: str = "lint", evidence: list[str] | None = None) -> BacklogEntry:
    return BacklogEntry(
        category=category, base_severity=Severity.minor, age_in_runs=3, age_in_tiers=3, first_seen_run_id="old1",
        last_seen_run_id="old3", last_seen_at=ts(3), status="needs_cleanup", last_seen_phase_id="P1",
        evidence_refs=evidence or [],
    )


def simple_plan(phases: int = 1) -> Plan:
    return Plan.model_validate({
        "run_id": "r9", "project_id": "p",
        "tiers": [{"tier_id": "T1", "name": "t", "phases": [
            {"phase_id": f"P{i}" if i else "DEBT.1", "name": "n", "task_category": "docs"} for i in range(phases)
        ]}],
    })


def test_more_than_three_keys_of_a_category_share_one_phase(tmp_path: Path) -> None:
    lint = {f"lint:{i}": make_entry(evidence=[f"src/m{i}.py"]) for i in range(GROUP_OVER + 1)}
    other = {"doc:x": make_entry("docs", ["README.md"]), "doc:y": make_entry("docs", ["docs/a.md:4"])}
    backlog = backlog_of({**lint, **other})
    aged = dict.fromkeys(backlog.issues_by_key, Severity.major)
    debt = plan_debt_phases(tmp_path, tmp_path, simple_plan(), backlog, aged, thresholds=(3, 2), max_phases=25)
    # "DEBT.1" is taken by the plan itself: ids skip it.
    assert [(p.phase_id, p.cleans) for p in debt.phases] == [
        ("DEBT.2", ["doc:x"]), ("DEBT.3", ["doc:y"]), ("DEBT.4", sorted(lint)),
    ]
    assert debt.phases[1].scope == ["docs/a.md"]
    assert debt.phases[2].scope == sorted(f"src/m{i}.py" for i in range(GROUP_OVER + 1))
    assert debt.phases[2].name == f"Clean up {GROUP_OVER + 1} lint issues"
    # max_phases bounds the whole plan: what does not fit waits for a later run.
    limited = plan_debt_phases(tmp_path, tmp_path, simple_plan(), backlog, aged, thresholds=(3, 2), max_phases=2)
    assert [p.cleans for p in limited.phases] == [["doc:x"]]
    assert limited.deferred == ["doc:y", *sorted(lint)]
    assert "max_phases 2" in limited.skipped_reason


def test_scope_of_a_test_key_is_the_test_file_and_its_module(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for rel in ("textstats/__init__.py", "textstats/counting.py", "tests/test_counting.py", "tests/test_other.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("")
    key = "test:tests/test_counting.py::test_words"
    assert scope_for(tmp_path, repo, key, make_entry()) == ["tests/test_counting.py", "textstats/counting.py"]
    # No module by that name: the test file alone.
    assert scope_for(tmp_path, repo, "test:tests/test_other.py::t", make_entry()) == ["tests/test_other.py"]
    # Evidence that is not a repository path (the run record, absolute paths, prose) is skipped...
    noisy = make_entry(evidence=["phases/01-P1/ci/1/ci.json", "/abs/x.py", "docs/notes.md (not allowed)", "a/b.py:3:1"])
    assert scope_for(tmp_path, repo, "lint:x", noisy) == ["a/b.py"]
    # ...and with none left, the scope of the phase where the key was last seen.
    write_run(tmp_path, "old3", ts(3), [SynPhase("P1", scope=("lib/**", "tests/**"))])
    assert scope_for(tmp_path, repo, "lint:y", make_entry(evidence=["phases/x.json"])) == ["lib/**", "tests/**"]


@pytest.mark.parametrize("existing_tier", ["DEBT", "debt"])
def test_a_plan_with_its_own_debt_tier_gets_no_second_one(tmp_path: Path, existing_tier: str) -> None:
    plan = Plan.model_validate({
        "run_id": "r9", "project_id": "p",
        "tiers": [{"tier_id": existing_tier, "name": "t", "phases": [{"phase_id": "X", "name": "n",
                                                                       "task_category": "docs"}]}],
    })
    debt = plan_debt_phases(tmp_path, tmp_path, plan, backlog_of({"k": make_entry()}), {"k": Severity.major},
                            thresholds=(3, 2), max_phases=25)
    assert debt.phases == [] and debt.deferred == ["k"] and "already has a tier" in debt.skipped_reason
