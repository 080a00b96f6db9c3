"""`python -m pipeline init` adopts Autopack in a repository; the real `doit` binary then
drives a run there (README.md, The plan; README.md, In CI). Init never overwrites anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands.init import FILES, GITIGNORE_LINES
from pipeline.core.yamlio import dump_new, load_fast
from testing.gitrepo import git, make_repo, tree_snapshot, write_script

DOIT = Path(sys.executable).parent / "doit"


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=120)


def init(cwd: Path) -> subprocess.CompletedProcess[str]:
    done = run([sys.executable, "-m", "pipeline", "init"], cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def doit(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run([str(DOIT), *args], cwd)


def scaffolded(repo: Path) -> dict[str, bytes]:
    """Every file of the checkout but doit's own cache (which each doit call may rewrite)."""
    return {rel: data for rel, data in tree_snapshot(repo).items() if not rel.startswith(".doit.db")}


@pytest.mark.skipif(not DOIT.exists(), reason="the doit console script is not installed beside this python")
def test_init_then_a_run_with_the_real_doit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "project", {"README.md": "a project\n", ".gitignore": "__pycache__/\n"})
    first = init(repo)
    for rel, _content in FILES:
        assert (repo / rel).is_file(), rel
        assert f"created {rel}" in first.stdout
    ignore = (repo / ".gitignore").read_text()
    assert ignore.startswith("__pycache__/\n")
    assert all(line in ignore.splitlines() for line in GITIGNORE_LINES)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "adopt autopack")

    done = doit(repo, "new_run", "--run", "r1")
    assert done.returncode == 0, done.stdout + done.stderr
    plan_path = repo / "runs" / "r1" / "plan.yaml"
    agent = write_script(tmp_path / "agent.py", (
        f"#!{sys.executable}\n"
        "import os\nfrom pathlib import Path\n"
        "assert 'F1.1' in Path(os.environ['AUTOPACK_PHASE_SPEC']).read_text()\n"
        "Path('hello.txt').write_text('hello from the agent\\n')\n"
    ))
    plan = load_fast(plan_path)
    plan["agents"] = {"builder": {"preset": "command", "command": str(agent)}}
    plan["ci"] = {"normal": {"steps": [{"name": "ok", "run": "true"}]}}
    plan["target"] = {"repo": ".", "base": "main"}
    plan_path.write_text(dump_new(plan, header="edited by the test"))

    done = doit(repo, "start_run", "--run", "r1")
    assert done.returncode == 0, done.stdout + done.stderr
    done = doit(repo, "run", "--run", "r1")  # the `run` command plugin from doit.cfg
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DONE_SUCCESS" in done.stdout
    assert load_fast(repo / "runs" / "r1" / "run.json")["state"] == "DONE_SUCCESS"
    assert git(repo, "show", "autonomous/r1/F1.1:hello.txt") == "hello from the agent"
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"

    # init again: nothing is overwritten, nothing is duplicated
    before = scaffolded(repo)
    again = init(repo)
    assert scaffolded(repo) == before
    for rel, _content in FILES:
        assert f"skipped {rel}" in again.stdout
    assert "nothing to do" in again.stdout
    lines = (repo / ".gitignore").read_text().splitlines()
    assert len(lines) == len(set(lines))


def test_init_keeps_the_users_files(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "p", {"dodo.py": "# mine\n", ".gitignore": ".doit.db*\nnode_modules/"})
    (repo / "profiles").mkdir()
    (repo / "profiles" / "ci.yaml").write_text("normal: {steps: []}\n")
    done = init(repo)
    assert (repo / "dodo.py").read_text() == "# mine\n"
    assert (repo / "profiles" / "ci.yaml").read_text() == "normal: {steps: []}\n"
    assert "skipped dodo.py: exists, left as it is; add `from autopack_tasks import *`" in done.stdout
    assert "skipped profiles/ci.yaml" in done.stdout
    assert "created profiles/ruleset.yaml" in done.stdout
    ignore = (repo / ".gitignore").read_text()
    assert ignore.startswith(".doit.db*\nnode_modules/\n")  # a missing final newline is mended
    assert ignore.splitlines().count(".doit.db*") == 1
    assert ".autopack/" in ignore.splitlines()
    # the scaffolded profiles are comments only: the built-ins stay in force
    for rel in ("profiles/ruleset.yaml", "profiles/agents.yaml"):
        assert load_fast(repo / rel) is None


def test_init_outside_a_git_repository_says_so(tmp_path: Path) -> None:
    done = init(tmp_path)
    assert "is not a git repository" in done.stdout
    assert (tmp_path / "dodo.py").is_file()
