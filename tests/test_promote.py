"""`doit promote` (docs/architecture.md: Invariants, Governance): the only writer of a base branch.

Real runs (a scripted builder, real CI commands) in real temporary git repositories; the
user's checkout is compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.commands.status import all_status, run_status
from pipeline.commands.validate import validate_workspace
from pipeline.core.errors import IntegrityError, StepFailed
from pipeline.run.driver import run_phase, run_to_end
from pipeline.run.promote import check_promotion, promote
from testing.gitrepo import git, tree_snapshot
from testing.runs import RunSetup, make_workspace, phase, python_step

FILES = {"mod.py": "X = 1\n", "README.md": "sample\n"}
GOOD_AGENT = 'write("mod.py", "X = 2\\n")\nwrite("new_" + PHASE + ".py", "Y = 1\\n")'
BAD_AGENT = "import sys\nsys.exit(3)"
CI = [python_step("import", "import mod; assert mod.X == 2")]


@dataclass(frozen=True)
class UserState:
    head_ref: str
    status: str
    staged: str
    tree: dict[str, bytes]


def user_state(repo: Path) -> UserState:
    return UserState(
        head_ref=git(repo, "symbolic-ref", "HEAD"),
        status=git(repo, "status", "--porcelain", "--untracked-files=all"),
        staged=git(repo, "diff", "--cached", "--binary"),
        tree=tree_snapshot(repo),
    )


def finished(tmp_path: Path, agent: str = GOOD_AGENT, **kw: object) -> RunSetup:
    setup = make_workspace(tmp_path, files=FILES, agent_body=agent, ci_steps=CI, **kw)  # type: ignore[arg-type]
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    return setup


def eligible_run(tmp_path: Path) -> RunSetup:
    setup = finished(tmp_path)
    run = setup.run_json()
    assert (run["state"], run["promotion_eligible_to_main"]) == ("DONE_SUCCESS", True), run
    return setup


def parents(setup: RunSetup, rev: str) -> list[str]:
    return setup.git("rev-list", "--parents", "-n", "1", rev).split()[1:]


def cli(setup: RunSetup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=setup.workspace, env=dict(os.environ), capture_output=True, text=True, timeout=120,
    )


def assert_merged(setup: RunSetup, into: str, base_before: str) -> str:
    """`into` gained one --no-ff merge commit of the run's branch carrying the run id."""
    merge = setup.git("rev-parse", f"refs/heads/{into}")
    assert parents(setup, merge) == [base_before, setup.git("rev-parse", setup.branch)]
    trailer = setup.git("log", "-1", "--format=%(trailers:key=Autopack-Run,valueonly,unfold)", merge)
    assert trailer == setup.run_id
    assert setup.git("show", f"{merge}:mod.py") == "X = 2"
    run = setup.run_json()
    assert run["promoted_commit"] == merge and run["promoted_at"]
    note = setup.events()[-1]
    assert (note["kind"], note["data"]["what"], note["data"]["commit"], note["data"]["into"]) == (
        "note", "promoted", merge, into,
    )
    assert validate_workspace(setup.workspace, setup.run_id) == []  # the record still verifies
    return merge


# -- refusals ------------------------------------------------------------------------------


def test_ineligible_run_is_refused_with_its_reasons(tmp_path: Path) -> None:
    setup = finished(tmp_path, BAD_AGENT, phases=[phase("P1", max_builder_attempts=1)])
    run = setup.run_json()
    assert run["state"].startswith("DONE_FAILED_") and run["promotion_eligible_to_main"] is False
    main, events = setup.git("rev-parse", "main"), len(setup.events())
    with pytest.raises(StepFailed) as err:
        promote(setup.workspace, setup.run_id)
    assert err.value.exit_code == 1
    for reason in run["promotion_reasons"]:
        assert reason in err.value.message
    with pytest.raises(StepFailed):
        check_promotion(setup.workspace, setup.run_id)
    assert setup.git("rev-parse", "main") == main
    assert len(setup.events()) == events
    assert setup.run_json()["promoted_commit"] is None


def test_unfinished_run_is_refused(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, files=FILES, agent_body=GOOD_AGENT, ci_steps=CI)
    setup.start()
    with pytest.raises(StepFailed, match="has not reached a terminal state"):
        promote(setup.workspace, setup.run_id)


def test_edited_run_json_does_not_promote(tmp_path: Path) -> None:
    setup = finished(tmp_path, BAD_AGENT, phases=[phase("P1", max_builder_attempts=1)])
    path = setup.run_dir / "run.json"
    data = json.loads(path.read_text())
    data["promotion_eligible_to_main"] = True
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    main = setup.git("rev-parse", "main")
    with pytest.raises(IntegrityError, match="terminal event"):
        promote(setup.workspace, setup.run_id)
    assert setup.git("rev-parse", "main") == main


def test_base_checked_out_and_dirty_is_refused_and_untouched(tmp_path: Path) -> None:
    setup = eligible_run(tmp_path)
    main = setup.git("rev-parse", "main")
    (setup.repo / "mod.py").write_text("X = 'mine'\n")
    (setup.repo / "scratch.txt").write_text("notes\n")
    before = user_state(setup.repo)
    with pytest.raises(StepFailed) as err:
        promote(setup.workspace, setup.run_id)
    assert "uncommitted changes" in err.value.message and str(setup.repo.resolve()) in err.value.message
    assert user_state(setup.repo) == before
    assert setup.git("rev-parse", "main") == main
    assert setup.run_json()["promoted_commit"] is None
    # Untracked files alone are dirt too: the merge could overwrite them.
    setup.git("checkout", "--", "mod.py")
    with pytest.raises(StepFailed):
        promote(setup.workspace, setup.run_id)
    assert (setup.repo / "scratch.txt").read_text() == "notes\n"


# -- merging -------------------------------------------------------------------------------


def test_base_not_checked_out_merges_in_a_temporary_worktree(tmp_path: Path) -> None:
    setup = eligible_run(tmp_path)
    main = setup.git("rev-parse", "main")
    setup.git("checkout", "-q", "-b", "feature")
    (setup.repo / "README.md").write_text("my edit\n")
    (setup.repo / "untracked.txt").write_text("mine\n")
    setup.git("add", "README.md")
    (setup.repo / "README.md").write_text("my edit, more\n")
    before = user_state(setup.repo)

    outcome = promote(setup.workspace, setup.run_id)
    assert outcome.status == "merged" and "temporary worktree" in outcome.message
    merge = assert_merged(setup, "main", main)
    assert outcome.commit == merge
    assert user_state(setup.repo) == before  # branch, index, files: all as they were
    temp = setup.workspace / ".autopack" / f"promote-{setup.run_id}"
    assert not temp.exists()
    assert str(temp) not in setup.git("worktree", "list")

    # Twice: idempotent, nothing written.
    run_bytes, events = (setup.run_dir / "run.json").read_bytes(), len(setup.events())
    again = promote(setup.workspace, setup.run_id)
    assert (again.status, again.commit) == ("already_merged", merge)
    assert setup.git("rev-parse", "main") == merge
    assert (setup.run_dir / "run.json").read_bytes() == run_bytes and len(setup.events()) == events


def test_a_promote_killed_mid_way_leaves_nothing_in_the_way(tmp_path: Path) -> None:
    setup = eligible_run(tmp_path)
    main = setup.git("rev-parse", "main")
    setup.git("checkout", "-q", "-b", "feature")
    # What a promote killed after creating its worktree leaves: the base checked out there.
    temp = setup.workspace / ".autopack" / f"promote-{setup.run_id}"
    setup.git("worktree", "add", "-q", str(temp), "main")
    (temp / "half-merged.txt").write_text("debris\n")
    outcome = promote(setup.workspace, setup.run_id)
    assert outcome.status == "merged" and "temporary worktree" in outcome.message
    assert_merged(setup, "main", main)
    assert not temp.exists()


def test_base_checked_out_and_clean_merges_in_the_checkout(tmp_path: Path) -> None:
    setup = eligible_run(tmp_path)
    main = setup.git("rev-parse", "main")
    outcome = promote(setup.workspace, setup.run_id)
    merge = assert_merged(setup, "main", main)
    assert str(setup.repo.resolve()) in outcome.message
    assert setup.git("rev-parse", "HEAD") == merge
    assert (setup.repo / "mod.py").read_text() == "X = 2\n"
    assert setup.git("status", "--porcelain", "--untracked-files=all") == ""


def test_into_another_branch(tmp_path: Path) -> None:
    setup = eligible_run(tmp_path)
    main = setup.git("rev-parse", "main")
    setup.git("branch", "release", "main")
    outcome = promote(setup.workspace, setup.run_id, into="release")
    assert outcome.into == "release"
    assert_merged(setup, "release", main)
    assert setup.git("rev-parse", "main") == main
    with pytest.raises(Exception, match="does not exist"):
        promote(setup.workspace, setup.run_id, into="nope")


def test_check_exit_codes(tmp_path: Path) -> None:
    good = eligible_run(tmp_path / "good")
    bad = finished(tmp_path / "bad", BAD_AGENT, phases=[phase("P1", max_builder_attempts=1)])
    ok = cli(good, "promote", "--run", good.run_id, "--check")
    assert ok.returncode == 0, ok.stderr
    assert "eligible for promotion to main" in ok.stdout
    no = cli(bad, "promote", "--run", bad.run_id, "--check")
    assert no.returncode == 1
    assert "not eligible for promotion" in no.stderr
    assert bad.run_json()["promotion_reasons"][0] in no.stderr
    assert cli(bad, "promote", "--run", bad.run_id).returncode == 1
    assert cli(good, "promote", "--run", "missing", "--check").returncode == 2
    assert good.git("rev-parse", "main") == good.run_json()["base_commit"]  # --check wrote nothing


# -- only promote writes the base ------------------------------------------------------------


def test_base_is_written_by_promote_only(tmp_path: Path) -> None:
    # The workspace is its own target: the run also commits its record onto the branch.
    setup = make_workspace(
        tmp_path, files=FILES, agent_body=GOOD_AGENT, ci_steps=CI, target_separate=False,
        phases=[phase("P1"), phase("P2")],
    )
    main = setup.git("rev-parse", "main")

    def unchanged(step: str) -> None:
        assert setup.git("rev-parse", "refs/heads/main") == main, f"{step} moved the base branch"

    setup.start()
    unchanged("start_run")
    while not (outcome := run_phase(setup.workspace, setup.run_id)).run_state.terminal:
        unchanged(f"run_phase {outcome.phase_id}")
    unchanged("the last run_phase")
    assert outcome.run_state.value == "DONE_SUCCESS"
    run_status(setup.workspace, setup.run_id)
    all_status(setup.workspace)
    unchanged("status")
    assert validate_workspace(setup.workspace) == []
    unchanged("validate")
    assert cli(setup, "promote", "--run", setup.run_id, "--check").returncode == 0
    unchanged("promote --check")

    # main is checked out here and the live record runs/r1/ is untracked: with anything else
    # untracked there too, refused, said why.
    (setup.run_dir / "my-notes.txt").write_text("mine\n")
    with pytest.raises(StepFailed, match="live record"):
        promote(setup.workspace, setup.run_id)
    unchanged("a refused promote")
    # the record alone, equal to the branch's copy, is no obstacle: merged in the checkout
    (setup.run_dir / "my-notes.txt").unlink()
    outcome = promote(setup.workspace, setup.run_id)
    assert outcome.status == "merged" and "live record runs/r1/ now tracked" in outcome.message
    assert parents(setup, "main")[0] == main
