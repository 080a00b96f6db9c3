"""Working in place (docs/architecture.md, The run directory): a checkout of the run's integration branch is the run's
worktree, as in a CI job. The git adapter allows it only while that branch is checked out
there, and never touches the live record (runs/<run_id>/) or git-ignored files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import GitError
from pipeline.run.context import open_context
from pipeline.run.driver import run_phase
from pipeline.vcs.local import LocalGitCli
from testing.gitrepo import git, make_repo
from testing.runs import WORKSPACE_GITIGNORE, RunSetup, make_workspace, python_step

BRANCH = "autonomous/r1"
RECORD = "runs/r1"


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout on the run's branch, with a committed record and an ignored virtualenv."""
    repo = make_repo(
        tmp_path / "ci-checkout",
        {"app.py": "X = 1\n", ".gitignore": WORKSPACE_GITIGNORE + ".venv/\n*.log\n", f"{RECORD}/run.json": "{}\n"},
    )
    git(repo, "checkout", "-q", "-b", BRANCH)
    _write(repo, ".venv/bin/marker", "the job's tools\n")
    _write(repo, "we[i]rd *.log", "an ignored file the job made before the run\n")
    _write(repo, f"{RECORD}/.lock", "pid\n")
    return repo


def _live_record(repo: Path) -> None:
    """What the supervisor has written since the last commit: a change and a new file."""
    _write(repo, f"{RECORD}/run.json", '{"state": "GATE"}\n')
    _write(repo, f"{RECORD}/phases/01-P1/attempts/1/builder.log", "agent output\n")


def _record_intact(repo: Path) -> None:
    assert (repo / RECORD / "run.json").read_text() == '{"state": "GATE"}\n'
    assert (repo / RECORD / "phases/01-P1/attempts/1/builder.log").read_text() == "agent output\n"
    assert (repo / RECORD / ".lock").read_text() == "pid\n"
    assert (repo / ".venv/bin/marker").read_text() == "the job's tools\n"
    assert (repo / "we[i]rd *.log").exists()


def test_only_a_checkout_of_the_runs_branch_is_adopted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "dev", {"app.py": "X = 1\n", ".gitignore": WORKSPACE_GITIGNORE})
    git(repo, "branch", BRANCH)
    cli = LocalGitCli(repo)
    assert cli.adopt_checkout(repo, BRANCH, RECORD) is False  # on main: never worked in
    base = git(repo, "rev-parse", "HEAD")
    with pytest.raises(GitError, match="user's checkout"):
        cli.reset_to(repo, BRANCH, base)
    with pytest.raises(GitError, match="user's checkout"):
        cli.commit_changes(repo, "record", {"Autopack-Run": "r1"})
    git(repo, "checkout", "-q", "--detach")
    assert cli.adopt_checkout(repo, BRANCH, RECORD) is False
    git(repo, "checkout", "-q", "main")
    with pytest.raises(GitError, match="only a run's integration branch"):
        cli.adopt_checkout(repo, "main", RECORD)
    with pytest.raises(GitError, match="not a plain relative path"):
        cli.adopt_checkout(repo, BRANCH, "runs/../..")


def test_a_reset_in_place_keeps_the_record_and_ignored_files(checkout: Path) -> None:
    cli = LocalGitCli(checkout)
    assert cli.adopt_checkout(checkout, BRANCH, RECORD) is True
    base = cli.head(checkout)
    _live_record(checkout)
    # The agent: an edit, a new file, a staged file, a commit on a branch of its own.
    _write(checkout, "app.py", "X = 2\n")
    _write(checkout, "new.py", "Y = 1\n")
    _write(checkout, "staged.py", "Z = 1\n")
    git(checkout, "add", "staged.py")
    git(checkout, "checkout", "-q", "-b", "agent-branch")
    git(checkout, "commit", "-q", "-m", "agent")
    # Ignored leftovers of the agent or a CI step: a stale bytecode cache would outlive its source.
    _write(checkout, "__pycache__/app.cpython-311.pyc", "stale\n")
    _write(checkout, "build.log", "ignored, made during the phase\n")

    patch = cli.collect_patch(checkout, base)
    assert "app.py" in patch and "new.py" in patch and "staged.py" in patch
    assert RECORD not in patch  # the live record is never part of a patch
    cli.reset_to(checkout, BRANCH, base)

    assert git(checkout, "symbolic-ref", "--short", "HEAD") == BRANCH
    assert git(checkout, "rev-parse", BRANCH) == base
    assert (checkout / "app.py").read_text() == "X = 1\n"
    assert not (checkout / "new.py").exists() and not (checkout / "staged.py").exists()
    assert not (checkout / "__pycache__").exists() and not (checkout / "build.log").exists()
    _record_intact(checkout)
    assert git(checkout, "status", "--porcelain", "--", ".", f":!{RECORD}") == ""

    # Nothing else to do: one status call finds it clean (the record does not count).
    cli.reset_to(checkout, BRANCH, base)
    _record_intact(checkout)


def test_in_place_a_commit_carries_the_record_and_needs_the_branch(checkout: Path) -> None:
    cli = LocalGitCli(checkout)
    assert cli.adopt_checkout(checkout, BRANCH, RECORD)
    _live_record(checkout)
    assert cli.commit_changes(checkout, "autopack: record r1", {"Autopack-Run": "r1"}) is True
    assert git(checkout, "show", f"HEAD:{RECORD}/run.json") == '{"state": "GATE"}'
    assert ".lock" not in git(checkout, "ls-files", RECORD)
    base = cli.head(checkout)

    git(checkout, "checkout", "-q", "main")
    with pytest.raises(GitError, match="has 'main' checked out, not the run's branch"):
        cli.commit(checkout, "x", {"Autopack-Run": "r1"}, allow_empty=True)
    with pytest.raises(GitError, match="works in place there on 'autonomous/r1' only"):
        cli.reset_to(checkout, "main", base)
    assert git(checkout, "rev-parse", "main") != base  # main untouched
    cli.reset_to(checkout, BRANCH, base)  # an agent's switch is undone
    assert git(checkout, "symbolic-ref", "--short", "HEAD") == BRANCH


def test_a_failed_apply_in_place_keeps_the_record(checkout: Path, tmp_path: Path) -> None:
    cli = LocalGitCli(checkout)
    assert cli.adopt_checkout(checkout, BRANCH, RECORD)
    _live_record(checkout)
    bad = tmp_path / "bad.diff"
    bad.write_text("diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-X = 9\n+X = 3\n")
    assert not cli.apply(checkout, bad).ok
    _record_intact(checkout)
    assert (checkout / "app.py").read_text() == "X = 1\n"


def test_a_checkout_with_other_changes_is_not_worked_in(checkout: Path) -> None:
    _write(checkout, "notes.txt", "someone's work\n")
    cli = LocalGitCli(checkout)
    with pytest.raises(GitError, match=r"also has changes outside runs/r1/: notes\.txt") as err:
        cli.adopt_checkout(checkout, BRANCH, RECORD)
    assert "check out another branch" in err.value.fix
    assert (checkout / "notes.txt").exists()

    (checkout / "notes.txt").unlink()
    (checkout / ".gitignore").write_text(".venv/\n*.log\n")  # the lock would be committed
    git(checkout, "commit", "-q", "-am", "ignore less")
    with pytest.raises(GitError, match=r"does not ignore runs/r1/\.lock"):
        cli.adopt_checkout(checkout, BRANCH, RECORD)


# -- the run context: in place, or a linked worktree re-created ------------------------------


def _started_ci_job(tmp_path: Path, agent_body: str) -> tuple[RunSetup, Path]:
    """A run started in a developer's workspace (the record on its branch), and a CI job's
    clone of that branch."""
    setup = make_workspace(
        tmp_path / "dev",
        files={"mod.py": "X = 1\n", ".gitignore": WORKSPACE_GITIGNORE + ".venv/\n"},
        agent_body=agent_body,
        ci_steps=[python_step("x-is-2", "import mod; assert mod.X == 2")],
        target_separate=False,
    )
    git(setup.workspace, "add", "-A")
    git(setup.workspace, "commit", "-q", "-m", "plan")
    setup.start()
    job = tmp_path / "job"
    git(tmp_path, "clone", "-q", "--branch", BRANCH, str(setup.workspace), str(job))
    return setup, job


def test_a_fresh_clone_on_the_runs_branch_runs_a_phase_in_place(tmp_path: Path) -> None:
    """A CI job: clone, check out autonomous/r1, run_phase. A red first attempt is reset in
    place, and the record of it survives into the commit."""
    setup, job = _started_ci_job(tmp_path, 'write("mod.py", "X = 2\\n" if ATTEMPT > 1 else "X = 0\\n")')
    _write(job, ".venv/bin/marker", "the job's tools\n")

    outcome = run_phase(job, "r1")
    assert outcome.run_state.value == "DONE_SUCCESS", outcome.message
    assert not (job / ".autopack").exists()  # no second worktree
    assert (job / ".venv/bin/marker").exists()
    assert git(job, "status", "--porcelain") == ""
    assert git(job, "show", f"{BRANCH}/P1:mod.py") == "X = 2"
    tracked = git(job, "ls-files", "runs/r1/phases")
    assert "runs/r1/phases/01-P1/attempts/1/patch.diff" in tracked  # the red attempt, recorded
    assert "runs/r1/phases/01-P1/ci/1/ci.json" in tracked
    # The developer's workspace (where the run started) is untouched by the job.
    assert git(setup.workspace, "rev-parse", BRANCH) != git(job, "rev-parse", BRANCH)


def test_a_missing_linked_worktree_is_re_created_on_the_runs_branch(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, target_separate=False, agent_body='write("a.txt", "a\\n")')
    setup.start()
    tip = setup.git("rev-parse", BRANCH)
    shutil.rmtree(setup.worktree)
    with open_context(setup.workspace, "r1") as ctx:
        assert ctx.worktree == setup.worktree and not ctx.in_place
        assert ctx.git.head(ctx.worktree) == tip
    assert setup.git("rev-parse", "--abbrev-ref", "HEAD") == "main"

    shutil.rmtree(setup.worktree)
    setup.git("worktree", "prune")
    setup.git("branch", "-D", BRANCH)
    with pytest.raises(GitError, match="branch 'autonomous/r1' does not exist") as err:
        open_context(setup.workspace, "r1")
    assert "git fetch origin autonomous/r1:autonomous/r1" in err.value.fix


@pytest.mark.parametrize("failpoint", ["ci_entered", "after_snapshot_commit"])
@pytest.mark.parametrize("next_job", ["same-checkout", "fresh-clone"])
def test_a_ci_job_killed_mid_phase_resumes_in_the_next_job(tmp_path: Path, failpoint: str, next_job: str) -> None:
    """`doit run_phase` in a CI job is killed (a timeout, a cancelled pipeline) while the phase
    is in CI_RUNNING or just after its snapshot commit; the next job, on the same checkout or
    on a fresh clone of what the killed job left on the branch, finishes the phase."""
    import os
    import subprocess
    import sys

    _, job = _started_ci_job(tmp_path, 'write("mod.py", "X = 2\\n")')

    def run_phase_job(where: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "run_phase", "--run", "r1"], cwd=where,
            env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
        )

    killed = run_phase_job(job, {"AUTOPACK_FAILPOINT": failpoint})
    assert killed.returncode == 137, killed.stdout + killed.stderr
    if next_job == "fresh-clone":
        job2 = tmp_path / "job2"
        git(tmp_path, "clone", "-q", "--branch", BRANCH, str(job), str(job2))
        job = job2
    resumed = run_phase_job(job, {})
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "DONE_SUCCESS" in git(job, "show", f"{BRANCH}:{RECORD}/run.json")
    log = git(job, "log", "--format=%(trailers:key=Autopack-Phase,valueonly)", BRANCH).split()
    assert log.count("P1") == 1, "one snapshot commit"
    assert git(job, "show", f"{BRANCH}/P1:mod.py") == "X = 2"
    assert git(job, "status", "--porcelain") == ""
    checked = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", "--run", "r1"], cwd=job, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
