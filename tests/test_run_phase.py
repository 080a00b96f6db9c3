"""run_phase / run_to_end / submit_patch end to end (docs/architecture.md: Invariants, The run directory, One phase).

Real temporary git repositories, real subprocess agents (scripts from testing.runs), real CI
commands. Every test checks the recorded artifacts and git state, and that the user's base
branch and working tree stayed exactly as they were.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.core.errors import RunLocked
from pipeline.models.enums import PhaseState, RunState, TierState
from pipeline.policy import states
from pipeline.run.driver import run_phase, run_to_end, submit_patch
from pipeline.store.events import EventLog
from testing.gitrepo import git, tree_snapshot
from testing.procs import gone, kill_all
from testing.runs import RunSetup, cli, make_workspace, phase, pytest_step, python_step

FILES = {"mod.py": "X = 1\n"}
IMPORT_CI = [python_step("import", "import mod")]


# -- helpers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserState:
    """Everything of the user's checkout a run must leave alone (docs/architecture.md, Invariants)."""

    main: str
    head_ref: str
    status: str
    staged: str
    stash: str
    tree: dict[str, bytes]


def user_state(repo: Path) -> UserState:
    return UserState(
        main=git(repo, "rev-parse", "refs/heads/main"),
        head_ref=git(repo, "symbolic-ref", "HEAD"),
        status=git(repo, "status", "--porcelain", "--untracked-files=all"),
        staged=git(repo, "diff", "--cached", "--binary"),
        stash=git(repo, "stash", "list", "--format=%H %gs"),
        tree=tree_snapshot(repo),
    )


def assert_user_untouched(setup: RunSetup, before: UserState) -> None:
    after = user_state(setup.repo)
    assert after.main == before.main, "the base branch moved"
    assert after.head_ref == before.head_ref, "the user's current branch changed"
    assert after.staged == before.staged, "the user's index changed"
    assert after.stash == before.stash, "the user's stash changed"
    assert after.status == before.status, "the user's working tree status changed"
    assert after.tree == before.tree, "the user's files changed"


def started(setup: RunSetup) -> UserState:
    """Start the run; return the user's state as it was just before."""
    before = user_state(setup.repo)
    setup.start()
    return before


def branch_files(setup: RunSetup, rev: str | None = None) -> set[str]:
    return {f for f in setup.git("ls-tree", "-r", "-z", "--name-only", rev or setup.branch).split("\0") if f}


def snapshot_commits(setup: RunSetup, phase_id: str) -> list[str]:
    return setup.commits_with_trailer("Autopack-Phase", phase_id)


def run_tags(setup: RunSetup) -> list[str]:
    return setup.git("tag", "--list", f"autonomous/{setup.run_id}/*").split()


def trailers(setup: RunSetup, rev: str) -> dict[str, str]:
    out = setup.git("log", "-1", "--format=%(trailers:only,unfold)", rev)
    pairs = (line.split(":", 1) for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def assert_complete(setup: RunSetup, phase_id: str) -> str:
    """The phase is COMPLETE with exactly one snapshot commit and its tag on it."""
    rec = setup.phase_json(phase_id)
    assert rec["state"] == "COMPLETE", rec
    commits = snapshot_commits(setup, phase_id)
    assert commits == [rec["commit"]]
    assert rec["tag"] == setup.tag(phase_id)
    assert setup.git("rev-parse", f"{setup.tag(phase_id)}^{{commit}}") == rec["commit"]
    assert setup.git("cat-file", "-t", setup.tag(phase_id)) == "tag", "the tag must be annotated"
    found = trailers(setup, rec["commit"])
    assert set(found) == {"Autopack-Run", "Autopack-Phase", "Autopack-Event"}
    assert (found["Autopack-Run"], found["Autopack-Phase"]) == (setup.run_id, phase_id)
    # Autopack-Event names the event that records the snapshot.
    event = setup.events()[int(found["Autopack-Event"]) - 1]
    assert (event["kind"], event["entity"], event["data"].get("what")) == ("note", phase_id, "snapshot"), event
    assert event["data"]["commit"] == rec["commit"]
    return str(rec["commit"])


def assert_failed_run(setup: RunSetup, state: str, phase_id: str) -> None:
    run = setup.run_json()
    assert run["state"] == state
    assert run["failure_reason"]
    assert run["promotion_eligible_to_main"] is False
    assert setup.phase_json(phase_id)["state"] == "FAILED"
    assert (setup.run_dir / "RUN_SUMMARY.md").is_file()
    incident = json.loads((setup.run_dir / "incident" / "incident.json").read_text())
    assert incident["state"] == state
    assert incident["phase_id"] == phase_id
    assert snapshot_commits(setup, phase_id) == []
    assert setup.tag(phase_id) not in run_tags(setup)


# -- 1, 2: what a builder leaves behind ------------------------------------------------------

COMMITTING_AGENT = """
write("mod.py", "X = 2\\n")
git("add", "mod.py")
git("commit", "-q", "-m", "agent's own commit")
Path(__file__).with_suffix(".sha").write_text(git("rev-parse", "HEAD").strip())
write("extra.py", "Y = 3\\n")
result(status="success", usage={"tokens_in": 100, "tokens_out": 20, "cost_usd": 0.5}, notes="committed it myself")
"""


def test_builder_commit_is_folded_into_our_snapshot(tmp_path: Path, unsandboxed: None) -> None:
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=COMMITTING_AGENT,
        ci_steps=[python_step("import", "import mod, extra; assert mod.X == 2")],
    )
    before = started(setup)
    outcome = run_phase(setup.workspace, setup.run_id)
    assert outcome.phase_state == PhaseState.COMPLETE
    assert outcome.run_state == RunState.DONE_SUCCESS

    sha = assert_complete(setup, "P1")
    agent_commit = setup.agent.with_suffix(".sha").read_text().strip() if setup.agent else ""
    assert len(agent_commit) == 40
    # The agent's commit is not on the branch; ours is, straight on the base commit.
    ancestry = subprocess.run(
        ["git", "merge-base", "--is-ancestor", agent_commit, setup.branch], cwd=setup.repo, check=False
    )
    assert ancestry.returncode == 1
    assert setup.git("rev-parse", f"{sha}^") == before.main
    assert setup.git("rev-list", "--count", f"{before.main}..{setup.branch}") == "1"
    assert setup.git("log", "-1", "--format=%an <%ae>", sha) != "Scripted Agent <agent@example.invalid>"
    assert "agent's own commit" not in setup.git("log", "--format=%B", setup.branch)
    # Both the committed and the uncommitted change are in the patch and the snapshot.
    attempt = setup.attempt("P1", 1)
    assert attempt["outcome"] == "passed"
    assert attempt["patch_files"] == ["extra.py", "mod.py"]
    assert setup.git("show", f"{sha}:mod.py") == "X = 2"
    assert setup.git("show", f"{sha}:extra.py") == "Y = 3"
    assert branch_files(setup) == {"mod.py", "extra.py"}
    # The result file's usage is accounted on the attempt, the phase and the run.
    assert attempt["usage"]["tokens_in"] == 100 and attempt["usage"]["tokens_out"] == 20
    assert attempt["result_notes"] == "committed it myself"
    assert setup.phase_json("P1")["spend"]["tokens"] == 120
    run = setup.run_json()
    assert run["spend"]["tokens"] == 120 and run["spend"]["cost_usd"] == pytest.approx(0.5)
    assert run["spend"]["builder_attempts"] == 1 and run["spend"]["ci_runs"] == 1
    assert_user_untouched(setup, before)


def test_untracked_files_are_snapshotted_ignored_ones_are_not(tmp_path: Path) -> None:
    body = """
write("pkg/__init__.py", "")
write("pkg/new_module.py", "VALUE = 42\\n")
write("notes.txt", "hello\\n")
write("docs/my notes ü.txt", "spaces and unicode\\n")
Path("data.bin").write_bytes(bytes(range(256)))
write("run.sh", "#!/bin/sh\\necho hi\\n")
os.chmod("run.sh", 0o755)
os.remove("old.py")
write("build/artifact.bin", "junk\\n")
write("debug.log", "noise\\n")
"""
    setup = make_workspace(
        tmp_path, files={**FILES, "old.py": "OLD = 1\n", ".gitignore": "build/\n*.log\n"}, agent_body=body,
        ci_steps=[python_step("import", "from pkg.new_module import VALUE; assert VALUE == 42")],
    )
    before = started(setup)
    run_to_end(setup.workspace, setup.run_id)
    sha = assert_complete(setup, "P1")
    assert branch_files(setup, sha) == {
        ".gitignore", "mod.py", "pkg/__init__.py", "pkg/new_module.py", "notes.txt", "docs/my notes ü.txt",
        "data.bin", "run.sh",
    }
    assert "build/artifact.bin" not in branch_files(setup, sha) and "debug.log" not in branch_files(setup, sha)
    patch = (setup.phase_dir("P1") / "attempts" / "1" / "patch.diff").read_text()
    assert "artifact.bin" not in patch and "debug.log" not in patch
    blob = subprocess.run(["git", "show", f"{sha}:data.bin"], cwd=setup.repo, capture_output=True, check=True)
    assert blob.stdout == bytes(range(256))
    assert setup.git("ls-tree", sha, "run.sh").split()[0] == "100755"
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert_user_untouched(setup, before)


# -- 3, 4, 5: builders that fail -------------------------------------------------------------


@pytest.fixture
def stray_pids() -> Iterator[list[int]]:
    """Pids an agent left behind; killed at teardown whatever the test found."""
    pids: list[int] = []
    yield pids
    kill_all(pids)


def pids_of(setup: RunSetup) -> list[int]:
    assert setup.agent is not None
    return [int(p) for p in setup.agent.with_suffix(".pids").read_text().split()]


# The agent's first attempt starts a helper process (CHILD), then hangs; later attempts wait PAUSE s and succeed.
HANGING_AGENT = """
if ATTEMPT == 1:
    write("half_done.py", "partial\\n")
    child = subprocess.Popen([sys.executable, "-c", CHILD])
    Path(__file__).with_suffix(".pids").write_text(f"{os.getpid()} {child.pid}")
    time.sleep(30)
time.sleep(PAUSE)
write("mod.py", "X = 2\\n")
"""
SLEEPING_CHILD = "import time; time.sleep(30)"
# A helper that ignores SIGTERM and keeps writing into the worktree for 10 s.
STUBBORN_CHILD = (
    "import pathlib, signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "for i in range(100):\n"
    "    time.sleep(0.1)\n"
    "    pathlib.Path('stray.py').write_text(str(i))\n"
)


def test_builder_timeout_is_an_issue_and_the_next_attempt_runs(
    tmp_path: Path, stray_pids: list[int], unsandboxed: None
) -> None:
    body = f"CHILD = {SLEEPING_CHILD!r}\nPAUSE = 0\n" + HANGING_AGENT
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, builder_timeout_s=1, ci_steps=IMPORT_CI)
    before = started(setup)
    t0 = time.monotonic()
    run_to_end(setup.workspace, setup.run_id)
    assert time.monotonic() - t0 < 15, "the 30 s sleep must have been cut at the 1 s timeout"
    stray_pids.extend(pids_of(setup))
    assert gone(stray_pids), "the timed-out agent and its child were killed"

    first = setup.attempt("P1", 1)
    assert first["outcome"] == "timed_out"
    assert first["timed_out"] is True
    assert first["exit_code"] is None
    assert setup.attempt("P1", 2)["outcome"] == "passed"
    assert "builder:timed_out" in setup.issue_keys("P1")
    assert "builder:timed_out" in setup.run_index()["issues_by_key"]
    sha = assert_complete(setup, "P1")
    assert "half_done.py" not in branch_files(setup, sha)
    assert setup.phase_json("P1")["feedback"], "the timeout is fed back to attempt 2"
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert_user_untouched(setup, before)


def test_builder_timeout_kills_the_whole_process_group(
    tmp_path: Path, stray_pids: list[int], unsandboxed: None
) -> None:
    # Attempt 2 pauses so that a surviving helper of attempt 1 gets to write during it.
    body = f"CHILD = {STUBBORN_CHILD!r}\nPAUSE = 0.5\n" + HANGING_AGENT
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, builder_timeout_s=2, ci_steps=IMPORT_CI)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    stray_pids.extend(pids_of(setup))
    assert setup.attempt("P1", 1)["outcome"] == "timed_out"
    assert "stray.py" not in setup.attempt("P1", 2)["patch_files"], "attempt 1's helper wrote into attempt 2"
    assert gone(stray_pids, within_s=1.0), "a process of the timed-out agent is still running"
    sha = assert_complete(setup, "P1")
    assert "stray.py" not in branch_files(setup, sha)


@pytest.mark.parametrize(
    ("body", "outcome", "key"),
    [
        ('write("mod.py", "X = 5\\n")\nsys.exit(3)', "agent_failed", "builder:agent_failed"),
        ("print('thinking hard, changing nothing')", "no_change", "builder:no_change"),
    ],
    ids=["exit-nonzero", "no-change"],
)
def test_failing_builder_ends_in_human_review(tmp_path: Path, body: str, outcome: str, key: str) -> None:
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=body, ci_steps=IMPORT_CI,
        phases=[phase("P1", max_builder_attempts=2), phase("P2")],
    )
    before = started(setup)
    outcomes = run_to_end(setup.workspace, setup.run_id)
    assert outcomes[-1].run_state == RunState.DONE_FAILED_REQUIRES_HUMAN_REVIEW

    assert_failed_run(setup, "DONE_FAILED_REQUIRES_HUMAN_REVIEW", "P1")
    rec = setup.phase_json("P1")
    assert [a["outcome"] for a in rec["attempts"]] == [outcome, outcome]
    assert setup.attempt("P1", 2)["outcome"] == outcome
    issues = setup.issues("P1")
    assert [i["issue_key"] for i in issues["issues"]] == [key]
    assert issues["issues"][0]["occurrence_count"] == 2
    assert issues["minor_issue_count"] == 1
    assert setup.run_index()["issues_by_key"][key]["occurrence_count"] == 2
    assert setup.phase_json("P2")["state"] == "SKIPPED"
    assert setup.git("rev-parse", setup.branch) == before.main, "nothing committed"
    assert run_tags(setup) == []
    assert_user_untouched(setup, before)


# -- 6: a patch that does not apply ----------------------------------------------------------

STALE_PATCH = """\
diff --git a/mod.py b/mod.py
--- a/mod.py
+++ b/mod.py
@@ -1 +1 @@
-X = 99
+X = 100
"""

GOOD_PATCH = """\
diff --git a/mod.py b/mod.py
--- a/mod.py
+++ b/mod.py
@@ -1 +1 @@
-X = 1
+X = 2
"""


def test_patch_that_does_not_apply_is_fed_back_not_a_violation(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, files=FILES, ci_steps=IMPORT_CI)  # no builder: patches are submitted
    before = started(setup)
    waiting = run_phase(setup.workspace, setup.run_id)
    assert "submit" in waiting.message

    stale = tmp_path / "stale.diff"
    stale.write_text(STALE_PATCH)
    outcome = submit_patch(setup.workspace, setup.run_id, "P1", stale, None)
    assert not outcome.run_state.terminal
    gate = setup.gate_json("P1")
    verdicts = {c["name"]: c["verdict"] for c in gate["checks"]}
    assert gate["verdict"] == "fail"
    assert verdicts["apply"] == "fail"
    assert verdicts["static_checks"] == "skip"
    assert all(verdicts[name] == "pass" for name in ("parse", "paths_safe", "protected_paths", "scope"))
    assert not any(c["policy"] and c["verdict"] == "fail" for c in gate["checks"])
    rec = setup.phase_json("P1")
    assert rec["attempts"][0]["outcome"] == "gate_failed"
    assert rec["state"] == "EXECUTING" and rec["current_attempt"] == 2
    assert rec["feedback"] and "apply" in rec["feedback"]
    assert "gate:apply" in setup.issue_keys("P1")
    assert setup.run_json()["state"] == "PHASE_EXECUTION"
    assert not (setup.run_dir / "incident").exists()

    good = tmp_path / "good.diff"
    good.write_text(GOOD_PATCH)
    done = submit_patch(setup.workspace, setup.run_id, "P1", good, None)
    assert done.run_state == RunState.DONE_SUCCESS
    sha = assert_complete(setup, "P1")
    assert setup.git("show", f"{sha}:mod.py") == "X = 2"
    assert [a["role"] for a in setup.phase_json("P1")["attempts"]] == ["submit", "submit"]
    assert_user_untouched(setup, before)


# -- 7: policy violations --------------------------------------------------------------------

DOTDOT_PATCH = """\
diff --git a/../outside.txt b/../outside.txt
new file mode 100644
--- /dev/null
+++ b/../outside.txt
@@ -0,0 +1 @@
+escaped
"""

THROUGH_LINK_PATCH = """\
diff --git a/link/x b/link/x
new file mode 100644
--- /dev/null
+++ b/link/x
@@ -0,0 +1 @@
+escaped
"""


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("workflow", "protected_paths"),
        ("runs", "protected_paths"),
        ("dotdot", "paths_safe"),
        ("symlink-patch", "paths_safe"),
        ("symlink-agent", "paths_safe"),
    ],
)
def test_policy_violation_ends_the_run(tmp_path: Path, case: str, check: str) -> None:
    outside = tmp_path / "somewhere"
    outside.mkdir()
    bodies = {
        "workflow": 'write("mod.py", "X = 2\\n")\nwrite(".github/workflows/ci.yml", "on: push\\n")',
        "runs": 'write("mod.py", "X = 2\\n")\nwrite("runs/x.json", "{}\\n")',
        # An agent making its own way out: a new symlink to a directory outside the repo.
        "symlink-agent": f'os.symlink({str(outside)!r}, "escape")\nwrite("mod.py", "X = 2\\n")',
    }
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=bodies.get(case), ci_steps=IMPORT_CI, phases=[phase("P1"), phase("P2")],
        # A committed link leading outside: only the patch case uses it (an agent is never
        # started in such a worktree, see the test below).
        links={"link": str(outside)} if case == "symlink-patch" else None,
    )
    before = started(setup)
    if case in ("dotdot", "symlink-patch"):
        patch = tmp_path / "evil.diff"
        patch.write_text(DOTDOT_PATCH if case == "dotdot" else THROUGH_LINK_PATCH)
        outcome = submit_patch(setup.workspace, setup.run_id, "P1", patch, None)
    else:
        outcome = run_phase(setup.workspace, setup.run_id)
    assert outcome.run_state == RunState.DONE_FAILED_POLICY_VIOLATION

    assert_failed_run(setup, "DONE_FAILED_POLICY_VIOLATION", "P1")
    gate = setup.gate_json("P1")
    failed = [c for c in gate["checks"] if c["verdict"] == "fail"]
    assert [c["name"] for c in failed] == [check]
    assert failed[0]["policy"] is True and failed[0]["evidence"]
    assert {c["name"]: c["verdict"] for c in gate["checks"]}["apply"] == "skip"
    assert setup.attempt("P1", 1)["outcome"] == "policy_violation"
    assert f"gate:{check}" in setup.issue_keys("P1")
    assert (setup.run_dir / "incident" / "gate.json").is_file()
    assert setup.phase_json("P2")["state"] == "SKIPPED"
    # Nothing reached the branch or the world outside the worktree.
    assert setup.git("rev-parse", setup.branch) == setup.git("rev-parse", "main")
    assert run_tags(setup) == []
    assert list(outside.iterdir()) == []
    assert not list(tmp_path.rglob("outside.txt"))
    assert_user_untouched(setup, before)


def test_agent_writing_through_a_committed_symlink_is_a_policy_violation(tmp_path: Path) -> None:
    outside = tmp_path / "somewhere"
    outside.mkdir()
    setup = make_workspace(
        tmp_path, files=FILES, links={"link": str(outside)}, ci_steps=IMPORT_CI,
        agent_body='write("link/x", "escaped\\n")\nwrite("mod.py", "X = 2\\n")',
    )
    before = started(setup)
    outcome = run_phase(setup.workspace, setup.run_id)
    assert_user_untouched(setup, before)
    assert outcome.run_state == RunState.DONE_FAILED_POLICY_VIOLATION
    assert list(outside.iterdir()) == [], "the builder wrote outside the repository"
    assert_failed_run(setup, "DONE_FAILED_POLICY_VIOLATION", "P1")
    assert any(c["policy"] and c["verdict"] == "fail" for c in setup.gate_json("P1")["checks"])


# -- 8: a flaky test -------------------------------------------------------------------------

FLAKY_TEST = """\
import os

import mod


def test_value():
    assert mod.X == 2


def test_sometimes():
    assert os.environ.get("AUTOPACK_CI_TRY") != "1", "fails on the first try only"
"""


def test_flaky_test_is_recorded_and_the_phase_completes(tmp_path: Path) -> None:
    setup = make_workspace(
        tmp_path, files={**FILES, "tests/test_flaky.py": FLAKY_TEST, "conftest.py": ""},
        agent_body='write("mod.py", "X = 2\\n")', ci_steps=[pytest_step()],
    )
    before = started(setup)
    run_to_end(setup.workspace, setup.run_id)
    assert_complete(setup, "P1")
    ci = json.loads((setup.phase_dir("P1") / "ci" / "1" / "ci.json").read_text())
    assert ci["verdict"] == "pass"
    assert [t["verdict"] for t in ci["tries"]] == ["fail", "pass"]
    node = "tests/test_flaky.py::test_sometimes"
    assert ci["flaky_tests"] == [node]
    issues = {i["issue_key"]: i for i in setup.issues("P1")["issues"]}
    assert set(issues) == {f"flaky:{node}"}
    assert issues[f"flaky:{node}"]["category"] == "flaky_test"
    assert issues[f"flaky:{node}"]["source"] == "ci"
    assert f"flaky:{node}" in setup.run_index()["issues_by_key"]
    assert not any("__pycache__" in f for f in branch_files(setup)), "CI's build products are not snapshotted"
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert_user_untouched(setup, before)


# -- 9: a crash between commit and record ----------------------------------------------------


@pytest.mark.parametrize(
    ("failpoint", "separate"),
    [("after_snapshot_commit", True), ("after_tag", True), ("after_snapshot_commit", False)],
    ids=["after_snapshot_commit", "after_tag", "after_snapshot_commit-record-in-branch"],
)
def test_crash_after_commit_converges(tmp_path: Path, failpoint: str, separate: bool) -> None:
    setup = make_workspace(
        tmp_path, files=FILES, agent_body='write(f"{PHASE}.py", "OK = 1\\n")', ci_steps=IMPORT_CI,
        phases=[phase("P1"), phase("P2")], target_separate=separate,
    )
    main = setup.git("rev-parse", "main")
    before = started(setup)
    crashed = cli(setup, "run_phase", "--run", setup.run_id, env={"AUTOPACK_FAILPOINT": failpoint})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    assert len(snapshot_commits(setup, "P1")) == 1, "the commit was made before the crash"
    assert setup.phase_json("P1")["state"] != "COMPLETE"

    rerun = cli(setup, "run_phase", "--run", setup.run_id)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    sha = assert_complete(setup, "P1")
    assert run_tags(setup) == [setup.tag("P1")]
    assert len(setup.phase_json("P1")["attempts"]) == 1, "the rerun did not build again"
    run = setup.run_json()
    assert run["last_snapshot"] == sha
    EventLog(setup.run_dir / "events.jsonl").verify(run["events_count"], run["events_head"])

    run_to_end(setup.workspace, setup.run_id)
    assert_complete(setup, "P2")
    assert snapshot_commits(setup, "P1") == [sha]
    assert sorted(run_tags(setup)) == [setup.tag("P1"), setup.tag("P2")]
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert setup.git("rev-parse", "main") == main
    if separate:
        assert_user_untouched(setup, before)
    else:
        rel = f"runs/{setup.run_id}/run.json"
        assert setup.git("show", f"{setup.branch}:{rel}") == (setup.run_dir / "run.json").read_text().strip()


# -- 10: where the record lives ---------------------------------------------------------------


def test_separate_target_keeps_the_record_in_the_workspace(tmp_path: Path) -> None:
    setup = make_workspace(
        tmp_path, files=FILES, agent_body='write(f"{PHASE.lower()}.py", "DONE = True\\n")', ci_steps=IMPORT_CI,
        phases=[phase("P1"), phase("P2")],
    )
    before = started(setup)
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    p1, p2 = assert_complete(setup, "P1"), assert_complete(setup, "P2")
    assert setup.git("rev-list", f"{before.main}..{setup.branch}").split() == [p2, p1]
    assert branch_files(setup, p1) == {"mod.py", "p1.py"}
    assert branch_files(setup, p2) == {"mod.py", "p1.py", "p2.py"}
    assert (setup.run_dir / "run.json").is_file()
    assert not (setup.workspace / ".git").exists()
    assert not any(p.name == "runs" for p in setup.repo.iterdir())
    assert_user_untouched(setup, before)


def test_default_target_carries_the_record_on_the_branch(tmp_path: Path) -> None:
    setup = make_workspace(
        tmp_path, files=FILES, agent_body='write(f"{PHASE.lower()}.py", "DONE = True\\n")', ci_steps=IMPORT_CI,
        phases=[phase("P1"), phase("P2")], target_separate=False,
    )
    assert setup.workspace == setup.repo
    main_before = setup.git("rev-parse", "main")
    status_before = setup.git("status", "--porcelain")  # runs/r1/ with the plan, untracked
    setup.start()
    assert run_to_end(setup.workspace, setup.run_id)[-1].run_state == RunState.DONE_SUCCESS
    p1, p2 = assert_complete(setup, "P1"), assert_complete(setup, "P2")

    commits = setup.git("rev-list", f"{main_before}..{setup.branch}").split()
    assert p1 in commits and p2 in commits
    rel = f"runs/{setup.run_id}"
    for sha in commits:
        record = json.loads(setup.git("show", f"{sha}:{rel}/run.json"))
        assert record["run_id"] == setup.run_id
        assert setup.git("show", f"{sha}:{rel}/plan.yaml") == setup.plan_path.read_text().strip()
    # The snapshot of a phase carries the record as it stood (that phase in flight).
    at_p1 = json.loads(setup.git("show", f"{p1}:{rel}/run.json"))
    assert at_p1["state"] not in {s.value for s in states.RUN_TERMINAL}
    # The branch's final commit has the terminal record, identical to the live one.
    final = json.loads(setup.git("show", f"{setup.branch}:{rel}/run.json"))
    assert final["state"] == "DONE_SUCCESS"
    assert setup.git("show", f"{setup.branch}:{rel}/run.json") == (setup.run_dir / "run.json").read_text().strip()
    assert setup.git("show", f"{setup.branch}:{rel}/events.jsonl") == (
        (setup.run_dir / "events.jsonl").read_text().strip()
    )
    assert setup.git("show", f"{setup.branch}:{rel}/RUN_SUMMARY.md")
    assert not any(".lock" in f for f in branch_files(setup))
    for sha in commits:
        assert trailers(setup, sha)["Autopack-Run"] == setup.run_id
    # The user's checkout: base branch unmoved, nothing new but the live record.
    assert setup.git("rev-parse", "main") == main_before
    assert setup.git("symbolic-ref", "HEAD") == "refs/heads/main"
    assert setup.git("status", "--porcelain") == status_before == "?? runs/"


def test_default_target_records_a_refused_run_on_the_branch(tmp_path: Path) -> None:
    """A builder rewriting its own run record on the branch is refused; the branch still ends with the
    true terminal record and the incident pack."""
    setup = make_workspace(
        tmp_path, files=FILES, target_separate=False, ci_steps=IMPORT_CI,
        agent_body='write("mod.py", "X = 2\\n")\nwrite(f"runs/{RUN_ID}/run.json", "{}\\n")',
    )
    main_before = setup.git("rev-parse", "main")
    setup.start()
    outcome = run_phase(setup.workspace, setup.run_id)
    assert outcome.run_state == RunState.DONE_FAILED_POLICY_VIOLATION
    assert_failed_run(setup, "DONE_FAILED_POLICY_VIOLATION", "P1")
    assert [c["name"] for c in setup.gate_json("P1")["checks"] if c["verdict"] == "fail"] == ["protected_paths"]

    rel = f"runs/{setup.run_id}"
    final = json.loads(setup.git("show", f"{setup.branch}:{rel}/run.json"))
    assert final["state"] == "DONE_FAILED_POLICY_VIOLATION"
    assert setup.git("show", f"{setup.branch}:{rel}/run.json") == (setup.run_dir / "run.json").read_text().strip()
    incident = json.loads(setup.git("show", f"{setup.branch}:{rel}/incident/incident.json"))
    assert incident["state"] == "DONE_FAILED_POLICY_VIOLATION"
    assert setup.git("show", f"{setup.branch}:mod.py") == "X = 1", "the refused patch was not applied"
    subjects = setup.git("log", "--format=%s", f"{main_before}..{setup.branch}").splitlines()
    assert subjects[0] == f"autopack: record {setup.run_id}: DONE_FAILED_POLICY_VIOLATION"
    assert subjects[-1] == f"autopack: start run {setup.run_id}"
    assert setup.git("rev-parse", "main") == main_before


# -- 11: a dirty user checkout ---------------------------------------------------------------


def test_dirty_user_checkout_is_untouched(tmp_path: Path) -> None:
    files = {"mod.py": "X = 1\n", "staged.py": "S = 1\n", "stashed.py": "T = 1\n"}
    setup = make_workspace(
        tmp_path, files=files, agent_body='write("mod.py", "X = 2\\n")',
        ci_steps=[python_step("import", "import mod; assert mod.X == 2")],
    )
    repo = setup.repo
    (repo / "stashed.py").write_text("T = 'stashed'\n")
    git(repo, "stash", "push", "-q", "-m", "user's stash")
    (repo / "staged.py").write_text("S = 'staged'\n")
    git(repo, "add", "staged.py")
    (repo / "mod.py").write_text("X = 'user edit, not committed'\n")
    (repo / "scratch.txt").write_text("user's untracked notes\n")
    before = started(setup)
    assert before.stash and before.staged and "scratch.txt" in before.status

    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    sha = assert_complete(setup, "P1")
    assert_user_untouched(setup, before)
    assert (repo / "mod.py").read_text() == "X = 'user edit, not committed'\n"
    # None of the user's dirt reached the branch.
    assert branch_files(setup, sha) == set(files)
    assert setup.git("show", f"{sha}:mod.py") == "X = 2"
    assert setup.git("show", f"{sha}:staged.py") == "S = 1"
    assert setup.git("show", f"{sha}:stashed.py") == "T = 1"


def test_agent_git_housekeeping_does_not_leak_into_the_user_repository(tmp_path: Path, unsandboxed: None) -> None:
    body = """
write("mod.py", "X = 'draft'\\n")
git("stash", "push", "-q", "-m", "agent draft")
git("checkout", "-q", "-b", "agent-scratch")
git("tag", "agent-tag")
write("mod.py", "X = 2\\n")
"""
    setup = make_workspace(tmp_path, files=FILES, agent_body=body, ci_steps=IMPORT_CI)
    before = started(setup)
    branches = setup.git("for-each-ref", "--format=%(refname)", "refs/heads")
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert setup.git("stash", "list") == before.stash == "", "the agent's stash entry is in the user's stash"
    assert setup.git("for-each-ref", "--format=%(refname)", "refs/heads") == branches
    assert run_tags(setup) == setup.git("tag", "--list").split()
    # Nothing is destroyed: the agent's refs are kept out of the user's way, and recorded.
    kept = setup.git("for-each-ref", "--format=%(refname)", "refs/autopack/quarantine").split()
    assert any(r.endswith("/heads/agent-scratch") for r in kept) and any(r.endswith("/tags/agent-tag") for r in kept)
    assert "builder:git_refs" in setup.issue_keys("P1")


# -- 12: one writer per run ------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.store.rundir import RunStore
lock = RunStore(Path(sys.argv[1]), sys.argv[2]).lock()
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


@pytest.fixture
def lock_holder() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)


def test_locked_run_names_the_holder(tmp_path: Path, lock_holder: list[subprocess.Popen[str]]) -> None:
    setup = make_workspace(tmp_path, files=FILES, agent_body='write("mod.py", "X = 2\\n")', ci_steps=IMPORT_CI)
    setup.start()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(setup.workspace), setup.run_id], stdout=subprocess.PIPE, text=True
    )
    lock_holder.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"

    with pytest.raises(RunLocked) as err:
        run_phase(setup.workspace, setup.run_id)
    assert f"run {setup.run_id} is locked by pid {holder.pid}" in err.value.message
    refused = cli(setup, "run_phase", "--run", setup.run_id)
    assert refused.returncode == 1
    assert f"locked by pid {holder.pid}" in refused.stderr
    assert setup.phase_json("P1")["state"] == "QUEUED", "nothing happened under someone else's lock"
    assert setup.run_json()["state"] == "PHASE_QUEUEING"

    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    # The kernel released the dead holder's lock: the run proceeds.
    assert run_phase(setup.workspace, setup.run_id).run_state == RunState.DONE_SUCCESS


# -- 13: the event log -----------------------------------------------------------------------


def test_event_log_verifies_and_every_transition_is_allowed(tmp_path: Path) -> None:
    body = """
if PHASE == "P1" and ATTEMPT == 1:
    write("mod.py", "X = 'broken'\\n")
else:
    write(f"{PHASE.lower()}.py", "OK = True\\n")
    write("mod.py", "X = 2\\n")
"""
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=body,
        ci_steps=[python_step("check", "import mod; assert mod.X == 2, mod.X")],
        tiers=[
            {"tier_id": "T1", "name": "One", "phases": [phase("P1", max_builder_attempts=2)]},
            {"tier_id": "T2", "name": "Two", "phases": [phase("P2")]},
        ],
    )
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    run = setup.run_json()
    assert run["state"] == "DONE_SUCCESS"
    assert [a["outcome"] for a in setup.phase_json("P1")["attempts"]] == ["ci_failed", "passed"]

    log = EventLog(setup.run_dir / "events.jsonl")
    assert log.verify(expected_count=run["events_count"], expected_head=run["events_head"]) == run["events_head"]
    events = setup.events()
    assert len(events) == run["events_count"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    last: dict[tuple[str, str], str] = {}
    for e in events:
        kind, frm, to = e["kind"], e["from_state"], e["to_state"]
        if kind == "run":
            states.check_run(RunState(frm), RunState(to))
        elif kind == "tier":
            states.check_tier(TierState(frm), TierState(to))
        elif kind == "phase":
            states.check_phase(PhaseState(frm), PhaseState(to))
        else:
            assert frm is None and to is None, f"event {e['seq']} of kind {kind} changes a state"
            continue
        prev = last.get((kind, e["entity"]))
        if prev is not None:
            assert e["from_state"] == prev, f"event {e['seq']} does not continue from {prev}"
        last[(kind, e["entity"])] = e["to_state"]
    assert last[("run", setup.run_id)] == "DONE_SUCCESS"
    assert last[("phase", "P1")] == last[("phase", "P2")] == "COMPLETE"
    assert last[("tier", "T1")] == last[("tier", "T2")] == "COMPLETE"
    retried = [e for e in events if e["kind"] == "phase" and e["entity"] == "P1" and e["to_state"] == "EXECUTING"]
    assert [e["from_state"] for e in retried] == ["QUEUED", "CI_RUNNING"], "attempt 2 is a recorded transition"


# -- the command line ------------------------------------------------------------------------


def test_cli_status_json_and_run_exit_codes(tmp_path: Path) -> None:
    good = make_workspace(
        tmp_path / "good", files=FILES, agent_body='write(f"{PHASE}.py", "OK = 1\\n")', ci_steps=IMPORT_CI,
        phases=[phase("P1"), phase("P2")],
    )
    bad = make_workspace(
        tmp_path / "bad", files=FILES, agent_body="pass", ci_steps=IMPORT_CI,
        phases=[phase("P1", max_builder_attempts=1)],
    )
    good.start()
    bad.start()

    status = cli(good, "status", "--run", good.run_id, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["state"] == "PHASE_QUEUEING"
    assert {p["phase_id"]: p["state"] for p in data["phases"]} == {"P1": "QUEUED", "P2": "QUEUED"}

    ran = cli(good, "run", "--run", good.run_id)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "DONE_SUCCESS" in ran.stdout
    data = json.loads(cli(good, "status", "--run", good.run_id, "--json").stdout)
    assert data["state"] == "DONE_SUCCESS"
    assert {p["phase_id"]: p["state"] for p in data["phases"]} == {"P1": "COMPLETE", "P2": "COMPLETE"}

    failed = cli(bad, "run", "--run", bad.run_id)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "DONE_FAILED_REQUIRES_HUMAN_REVIEW" in failed.stdout + failed.stderr
    data = json.loads(cli(bad, "status", "--run", bad.run_id, "--json").stdout)
    assert {p["phase_id"]: p["state"] for p in data["phases"]} == {"P1": "FAILED"}


def test_a_phase_driven_in_one_process_runs_no_history_lookup_nor_for_each_ref(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot looks for an earlier commit of its phase only when it resumes (the
    kill matrix covers that path); refs are read from git's files around the builder."""
    from pipeline.core import proc

    setup = make_workspace(tmp_path, files={"mod.py": "X = 1\n"}, agent_body='write("mod.py", "X = 2\\n")')
    setup.start()
    subcommands: list[str] = []
    real = proc.run

    def counting(argv, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not isinstance(argv, str) and argv and argv[0] == "git":
            rest = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
            subcommands.append(rest[0] if rest else "?")
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(proc, "run", counting)
    outcome = run_phase(setup.workspace, setup.run_id)
    assert outcome.phase_state == PhaseState.COMPLETE, outcome.message
    assert "log" not in subcommands and "for-each-ref" not in subcommands, subcommands
    # The snapshot keeps the patch the gate applied (one status, no second apply, no
    # checkout); the symlink check reads the index (no ls-files).
    assert subcommands.count("apply") == 1 and "ls-files" not in subcommands, subcommands
    assert subcommands.count("checkout") == 1, subcommands  # the reset after the builder


MEDDLING_CI = """\
from pathlib import Path
Path("mod.py").write_text("X = 3\\n")
Path("other.py").write_text("changed by CI\\n")
Path("ci-output.txt").write_text("left behind\\n")
Path("build").mkdir(exist_ok=True)
Path("build/cache.bin").write_text("ignored\\n")
"""


def test_the_snapshot_is_the_gated_patch_whatever_ci_did_to_the_worktree(tmp_path: Path) -> None:
    setup = make_workspace(
        tmp_path, files={**FILES, "other.py": "OTHER = 1\n", ".gitignore": "build/\n"},
        agent_body='write("mod.py", "X = 2\\n")', ci_steps=[python_step("meddle", MEDDLING_CI)],
    )
    before = started(setup)
    run_to_end(setup.workspace, setup.run_id)
    sha = assert_complete(setup, "P1")
    assert setup.git("show", f"{sha}:mod.py") == "X = 2"
    assert setup.git("show", f"{sha}:other.py") == "OTHER = 1"
    assert branch_files(setup, sha) == {".gitignore", "mod.py", "other.py"}
    assert_user_untouched(setup, before)
