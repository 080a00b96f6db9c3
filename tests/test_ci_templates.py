"""The CI job templates of `doit init_ci` (README.md, In CI): their structure, and the exact shell
they run, executed here job by job against a local bare repository acting as the remote.

Each job is a fresh `git clone` of the remote, as a CI runner makes it. The provider's own
parts are emulated from what the template asks for: `actions/checkout` (its `ref`) and the
GitLab runner's detached checkout, the step outputs / dotenv file, and the dispatch of the
next job: `gh` and `curl` are small recording scripts on PATH (the network boundary), and
the next job runs when the template called them with the run id. Everything else (git,
doit, the supervisor, the agent, the CI step, the push with its lease) is real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pipeline.commands.init_ci import PROVIDERS, template_text
from pipeline.core.yamlio import dump_new, load_fast
from testing.gitrepo import git, make_repo, write_script
from testing.runs import command, phase, plan_dict, python_step, write_agent

BIN = Path(sys.executable).parent
DOIT = BIN / "doit"
RUN = "ci1"
BRANCH = f"autonomous/{RUN}"
GITHUB_FILE = ".github/workflows/autopack.yml"
GITLAB_FILE = ".gitlab-ci.yml"

_NEEDS_DOIT = pytest.mark.skipif(
    not DOIT.exists(), reason="the doit console script is not installed beside this python"
)

# -- the structure each provider requires (no schema download: checked here) ---------------

_USES = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[A-Za-z0-9_.-]+$")
_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_GITLAB_KEYWORDS = {"stages", "variables", "default", "workflow", "include", "image", "services", "cache"}

# The scripted agents coordinate the jobs through files outside their worktrees (a hold
# directory): the sandbox forbids that, so these jobs run with the fallback
# (tests/test_sandbox.py covers the sandbox).
pytestmark = [_NEEDS_DOIT, pytest.mark.usefixtures("unsandboxed")]


def _github() -> dict[str, Any]:
    doc = load_fast_text(template_text("github"))
    assert isinstance(doc, dict)
    return doc


def _gitlab() -> dict[str, Any]:
    doc = load_fast_text(template_text("gitlab"))
    assert isinstance(doc, dict)
    return doc


def load_fast_text(text: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yml"
        path.write_text(text)
        return load_fast(path)


def test_the_github_workflow_has_the_structure_actions_requires() -> None:
    wf = _github()
    # "on" is quoted: a YAML 1.1 reader (PyYAML, some linters) takes a bare `on` for true.
    assert "on" in wf and all(isinstance(key, str) for key in wf)
    dispatch = wf["on"]["workflow_dispatch"]["inputs"]["run"]
    assert dispatch["required"] is True and dispatch["type"] == "string"
    assert wf["on"]["push"]["paths"] == ["runs/*/plan.yaml"]
    assert wf["on"]["push"]["branches-ignore"] == ["autonomous/**"]
    assert wf["permissions"] == {"contents": "write", "actions": "write"}
    assert set(wf["jobs"]) == {"plan", "step", "promote"}
    for name, job in wf["jobs"].items():
        assert isinstance(job["runs-on"], str), name
        assert isinstance(job["steps"], list) and job["steps"], name
        ids = [s["id"] for s in job["steps"] if "id" in s]
        assert len(ids) == len(set(ids)), name
        for step in job["steps"]:
            assert ("uses" in step) != ("run" in step), f"{name}: a step has exactly one of uses/run: {step}"
            if "uses" in step:
                assert _USES.match(step["uses"]), step["uses"]
            else:
                assert isinstance(step["run"], str) and step.get("shell") == "bash", step
                # Inputs reach the shell through env, never spliced into the script.
                assert not _EXPR.search(step["run"]), step["run"]
            if "if" in step:
                for ref in re.findall(r"steps\.([\w-]+)\.outputs\.(\w+)", step["if"]):
                    assert ref[0] in ids, f"{name}: `if` names an unknown step {ref[0]}"
    step = wf["jobs"]["step"]
    assert step["concurrency"] == {"group": "autopack-${{ inputs.run }}", "cancel-in-progress": False}
    assert step["env"]["AUTOPACK_RUN"] == "${{ inputs.run }}"
    scripts = [s["run"] for s in step["steps"] if "run" in s]
    assert sum(s.count("doit run_phase") for s in scripts) == 1  # one run_phase per job
    assert wf["jobs"]["promote"]["needs"] == "step"
    promote_runs = [s["run"].strip() for s in wf["jobs"]["promote"]["steps"] if "run" in s]
    assert 'doit promote --run "$AUTOPACK_RUN" --check' in promote_runs


def _gitlab_job(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """A job with its `extends` template merged in (top-level keys, as GitLab does)."""
    job = dict(doc[name])
    base = job.pop("extends", None)
    if base is None:
        return job
    assert isinstance(base, str) and base.startswith(".") and base in doc, f"{name}: extends {base}"
    return {**_gitlab_job(doc, base), **job}


def test_the_gitlab_pipeline_has_the_structure_gitlab_requires() -> None:
    doc = _gitlab()
    assert doc["stages"] == ["plan", "run", "promote"]
    jobs = [k for k in doc if k not in _GITLAB_KEYWORDS and not k.startswith(".")]
    assert set(jobs) == {"autopack-plan", "autopack-step", "autopack-promote"}
    for name in jobs:
        job = _gitlab_job(doc, name)
        assert job["stage"] in doc["stages"], name
        assert isinstance(job["script"], list) and all(isinstance(s, str) for s in job["script"]), name
        assert isinstance(job["rules"], list) and all("if" in r for r in job["rules"]), name
        for need in job.get("needs", []):
            assert need["job"] in jobs, name
    assert doc["variables"]["AUTOPACK_RUN"]["value"] == ""
    assert doc["variables"]["GIT_DEPTH"] == "0"
    step = _gitlab_job(doc, "autopack-step")
    assert step["resource_group"] == "autopack-$AUTOPACK_RUN"
    assert step["artifacts"]["reports"]["dotenv"] == "autopack.env"
    assert step["artifacts"]["when"] == "always"
    assert sum(s.count("doit run_phase") for s in step["script"]) == 1
    assert 'doit promote --run "$AUTOPACK_RUN" --check' in _gitlab_job(doc, "autopack-promote")["script"][0]


def test_both_providers_run_the_same_step_script() -> None:
    github = next(s["run"] for s in _github()["jobs"]["step"]["steps"] if s.get("id") == "step")
    gitlab = _gitlab_job(_gitlab(), "autopack-step")["script"][1]
    assert github == gitlab


def test_init_ci_writes_once_and_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _run([sys.executable, "-m", "pipeline", "init"], tmp_path).returncode == 0  # dodo.py for doit
    for alias, provider in (("init_ci", "github"), ("init-ci", "gitlab")):
        done = _run([str(DOIT), alias, "--provider", provider], tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        path = tmp_path / PROVIDERS[provider].default_path
        assert path.read_text() == template_text(provider)
        again = _run([str(DOIT), alias, "--provider", provider], tmp_path)
        assert again.returncode == 2
        assert f"{path} already exists; init_ci never overwrites a file" in again.stderr
        assert path.read_text() == template_text(provider)
    other = _run(
        [sys.executable, "-m", "pipeline", "init_ci", "--provider", "gitlab", "--output", "ci/a.yml"], tmp_path
    )
    assert other.returncode == 0 and (tmp_path / "ci" / "a.yml").read_text() == template_text("gitlab")
    bad = _run([sys.executable, "-m", "pipeline", "init_ci", "--provider", "jenkins"], tmp_path)
    assert bad.returncode == 2 and "unknown CI provider 'jenkins'" in bad.stderr and "github, gitlab" in bad.stderr


# -- running the templates' shell ------------------------------------------------------------


def _run(argv: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=dict(env or os.environ), capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Project:
    """The remote, the stubs, and everything the emulated CI needs."""

    root: Path
    remote: Path
    provider: str
    before: str
    head: str
    calls: Path
    hold: Path
    jobs: int = 0
    dirs: list[Path] = field(default_factory=list)
    run: str = RUN  # the run id the next dispatched job is for

    def env(self) -> dict[str, str]:
        path = os.pathsep.join([str(self.root / "stubs"), str(BIN), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path, "STUB_CALLS": str(self.calls)}

    def clone(self, name: str) -> Path:
        self.jobs += 1
        where = self.root / "jobs" / f"{self.jobs:02d}-{name}"
        where.parent.mkdir(exist_ok=True)
        git(self.root, "clone", "-q", str(self.remote), str(where))
        self.dirs.append(where)
        return where

    def dispatched(self) -> list[str]:
        """Run ids the template dispatched since the last look (gh workflow run / curl)."""
        if not self.calls.exists():
            return []
        found = []
        for line in self.calls.read_text().splitlines():
            argv = json.loads(line)
            for arg in argv:
                for pattern in (r"^run=(.+)$", r"^variables\[AUTOPACK_RUN\]=(.+)$"):
                    m = re.match(pattern, arg)
                    if m:
                        found.append(m.group(1))
        self.calls.unlink()
        return found


def _stub(path: Path, name: str) -> None:
    write_script(
        path / name,
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['STUB_CALLS'], 'a') as f:\n"
        f"    f.write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n",
    )


AGENT = """
hold = Path(HOLD) / Path.cwd().name
(Path(HOLD) / ("started-" + Path.cwd().name)).write_text("")
while hold.exists():
    time.sleep(0.05)
write(PHASE + ".txt", "done by " + PHASE + "\\n")
"""


def make_project(tmp_path: Path, provider: str, chained: bool = False) -> Project:
    """A developer repository adopting Autopack and its CI template, pushed to a bare
    remote: first main, then a plan (two phases, a scripted agent, a trivial CI step).

    `chained`: the two phases in two tiers with `max_phases: 1`, so start_run splits the
    plan into run RUN (P1) and its chained run RUN-part2 (P2)."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    dev = make_repo(tmp_path / "dev", {"README.md": "a project\n", ".gitignore": "__pycache__/\n"})
    for argv in (["init"], ["init_ci", "--provider", provider]):
        done = _run([sys.executable, "-m", "pipeline", *argv], dev)
        assert done.returncode == 0, done.stdout + done.stderr
    git(dev, "add", "-A")
    git(dev, "commit", "-q", "-m", "adopt autopack and its CI")
    git(dev, "remote", "add", "origin", str(remote))
    git(dev, "push", "-q", "origin", "main")
    before = git(dev, "rev-parse", "HEAD")

    hold = tmp_path / "hold"
    hold.mkdir()
    agent = write_agent(tmp_path / "agents" / "agent.py", f"HOLD = {str(hold)!r}\n" + AGENT)
    tiers = [{"tier_id": f"T{n}", "name": f"Tier {n}", "phases": [phase(f"P{n}")]} for n in (1, 2)] if chained else None
    plan = plan_dict(
        RUN,
        repo=".",
        builder={"command": command(agent)},
        phases=[phase("P1"), phase("P2")],
        ci_steps=[python_step("ok", "pass")],
        tiers=tiers,
    )
    if chained:
        plan["budgets"] = {"max_phases": 1}
    (dev / "runs" / RUN).mkdir(parents=True)
    (dev / "runs" / RUN / "plan.yaml").write_text(dump_new(plan, header="a run driven by CI"))
    git(dev, "add", "-A")
    git(dev, "commit", "-q", "-m", f"plan {RUN}")
    git(dev, "push", "-q", "origin", "main")
    for name in ("gh", "curl"):
        _stub(tmp_path / "stubs", name)
    return Project(tmp_path, remote, provider, before, git(dev, "rev-parse", "HEAD"), tmp_path / "calls.jsonl", hold)


@dataclass
class Job:
    """A prepared job: its clone, environment and the scripts it runs, in order."""

    clone: Path
    env: dict[str, str]
    scripts: list[tuple[str, str, str | None, dict[str, str]]]  # (id, script, `if` on an output, step env)
    outputs: Path
    values: dict[str, str] = field(default_factory=dict)  # GitHub: the expressions' values before the job


@dataclass
class JobResult:
    returncode: int
    outputs: dict[str, str]
    log: str


def _outputs(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _bash(script: str, cwd: Path, env: Mapping[str, str]) -> subprocess.Popen[str]:
    # GitHub's `shell: bash` and GitLab's bash executor both run scripts with -eo pipefail.
    file = cwd.parent / f"{cwd.name}-{abs(hash(script))}.sh"
    file.write_text(script)
    return subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(file)],
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# GitHub: what the runner substitutes for the expressions the template uses.
def _github_values(p: Project) -> dict[str, str]:
    return {
        "inputs.run": p.run,
        "github.event.before": p.before,
        "github.token": "test-token",
        "github.repository": "example/project",
        "vars.AUTOPACK_INSTALL": "autopack",
    }


def _subst(value: Any, values: Mapping[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        assert m.group(1) in values, f"the test does not know the expression ${{{{ {m.group(1)} }}}}"
        return values[m.group(1)]

    return _EXPR.sub(one, str(value))


def prepare_github(p: Project, job_name: str) -> Job:
    wf = _github()
    job = wf["jobs"][job_name]
    values = _github_values(p)
    clone = p.clone(job_name)
    outputs = clone.parent / f"{clone.name}.outputs"
    env = {**p.env(), "GITHUB_REF_NAME": "main", "GITHUB_SHA": p.head, "GITHUB_OUTPUT": str(outputs)}
    for level in (wf.get("env", {}), job.get("env", {})):
        env.update({k: _subst(v, values) for k, v in level.items()})
    scripts = []
    for step in job["steps"]:
        if step.get("uses", "").startswith("actions/checkout@"):
            ref = _subst(step.get("with", {}).get("ref", ""), values)
            if ref:  # a branch: checked out as a local branch tracking the remote one
                git(clone, "checkout", "-q", "-B", ref, f"origin/{ref}")
            assert step["with"]["fetch-depth"] == 0  # the supervisor needs the history
        elif "uses" in step:
            assert step["uses"].startswith("actions/setup-python@")  # this python is already set up
        elif step["id"] == "install":
            assert "pip install" in step["run"] and "AUTOPACK_INSTALL" in step["run"]  # installed: the venv
        else:
            # Substituted when the step runs: it may name an earlier step's outputs.
            scripts.append(
                (step["id"], step["run"], step.get("if"), {k: str(v) for k, v in step.get("env", {}).items()})
            )
    return Job(clone, env, scripts, outputs, values)


def prepare_gitlab(p: Project, job_name: str, dotenv: Mapping[str, str] | None = None) -> Job:
    doc = _gitlab()
    job = _gitlab_job(doc, job_name)
    clone = p.clone(job_name)
    git(clone, "checkout", "-q", "--detach", p.head)  # the runner checks out the pipeline's sha
    predefined = {
        "CI_COMMIT_REF_NAME": "main",
        "CI_COMMIT_BRANCH": "main",
        "CI_COMMIT_SHA": p.head,
        "CI_COMMIT_BEFORE_SHA": p.before,
        "CI_JOB_TOKEN": "test-token",
        "CI_API_V4_URL": "https://gitlab.invalid/api/v4",
        "CI_PROJECT_ID": "7",
    }
    env = {**p.env(), **predefined}
    for name, var in doc["variables"].items():
        env[name] = var["value"] if isinstance(var, dict) else str(var)
    if job_name != "autopack-plan":
        env["AUTOPACK_RUN"] = p.run  # the triggered pipeline's variable
    for name, value in job.get("variables", {}).items():
        env[name] = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], str(value))
    env.update(dotenv or {})
    if "before_script" in job:
        assert "pip install" in job["before_script"][0] and "AUTOPACK_INSTALL" in job["before_script"][0]
        assert "git remote set-url --push origin" in job["before_script"][1]  # the push token: not here
    outputs = clone / "autopack.env"
    return Job(clone, env, [(job_name, "\n".join(job["script"]), None, {})], outputs)


def run_job(job: Job) -> JobResult:
    """The job's scripts in order; a failed one ends the job (no later step runs)."""
    log, outputs = "", dict[str, str]()
    done: list[str] = []  # the ids of the steps run so far
    for step_id, script, condition, step_env in job.scripts:
        if condition is not None:
            m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.(\w+) (==|!=) '(\w*)'", condition)
            assert m, f"the test does not know the condition {condition!r}"
            assert m.group(1) in done, f"the condition {condition!r} names a step that has not run"
            if (outputs.get(m.group(2), "") == m.group(4)) != (m.group(3) == "=="):
                continue
        values = {**job.values, **{f"steps.{s}.outputs.{k}": v for s in done for k, v in outputs.items()}}
        step_env = {k: _subst(v, values) for k, v in step_env.items()}
        proc = _bash(script, job.clone, {**job.env, **step_env})
        out, _ = proc.communicate(timeout=120)
        log += f"--- {step_id}\n{out}"
        outputs.update(_outputs(job.outputs))
        done.append(step_id)
        if proc.returncode != 0:
            return JobResult(proc.returncode, outputs, log)
    return JobResult(0, outputs, log)


def remote_git(p: Project, *args: str) -> str:
    return git(p.remote, *args)


def prepare(p: Project, job: str, dotenv: Mapping[str, str] | None = None) -> Job:
    names = {
        "github": {"plan": "plan", "step": "step", "promote": "promote"},
        "gitlab": {"plan": "autopack-plan", "step": "autopack-step", "promote": "autopack-promote"},
    }
    name = names[p.provider][job]
    return prepare_github(p, name) if p.provider == "github" else prepare_gitlab(p, name, dotenv)


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_the_template_drives_a_run_one_phase_per_job_across_fresh_clones(tmp_path: Path, provider: str) -> None:
    p = make_project(tmp_path, provider)
    main_before = remote_git(p, "rev-parse", "main")

    # The push of the plan: the plan job dispatches the run's first job.
    planned = run_job(prepare(p, "plan"))
    assert planned.returncode == 0, planned.log
    queue = p.dispatched()
    assert queue == [RUN], planned.log

    results: list[tuple[Path, JobResult]] = []
    while queue:
        assert queue.pop(0) == RUN
        assert len(results) < 5, "the run should need three jobs: start, P1, P2"
        job = prepare(p, "step")
        result = run_job(job)
        assert result.returncode == 0, result.log
        results.append((job.clone, result))
        queue += p.dispatched()
    assert [r.outputs["AUTOPACK_STATE"] for _c, r in results] == ["PHASE_QUEUEING", "PHASE_QUEUEING", "DONE_SUCCESS"]
    assert [r.outputs["AUTOPACK_NEXT"] for _c, r in results] == ["true", "true", "false"]
    assert results[-1][1].outputs["AUTOPACK_TERMINAL"] == "true"

    # The phase jobs worked in place: no second worktree in their fresh clones.
    assert (results[0][0] / ".autopack" / "worktrees" / RUN).is_dir()  # start_run, on main
    for clone, _r in results[1:]:
        assert not (clone / ".autopack" / "worktrees").exists()
        assert git(clone, "rev-parse", "--abbrev-ref", "HEAD") == BRANCH
        assert git(clone, "status", "--porcelain", "--", ".", ":!autopack.env") == ""  # the record is committed

    # The remote holds the whole run: code, tags, and the record as it ended.
    run_json = json.loads(remote_git(p, "show", f"{BRANCH}:runs/{RUN}/run.json"))
    assert run_json["state"] == "DONE_SUCCESS" and run_json["promotion_eligible_to_main"] is True
    for phase_id in ("P1", "P2"):
        tagged = remote_git(p, "rev-parse", f"{BRANCH}/{phase_id}^{{commit}}")
        assert remote_git(p, "show", f"{tagged}:{phase_id}.txt") == f"done by {phase_id}"
        assert remote_git(p, "cat-file", "-e", f"{tagged}:runs/{RUN}/run.json") == ""
    assert remote_git(p, "rev-parse", "main") == main_before  # the base branch is never written

    # The promotion job prints the recorded verdict.
    promoted = run_job(prepare(p, "promote", results[-1][1].outputs))
    assert promoted.returncode == 0, promoted.log
    assert f"run {RUN} is eligible for promotion to main" in promoted.log
    assert p.dispatched() == []


def test_two_jobs_from_the_same_sha_cannot_both_push(tmp_path: Path) -> None:
    p = make_project(tmp_path, "github")
    start = run_job(prepare(p, "step"))
    assert start.returncode == 0, start.log
    p.dispatched()
    started = remote_git(p, "rev-parse", BRANCH)

    jobs = [prepare(p, "step"), prepare(p, "step")]
    for job in jobs:
        (p.hold / job.clone.name).write_text("")
    procs = [_bash(job.scripts[0][1], job.clone, {**job.env, **job.scripts[0][3]}) for job in jobs]
    deadline = time.monotonic() + 60
    while not all((p.hold / f"started-{job.clone.name}").exists() for job in jobs):
        assert time.monotonic() < deadline, "both agents should be running"
        time.sleep(0.05)
    # Both jobs read the branch at the same sha; the first to finish pushes.
    (p.hold / jobs[0].clone.name).unlink()
    first_out, _ = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 0, first_out
    first = git(jobs[0].clone, "rev-parse", BRANCH)
    assert first != started and remote_git(p, "rev-parse", BRANCH) == first

    (p.hold / jobs[1].clone.name).unlink()
    second_out, _ = procs[1].communicate(timeout=120)
    assert procs[1].returncode == 1, second_out
    assert "stale info" in second_out
    second = git(jobs[1].clone, "rev-parse", BRANCH)
    assert second != first
    assert remote_git(p, "rev-parse", BRANCH) == first  # the first job's work stands
    tagged = remote_git(p, "rev-parse", f"{BRANCH}/P1^{{commit}}")
    assert remote_git(p, "merge-base", "--is-ancestor", tagged, first) == ""  # --atomic: not the loser's tag
    assert "AUTOPACK_NEXT" not in _outputs(jobs[1].outputs)  # the loser queues nothing


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_a_chained_run_starts_when_the_run_before_it_succeeds(tmp_path: Path, provider: str) -> None:
    """A plan longer than max_phases: start_run splits it into RUN and RUN-part2, as `doit run`
    drives them the jobs do: RUN's last job starts RUN-part2, based on autonomous/RUN."""
    p = make_project(tmp_path, provider, chained=True)
    part2 = f"{RUN}-part2"
    main_before = remote_git(p, "rev-parse", "main")
    planned = run_job(prepare(p, "plan"))
    assert planned.returncode == 0, planned.log
    queue = p.dispatched()
    assert queue == [RUN], planned.log

    results: list[tuple[str, JobResult]] = []
    while queue:
        p.run = queue.pop(0)
        assert len(results) < 8, "the chain should need four jobs: start RUN, P1, start RUN-part2, P2"
        result = run_job(prepare(p, "step"))
        assert result.returncode == 0, result.log
        results.append((p.run, result))
        queue += p.dispatched()
    assert [(run, r.outputs["AUTOPACK_STATE"]) for run, r in results] == [
        (RUN, "PHASE_QUEUEING"),
        (RUN, "DONE_SUCCESS"),
        (part2, "PHASE_QUEUEING"),
        (part2, "DONE_SUCCESS"),
    ]
    assert [r.outputs["AUTOPACK_CHAIN"] for _run, r in results] == ["", part2, "", ""]
    assert [r.outputs["AUTOPACK_NEXT"] for _run, r in results] == ["true", "false", "true", "false"]

    # Both runs succeeded on the remote; the second is stacked on the first.
    first = json.loads(remote_git(p, "show", f"{BRANCH}:runs/{RUN}/run.json"))
    second = json.loads(remote_git(p, "show", f"autonomous/{part2}:runs/{part2}/run.json"))
    assert first["state"] == "DONE_SUCCESS" and first["chain_next"] == part2
    assert second["state"] == "DONE_SUCCESS" and second["chained_from"] == RUN
    assert second["base_ref"] == BRANCH and second["base_commit"] == remote_git(p, "rev-parse", BRANCH)
    assert remote_git(p, "merge-base", "--is-ancestor", BRANCH, f"autonomous/{part2}") == ""
    for phase_id, branch in (("P1", BRANCH), ("P2", f"autonomous/{part2}")):
        tagged = remote_git(p, "rev-parse", f"{branch}/{phase_id}^{{commit}}")
        assert remote_git(p, "show", f"{tagged}:{phase_id}.txt") == f"done by {phase_id}"
    assert remote_git(p, "show", f"autonomous/{part2}:P1.txt") == "done by P1"  # R's commits
    assert remote_git(p, "rev-parse", "main") == main_before  # the base branch is never written

    # The chained run's plan travelled on RUN's branch, committed by RUN's start job.
    assert "chained_from: " + RUN in remote_git(p, "show", f"{BRANCH}:runs/{part2}/plan.yaml")

    # Each run's promotion job prints its verdict: RUN-part2 promotes into the chain's base
    # (main), not into RUN's branch it was built on.
    for run, result in (results[1], results[-1]):
        p.run = run
        promoted = run_job(prepare(p, "promote", result.outputs))
        assert promoted.returncode == 0, promoted.log
        assert f"run {run} is eligible for promotion to main" in promoted.log

    # A second job ending RUN (a repeated dispatch) does not start RUN-part2 again.
    p.run = RUN
    again = run_job(prepare(p, "step"))
    assert again.outputs.get("AUTOPACK_CHAIN") == "", again.log
    assert p.dispatched() == []
