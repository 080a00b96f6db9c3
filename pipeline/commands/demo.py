"""`doit demo`: the whole pipeline on the embedded sample, in a temp dir.

The sample library is committed into a fresh git repository; a separate workspace holds
the run record (so the sample's working tree stays byte-for-byte untouched); the scripted
agent plays the builder. The demo checks its own promises and says so.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.commands.status import render_run, run_status
from pipeline.core.errors import StepFailed
from pipeline.core.jsonio import write_text_atomic
from pipeline.core.overrides import builtin_path
from pipeline.models.enums import RunState
from pipeline.reporting.inspect.page import PAGE
from pipeline.run.driver import run_to_end
from pipeline.run.start import start_run
from pipeline.vcs.local import LocalGitCli, init_repository

RUN_ID = "demo"
EXPECTED = {"P1.1": "COMPLETE", "P1.2": "COMPLETE", "P2.1": "COMPLETE", "P2.2": "FAILED"}
EXPECTED_STATE = RunState.DONE_FAILED_POLICY_VIOLATION


@dataclass(frozen=True)
class DemoResult:
    root: Path
    workspace: Path
    sample: Path
    state: RunState
    phase_states: dict[str, str]


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(root).parts
    }


def prepare(root: Path) -> tuple[Path, Path]:
    """The sample repository and a workspace whose plan targets it."""
    data = builtin_path("demo")
    sample = root / "textstats"
    shutil.copytree(data / "sample", sample, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    init_repository(sample, branch="main", message="textstats: initial sample")
    workspace = root / "workspace"
    (workspace / "runs" / RUN_ID).mkdir(parents=True)
    plan = (data / "plan.yaml").read_text()
    plan = (
        plan.replace("{python}", shlex.quote(sys.executable))
        .replace("{agent}", shlex.quote(str(data / "agent.py")))
        .replace("{repo}", str(sample))
    )
    write_text_atomic(workspace / "runs" / RUN_ID / "plan.yaml", plan)
    return sample, workspace


def run_demo(keep: bool = True, root: Path | None = None, quiet: bool = False) -> DemoResult:
    root = root or Path(tempfile.mkdtemp(prefix="autopack-demo-"))
    say = (lambda *_: None) if quiet else print
    sample, workspace = prepare(root)
    git = LocalGitCli(sample)
    base_before, tree_before = git.resolve("main"), _tree(sample)
    say(f"demo: sample repository {sample} (base branch main at {str(base_before)[:12]})")
    say(f"demo: workspace {workspace}; plan runs/{RUN_ID}/plan.yaml (2 tiers, 4 phases, scripted builder)")
    start_run(workspace, RUN_ID)
    for outcome in run_to_end(workspace, RUN_ID):
        say(f"  {outcome.message}")
    status = run_status(workspace, RUN_ID)
    say("")
    say(render_run(status))
    phase_states = {p["phase_id"]: p["state"] for p in status["phases"]}
    result = DemoResult(root, workspace, sample, RunState(status["state"]), phase_states)
    _check(result, git, base_before, tree_before, say)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _check(
    result: DemoResult, git: LocalGitCli, base_before: str | None, tree_before: dict[str, bytes], say: object
) -> None:
    problems = []
    if result.state != EXPECTED_STATE:
        problems.append(f"run ended {result.state.value}, expected {EXPECTED_STATE.value}")
    if result.phase_states != EXPECTED:
        problems.append(f"phase states {result.phase_states}, expected {EXPECTED}")
    if git.resolve("main") != base_before:
        problems.append("the sample's base branch moved")
    if _tree(result.sample) != tree_before:
        problems.append("the sample's working tree changed")
    for phase_id, state in EXPECTED.items():
        if state == "COMPLETE" and git.tag_target(f"autonomous/{RUN_ID}/{phase_id}") is None:
            problems.append(f"tag autonomous/{RUN_ID}/{phase_id} is missing")
    assert callable(say)
    if problems:
        raise StepFailed("the demo did not behave as designed: " + "; ".join(problems), f"inspect {result.root}")
    run_dir = result.workspace / "runs" / RUN_ID
    say("")
    say("demo: as designed —")
    say("  P1.1 passed first time; P1.2's first attempt broke a test, CI fed it back, attempt 2 passed;")
    say("  P2.1 passed; P2.2's patch wrote outside its scope and the gate stopped the run")
    say("  (DONE_FAILED_POLICY_VIOLATION, incident pack written, not eligible for promotion).")
    say(f"  three tagged commits on {git.repo}: branch autonomous/{RUN_ID}; base branch main untouched.")
    say(f"  run record: {run_dir} (RUN_SUMMARY.md, events.jsonl, phases/, incident/)")
    say(f"  inspect it: {run_dir / PAGE} (open it in a browser; it works offline)")
