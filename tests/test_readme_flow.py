"""The README's flow on a fresh repository, with the real `doit`: init, new_run, start_run,
run, promote -- ending in a merged promotion of the run into the base branch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import StepFailed
from pipeline.core.yamlio import dump_new, load_fast
from pipeline.run.driver import run_to_end
from pipeline.run.promote import promote
from testing.gitrepo import git, make_repo, write_script
from testing.runs import RunSetup, make_workspace, python_step

DOIT = Path(sys.executable).parent / "doit"


def doit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    done = subprocess.run([str(DOIT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"doit {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


@pytest.mark.skipif(not DOIT.exists(), reason="the doit console script is not installed beside this python")
def test_the_readme_flow_on_a_fresh_repository_ends_in_a_merged_promotion(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "a project\n"})
    init = subprocess.run(
        [sys.executable, "-m", "pipeline", "init"], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert init.returncode == 0, init.stdout + init.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "adopt autopack")

    doit(repo, "new_run", "--run", "r1")
    plan_path = repo / "runs" / "r1" / "plan.yaml"
    agent = write_script(
        tmp_path / "agent.py",
        f"#!{sys.executable}\nfrom pathlib import Path\nPath('hello.txt').write_text('hello\\n')\n",
    )
    plan = load_fast(plan_path)
    plan["agents"] = {"builder": {"preset": "command", "command": str(agent)}}
    plan["ci"] = {"normal": {"steps": [{"name": "ok", "run": "test -f hello.txt"}]}}
    plan_path.write_text(dump_new(plan, header="edited as the README says"))
    doit(repo, "validate", "--run", "r1")
    doit(repo, "start_run", "--run", "r1")
    assert "DONE_SUCCESS" in doit(repo, "run", "--run", "r1").stdout
    main_before = git(repo, "rev-parse", "main")

    out = doit(repo, "promote", "--run", "r1").stdout
    assert "promoted run r1" in out
    merge = git(repo, "rev-parse", "main")
    assert git(repo, "rev-list", "--parents", "-n", "1", merge).split()[1:] == [
        main_before,
        git(repo, "rev-parse", "autonomous/r1"),
    ]
    assert (repo / "hello.txt").read_text() == "hello\n", "the checkout follows the merged base"
    assert load_fast(repo / "runs" / "r1" / "run.json")["promoted_commit"] == merge
    # the record still verifies after promotion
    doit(repo, "validate", "--run", "r1")


# -- the live record in the way of the merge -----------------------------------------------


def _own_target_run(tmp_path: Path) -> RunSetup:
    setup = make_workspace(
        tmp_path,
        files={"mod.py": "X = 1\n"},
        agent_body='write("mod.py", "X = 2\\n")',
        ci_steps=[python_step("x", "import mod; assert mod.X == 2")],
        target_separate=False,
    )
    setup.git("add", "-A")
    setup.git("commit", "-q", "-m", "the plan")
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["promotion_eligible_to_main"] is True
    return setup


def test_promote_refuses_when_the_live_record_differs_from_the_branch_copy(tmp_path: Path) -> None:
    setup = _own_target_run(tmp_path)
    main = setup.git("rev-parse", "main")
    (setup.run_dir / "my-notes.txt").write_text("not the run's\n")
    with pytest.raises(StepFailed, match="uncommitted changes or untracked files"):
        promote(setup.workspace, setup.run_id)
    assert setup.git("rev-parse", "main") == main
    assert (setup.run_dir / "my-notes.txt").read_text() == "not the run's\n"
    assert (setup.run_dir / "run.json").is_file(), "the live record was left in place"


def test_a_promote_killed_with_the_record_aside_converges(tmp_path: Path) -> None:
    setup = _own_target_run(tmp_path)
    main = setup.git("rev-parse", "main")
    env = {**os.environ, "AUTOPACK_FAILPOINT": "promote_record_aside"}
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "promote", "--run", setup.run_id],
        cwd=setup.workspace, env=env, capture_output=True, text=True, timeout=120,
    )
    assert killed.returncode == 137, killed.stdout + killed.stderr
    assert not (setup.run_dir / "run.json").exists() and setup.git("rev-parse", "main") == main
    assert (setup.run_dir / "plan.yaml").is_file(), "the committed plan stays"
    outcome = promote(setup.workspace, setup.run_id)
    assert outcome.status == "merged"
    assert setup.git("show", "main:mod.py") == "X = 2"
    assert setup.run_json()["promoted_commit"] == outcome.commit
    assert not (setup.workspace / ".autopack" / f"promote-record-{setup.run_id}").exists()
