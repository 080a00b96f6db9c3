"""`doit validate` checks the branch against the record: every COMPLETE phase's commit is on
`autonomous/<run>` (one `git rev-list` through the vcs adapter), in a separate target
repository, in the workspace's own, and in a CI clone that has only the remote's branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.commands.validate import validate_run
from pipeline.run.driver import run_to_end
from testing.runs import RunSetup, cli, git, make_workspace, phase

BODY = 'write("mod.py", f"X = 2  # {PHASE}\\n")'


def _finished(tmp_path: Path, separate: bool = True) -> RunSetup:
    setup = make_workspace(
        tmp_path, files={"mod.py": "X = 1\n"}, agent_body=BODY, phases=[phase("P1"), phase("P2")],
        target_separate=separate,
    )
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert validate_run(setup.workspace, setup.run_id) == []
    return setup


def _validate_fails(setup: RunSetup, *expected: str) -> str:
    done = cli(setup, "validate", "--run", setup.run_id)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    for text in expected:
        assert text in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize("separate", [True, False], ids=["separate-target", "workspace-is-target"])
def test_a_branch_moved_back_loses_the_phases(tmp_path: Path, separate: bool) -> None:
    setup = _finished(tmp_path, separate)
    p1, p2 = setup.phase_json("P1")["commit"], setup.phase_json("P2")["commit"]
    base = setup.run_json()["base_commit"]
    setup.git("update-ref", f"refs/heads/{setup.branch}", base)  # force-moved: the tags still agree
    problems = validate_run(setup.workspace, setup.run_id)
    assert len(problems) == 2, problems
    for phase_id, commit in (("P1", p1), ("P2", p2)):
        assert any(
            f"phase {phase_id} is COMPLETE with commit {commit[:12]}, which is not on branch {setup.branch}" in p
            and "git reflog show" in p
            for p in problems
        ), problems
    _validate_fails(setup, f"commit {p1[:12]}, which is not on branch", f"commit {p2[:12]}, which is not on branch")


def test_a_rewritten_branch_that_dropped_the_phases(tmp_path: Path) -> None:
    """The branch squashed to one commit with the same files: the tree agrees, the history not."""
    setup = _finished(tmp_path)
    p1, p2 = setup.phase_json("P1")["commit"], setup.phase_json("P2")["commit"]
    head = setup.git("rev-parse", setup.branch).strip()
    squashed = setup.git(
        "commit-tree", f"{head}^{{tree}}", "-p", setup.run_json()["base_commit"], "-m", "squashed"
    ).strip()
    setup.git("update-ref", f"refs/heads/{setup.branch}", squashed)
    assert setup.git("diff", head, setup.branch) == ""
    problems = validate_run(setup.workspace, setup.run_id)
    assert [p.split(": phase ")[1].split(" ")[0] for p in problems] == ["P1", "P2"], problems
    _validate_fails(setup, f"{setup.phase_dir('P1') / 'phase.json'}: phase P1", p1[:12], p2[:12])


def test_a_record_naming_a_commit_off_the_branch(tmp_path: Path) -> None:
    """phase.json and its tag both moved to a commit the branch never had."""
    setup = _finished(tmp_path)
    setup.git("checkout", "-q", "-b", "elsewhere", "main")
    (setup.repo / "other.txt").write_text("never gated\n")
    setup.git("add", "other.txt")
    setup.git("commit", "-q", "-m", "ungated")
    forged = setup.git("rev-parse", "HEAD").strip()
    setup.git("checkout", "-q", "main")
    setup.git("tag", "-f", "-a", "-m", "forged", setup.tag("P2"), forged)
    path = setup.phase_dir("P2") / "phase.json"
    data = json.loads(path.read_text())
    data["commit"] = forged
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    _validate_fails(setup, f"{path}: phase P2 is COMPLETE with commit {forged[:12]}, which is not on branch")


def test_a_missing_branch_while_phases_are_complete(tmp_path: Path) -> None:
    setup = _finished(tmp_path)
    p1 = setup.phase_json("P1")["commit"]
    setup.git("update-ref", "-d", f"refs/heads/{setup.branch}")
    gone = f"phase P1 is COMPLETE with commit {p1[:12]}, but branch {setup.branch} does not exist"
    err = _validate_fails(setup, gone)
    assert f"git branch {setup.branch}" in err


def test_a_ci_clone_with_only_the_remote_branch(tmp_path: Path) -> None:
    """A fresh clone that checked the run's branch out detached: the branch is found as
    refs/remotes/origin/autonomous/<run>; moving that one back is found too."""
    setup = _finished(tmp_path / "start", separate=False)
    clone = tmp_path / "ci" / "workspace"
    git(tmp_path, "clone", "-q", str(setup.workspace), str(clone))
    git(clone, "checkout", "-q", "--detach", f"origin/{setup.branch}")
    assert git(clone, "branch", "--list", setup.branch) == ""
    assert validate_run(clone, setup.run_id) == []
    git(clone, "update-ref", f"refs/remotes/origin/{setup.branch}", setup.run_json()["base_commit"])
    problems = validate_run(clone, setup.run_id)
    assert any("phase P1 is COMPLETE" in p and "not on branch" in p for p in problems), problems


def test_a_forged_branch_name_reaches_git_as_no_option(tmp_path: Path) -> None:
    """run.json is hostile input: a branch that is no ref name is reported, never run."""
    setup = _finished(tmp_path)
    setup.git("update-ref", f"refs/heads/{setup.branch}", setup.run_json()["base_commit"])
    run_json = setup.store.run_json
    data = json.loads(run_json.read_text())
    data["branch"] = "--output=owned"
    run_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    problems = validate_run(setup.workspace, setup.run_id)
    assert any("'--output=owned' is not a valid git branch name" in p for p in problems), problems
    assert not (setup.repo / "owned").exists() and not (setup.workspace / "owned").exists()
