"""Workspaces, plans and scripted agents for run-level tests.

Everything is real: a git repository in a temp dir (the target), a workspace holding
`runs/<run_id>/plan.yaml`, a builder that is a small Python script run as a subprocess
by the supervisor, and CI steps that are real shell lines. Typical use::

    setup = make_workspace(
        tmp_path,
        files={"mod.py": "X = 1\\n"},
        agent_body='write("mod.py", "X = 2\\\\n")',
        phases=[phase("P1")],
        ci_steps=[python_step("import", "import mod")],
    )
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.phase_json("P1")["state"] == "COMPLETE"

The agent body runs after `AGENT_PRELUDE`, which gives it `RUN_ID`, `PHASE`, `ATTEMPT`,
`FEEDBACK`, `RESULT` and the helpers `write(rel, text)`, `git(*args)` (with an identity
and no user config needed) and `result(**fields)` (writes the AUTOPACK_RESULT JSON).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.yamlio import dump_new
from pipeline.store.rundir import RunStore
from testing.gitrepo import git, make_repo, write_script

PY = sys.executable
DEFAULT_RUN_ID = "r1"
# What a workspace that is its own target repository ignores (as this project's own
# .gitignore does): the run worktrees, doit's cache, the lock and temp files.
WORKSPACE_GITIGNORE = (
    ".autopack/\n.doit.db*\nruns/*/.lock\nruns/*/**/*.tmp.*\nreports/project_issue_backlog.json\n__pycache__/\n"
)

AGENT_PRELUDE = '''\
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUN_ID = os.environ.get("AUTOPACK_RUN_ID", "")
PHASE = os.environ.get("AUTOPACK_PHASE_ID", "")
ATTEMPT = int(os.environ.get("AUTOPACK_ATTEMPT") or 0)
FEEDBACK = os.environ.get("AUTOPACK_FEEDBACK", "")
RESULT = os.environ.get("AUTOPACK_RESULT", "")


def write(rel, text):
    path = Path(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def git(*args):
    ident = ["-c", "user.name=Scripted Agent", "-c", "user.email=agent@example.invalid",
             "-c", "commit.gpgSign=false", "-c", "core.hooksPath=/dev/null"]
    return subprocess.run(["git", *ident, *args], check=True, capture_output=True, text=True).stdout


def result(**fields):
    Path(RESULT).write_text(json.dumps(fields))


'''


def command(*argv: str | Path) -> str:
    """A shell command line running `argv` with this interpreter, each word quoted."""
    return shlex.join([PY, *(str(a) for a in argv)])


def write_agent(path: Path, body: str) -> Path:
    """A scripted builder at `path`: `AGENT_PRELUDE` followed by `body`."""
    return write_script(path, AGENT_PRELUDE + body.strip("\n") + "\n")


def python_step(name: str, code: str, timeout_s: int = 60) -> dict[str, Any]:
    """A CI step running `python -c code` in the worktree."""
    return {"name": name, "run": command("-c", code), "timeout_s": timeout_s}


def pytest_step(name: str = "tests", args: str = "", timeout_s: int = 120) -> dict[str, Any]:
    """A CI step running pytest with a JUnit report (no cache left in the worktree)."""
    run = f"{command('-m', 'pytest', '-q', '-p', 'no:cacheprovider')} --junitxml={{junit}}"
    return {"name": name, "run": f"{run} {args}".strip(), "timeout_s": timeout_s}


def phase(phase_id: str, **overrides: Any) -> dict[str, Any]:
    """A plan phase with test-friendly defaults (any key can be overridden)."""
    data: dict[str, Any] = {
        "phase_id": phase_id,
        "name": f"Phase {phase_id}",
        "description": f"Do the work of {phase_id}.",
        "task_category": "feature_implementation",
        "complexity": "low",
        "builder_mode": "scaffolding_heavy",
        "scope": {"allow": ["**"]},
        "max_builder_attempts": 2,
    }
    data.update(overrides)
    return data


def plan_dict(
    run_id: str,
    *,
    repo: str,
    builder: Mapping[str, Any] | None,
    phases: Sequence[Mapping[str, Any]],
    ci_steps: Sequence[Mapping[str, Any]],
    base: str | None = "main",
    tiers: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A plan (README.md, The plan) as plain data, ready for `dump_new`."""
    target: dict[str, Any] = {"repo": repo}
    if base is not None:
        target["base"] = base
    plan: dict[str, Any] = {
        "run_id": run_id,
        "project_id": "sample",
        "description": "A run made by a test.",
        "target": target,
        "safety_profile": "normal",
        "run_scope": "multi_tier",
    }
    if builder is not None:
        plan["agents"] = {"builder": dict(builder)}
    plan["ci"] = {"normal": {"steps": [dict(s) for s in ci_steps]}}
    plan["tiers"] = [dict(t) for t in tiers] if tiers else [
        {"tier_id": "T1", "name": "Tier one", "phases": [dict(p) for p in phases]}
    ]
    return plan


@dataclass(frozen=True)
class RunSetup:
    """A workspace with a plan for `run_id`, and the target repository it changes."""

    workspace: Path
    repo: Path
    run_id: str
    agent: Path | None

    # -- places -------------------------------------------------------------------------

    @property
    def store(self) -> RunStore:
        """The run directory's paths as the supervisor names them."""
        return RunStore(self.workspace, self.run_id)

    @property
    def run_dir(self) -> Path:
        return self.store.run_dir

    @property
    def plan_path(self) -> Path:
        return self.store.plan_path

    @property
    def branch(self) -> str:
        return f"autonomous/{self.run_id}"

    def tag(self, phase_id: str) -> str:
        return f"autonomous/{self.run_id}/{phase_id}"

    @property
    def worktree(self) -> Path:
        return (self.workspace / ".autopack" / "worktrees" / self.run_id).resolve()

    def phase_dir(self, phase_id: str) -> Path:
        found = sorted(self.run_dir.glob(f"phases/*-{phase_id}"))
        assert len(found) == 1, f"expected one phase dir for {phase_id}, found {found}"
        return found[0]

    # -- actions ------------------------------------------------------------------------

    def start(self) -> Any:
        from pipeline.run.start import start_run

        return start_run(self.workspace, self.run_id)

    def git(self, *args: str, check: bool = True) -> str:
        """git in the target repository."""
        return git(self.repo, *args, check=check)

    # -- reading the record -------------------------------------------------------------

    def run_json(self) -> dict[str, Any]:
        return _json(self.store.run_json)

    def phase_json(self, phase_id: str) -> dict[str, Any]:
        return _json(self.phase_dir(phase_id) / "phase.json")

    def gate_json(self, phase_id: str) -> dict[str, Any]:
        return _json(self.phase_dir(phase_id) / "gate.json")

    def issues(self, phase_id: str) -> dict[str, Any]:
        return _json(self.phase_dir(phase_id) / "issues.json")

    def issue_keys(self, phase_id: str) -> set[str]:
        return {i["issue_key"] for i in self.issues(phase_id)["issues"]}

    def run_index(self) -> dict[str, Any]:
        return _json(self.store.issue_index_path)

    def attempt(self, phase_id: str, k: int) -> dict[str, Any]:
        return _json(self.phase_dir(phase_id) / "attempts" / str(k) / "builder.json")

    def events(self) -> list[dict[str, Any]]:
        text = self.store.events_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def commits_with_trailer(self, key: str, value: str, rev: str | None = None) -> list[str]:
        """Commits on the branch (newest first) whose trailer `key` has `value`."""
        out = self.git(
            "log", "--format=%H%x01%(trailers:key=" + key + ",valueonly,unfold)%x02",
            rev or self.branch, "--",
        )
        found = []
        for record in out.split("\x02"):
            sha, _, values = record.strip().partition("\x01")
            if sha and value in [v.strip() for v in values.splitlines()]:
                found.append(sha)
        return found


def _json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict), f"{path} is not a JSON object"
    return data


def make_workspace(
    root: Path,
    *,
    files: Mapping[str, str] | None = None,
    links: Mapping[str, str] | None = None,
    agent_body: str | None = None,
    builder: Mapping[str, Any] | None = None,
    builder_timeout_s: int | None = None,
    phases: Sequence[Mapping[str, Any]] | None = None,
    tiers: Sequence[Mapping[str, Any]] | None = None,
    ci_steps: Sequence[Mapping[str, Any]] | None = None,
    target_separate: bool = True,
    run_id: str = DEFAULT_RUN_ID,
    base: str | None = "main",
) -> RunSetup:
    """A target repository with `files` on `main` and a workspace with a plan for `run_id`.

    - `target_separate=True`: the repository is `root/repo`, the workspace `root/workspace`
      (not a git repository); the plan's `target.repo` is the repository's absolute path.
    - `target_separate=False`: the workspace `root/workspace` is itself the repository
      (default target "."), with `WORKSPACE_GITIGNORE` committed; the plan is written
      after the initial commit, so it is untracked on `main`.

    `links` maps repository paths to symlink targets, committed on `main` after `files`.
    The builder is `agent_body` (a script under `root/agents/`, see `AGENT_PRELUDE`) or an
    explicit `builder` spec; `builder_timeout_s` sets its `timeout_s`. Phases default to
    one phase `P1`; CI steps default to one step that always passes.
    """
    root = Path(root)
    files = dict(files or {"README.md": "sample\n"})
    if target_separate:
        repo = make_repo(root / "repo", files)
        workspace = root / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        repo_field = str(repo)
    else:
        repo = make_repo(root / "workspace", {".gitignore": WORKSPACE_GITIGNORE, **files})
        workspace = repo
        repo_field = "."
    if links:
        for rel, target in links.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).symlink_to(target)
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "add symlinks")
    agent: Path | None = None
    spec: dict[str, Any] | None = dict(builder) if builder is not None else None
    if agent_body is not None:
        agent = write_agent(root / "agents" / f"{run_id}-agent.py", agent_body)
        spec = {"command": command(agent), **(spec or {})}
    if spec is not None and builder_timeout_s is not None:
        spec["timeout_s"] = builder_timeout_s
    plan = plan_dict(
        run_id,
        repo=repo_field,
        builder=spec,
        phases=phases or [phase("P1")],
        ci_steps=ci_steps or [python_step("ok", "pass")],
        base=base,
        tiers=tiers,
    )
    plan_path = RunStore(workspace, run_id).plan_path
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(dump_new(plan, header=f"plan of test run {run_id}"))
    return RunSetup(workspace=workspace, repo=repo, run_id=run_id, agent=agent)


def cli(setup: RunSetup, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ...` in the workspace, as a CI job would run it."""
    return subprocess.run(
        [PY, "-m", "pipeline", *args],
        cwd=setup.workspace,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
