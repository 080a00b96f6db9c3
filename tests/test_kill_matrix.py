"""Killed at any moment, a run resumes to the same result (crash safety, issue 12).

Each case kills `python -m pipeline run` at one step boundary (a named failpoint, which
dies exactly like kill -9) or SIGKILLs its whole process group while the agent or CI
runs, then reruns it. The rerun must reach what an uninterrupted run reaches: the same
trees, exactly one commit and one tag per phase, a valid record (`validate` clean, the
event chain intact), no stray worktree, no lock left held and no process left running.

The plan is two one-phase tiers with `max_phases: 1`, so every case is also a chained
run: r1 (P1) and, started when r1 succeeds, r1-part2 (P2) on top of it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.store.events import EventLog
from pipeline.store.rundir import RunStore
from testing.procs import alive, kill_all
from testing.runs import RunSetup, cli, make_workspace, phase, python_step

RUNS = {"r1": "P1", "r1-part2": "P2"}
AGENT = 'write(f"{PHASE}.py", f"DONE = {PHASE!r}\\n")\nresult(status="success", usage={"tokens_in": 10})'
CI = [python_step("import", "import mod")]


def chained_workspace(root: Path, agent_body: str = AGENT, ci: list[dict[str, object]] | None = None) -> RunSetup:
    tiers = [{"tier_id": f"T{n}", "name": f"Tier {n}", "phases": [phase(f"P{n}")]} for n in (1, 2)]
    setup = make_workspace(root, files={"mod.py": "X = 1\n"}, agent_body=agent_body, tiers=tiers, ci_steps=ci or CI)
    text = setup.plan_path.read_text()
    capped = text.replace("run_scope: multi_tier\n", "run_scope: multi_tier\nbudgets:\n  max_phases: 1\n")
    setup.plan_path.write_text(capped)
    setup.start()
    return setup


def result_of(setup: RunSetup) -> dict[str, object]:
    """What a finished chained run is, independent of how it got there."""
    found: dict[str, object] = {}
    for run_id, phase_id in RUNS.items():
        run = json.loads((setup.workspace / "runs" / run_id / "run.json").read_text())
        branch = f"autonomous/{run_id}"
        tag = f"{branch}/{phase_id}"
        commits = setup.commits_with_trailer("Autopack-Phase", phase_id, branch)
        found[run_id] = {
            "state": run["state"],
            "commits": len(commits),
            "tags": setup.git("tag", "--list", f"{branch}/*").split(),
            "tree": setup.git("rev-parse", f"{tag}^{{tree}}"),
            "tag_is_commit": setup.git("rev-parse", f"{tag}^{{commit}}") == commits[0],
        }
        EventLog(setup.workspace / "runs" / run_id / "events.jsonl").verify(run["events_count"], run["events_head"])
    found["worktrees"] = len(setup.git("worktree", "list", "--porcelain").split("\n\n"))
    return found


def assert_clean_after(setup: RunSetup) -> None:
    for run_id in RUNS:
        checked = cli(setup, "validate", "--run", run_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        lock = RunStore(setup.workspace, run_id).lock_path
        assert not lock.exists() or lock.read_text() == "", f"{lock} still names a holder"
        with RunStore(setup.workspace, run_id).lock():
            pass
    assert not list(setup.workspace.glob("runs/**/.*.tmp.*")), "a temp file of an atomic write was left"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The uninterrupted run."""
    setup = chained_workspace(tmp_path_factory.mktemp("reference"))
    done = cli(setup, "run", "--run", "r1")
    assert done.returncode == 0, done.stdout + done.stderr
    return result_of(setup)


BOUNDARIES = [
    "before_agent",
    "after_agent",
    "gate_entered",
    "after_gate",
    "ci_entered",
    "after_ci",
    "after_snapshot_commit",
    "after_tag",
    "after_complete",
    "chained_start",
    "event_appended@1",
    "event_appended@6",
    "atomic_write@9",
    "atomic_write@29",
]


@pytest.mark.parametrize("failpoint", BOUNDARIES)
def test_a_rerun_after_a_kill_at_a_step_boundary_converges(
    tmp_path: Path, failpoint: str, reference: dict[str, object]
) -> None:
    setup = chained_workspace(tmp_path)
    crashed = cli(setup, "run", "--run", "r1", env={"AUTOPACK_FAILPOINT": failpoint})
    assert crashed.returncode == 137, f"{failpoint} was not reached: {crashed.stdout}{crashed.stderr}"
    rerun = cli(setup, "run", "--run", "r1")
    if rerun.returncode != 0 and not (setup.workspace / "runs/r1-part2/run.json").exists():
        pytest.fail(rerun.stdout + rerun.stderr)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Traceback" not in rerun.stderr
    assert result_of(setup) == reference
    assert_clean_after(setup)


def test_a_kill_after_any_run_event_and_before_run_json_converges(tmp_path: Path) -> None:
    """run.json is written after the event that changes the run: killed in between, the log
    is ahead of run.json, and the rerun takes the run's state from the log. (Found by the
    soak: killed after CI_RUNNING -> SNAPSHOT_CREATED was logged, a rerun completed the phase
    and then tried CI_RUNNING -> DONE_SUCCESS, exit 3.)"""

    def one_phase(root: Path) -> RunSetup:
        setup = make_workspace(root, files={"mod.py": "X = 1\n"}, agent_body=AGENT, phases=[phase("P1")])
        setup.start()
        return setup

    reference = one_phase(tmp_path / "reference")
    started = len(reference.events())
    assert cli(reference, "run", "--run", reference.run_id).returncode == 0
    run_events = [e["seq"] - started for e in reference.events()[started:] if e["kind"] == "run"]
    assert len(run_events) >= 5
    for n in run_events:
        setup = one_phase(tmp_path / f"killed-{n}")
        crashed = cli(setup, "run", "--run", setup.run_id, env={"AUTOPACK_FAILPOINT": f"event_appended@{n}"})
        assert crashed.returncode == 137, f"event {n} was not reached"
        rerun = cli(setup, "run", "--run", setup.run_id)
        assert rerun.returncode == 0, f"killed after run event {n}: {rerun.stdout}{rerun.stderr}"
        assert setup.run_json()["state"] == "DONE_SUCCESS"
        assert len(setup.commits_with_trailer("Autopack-Phase", "P1")) == 1
        assert setup.git("rev-parse", f"{setup.tag('P1')}^{{commit}}") == setup.phase_json("P1")["commit"]
        checked = cli(setup, "validate", "--run", setup.run_id)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_promote_killed_between_merge_and_record_merges_once(tmp_path: Path) -> None:
    setup = chained_workspace(tmp_path)
    assert cli(setup, "run", "--run", "r1").returncode == 0
    crashed = cli(setup, "promote", "--run", "r1", env={"AUTOPACK_FAILPOINT": "promote_merged"})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    rerun = cli(setup, "promote", "--run", "r1")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    merges = setup.commits_with_trailer("Autopack-Run", "r1", "main")
    assert len(setup.git("rev-list", "--merges", "main").split()) == 1, "merged exactly once"
    run = json.loads((setup.workspace / "runs/r1/run.json").read_text())
    assert run["promoted_commit"] == setup.git("rev-parse", "main") and merges
    assert_clean_after(setup)


# -- SIGKILL of the whole supervisor while a child runs -------------------------------------

# The first time, the agent (or the CI step) starts a helper that keeps writing into the
# worktree, records both pids, then hangs; on the rerun it does its work at once.
HANG_ONCE = """
import pathlib, subprocess, sys, time
flag = pathlib.Path({flag!r})
if not flag.exists():
    helper = subprocess.Popen([sys.executable, "-c", "import pathlib, time\\nfor i in range(600):\\n"
        "    pathlib.Path('stray.txt').write_text(str(i)); time.sleep(0.05)"])
    flag.write_text(f"{{__import__('os').getpid()}} {{helper.pid}}")
    time.sleep(60)
"""


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    pids: list[int] = []
    yield pids
    kill_all(pids)


def kill_when(setup: RunSetup, flag: Path, leftovers: list[int]) -> None:
    """Start `run`, wait until the child wrote `flag`, SIGKILL the supervisor's process group."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--run", "r1"],
        cwd=setup.workspace, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while not (flag.exists() and len(flag.read_text().split()) == 2):
        assert proc.poll() is None and time.monotonic() < deadline, "the child never started"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers.extend(int(p) for p in flag.read_text().split())
    assert all(alive(p) for p in leftovers), "the child runs in its own session and outlived the supervisor"


@pytest.mark.parametrize("where", ["agent", "ci"])
def test_sigkill_of_the_process_group_while_a_child_runs(
    tmp_path: Path, where: str, reference: dict[str, object], leftovers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the sandbox: a killed attempt's strays are ended before the rerun starts.
    (Under bubblewrap they cannot outlive the supervisor at all: bwrap dies with its parent
    and takes its PID namespace along; tests/test_sandbox.py proves that side.)"""
    monkeypatch.setenv("AUTOPACK_SANDBOX", "off")
    flag = tmp_path / "hung-once"
    hang = HANG_ONCE.format(flag=str(flag))
    if where == "agent":
        setup = chained_workspace(tmp_path, agent_body=hang + AGENT)
    else:
        setup = chained_workspace(tmp_path, ci=[python_step("import", hang + "import mod")])
    kill_when(setup, flag, leftovers)

    rerun = cli(setup, "run", "--run", "r1")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert not any(alive(p) for p in leftovers), "the rerun started while the killed attempt's processes ran"
    assert result_of(setup) == reference, "the stray helper wrote into the rerun's snapshot"
    taken = [e for e in setup.events() if e["data"].get("what") == "lock_taken_over"]
    assert len(taken) == 1 and set(taken[0]["data"]["killed"]) >= set(leftovers)
    assert_clean_after(setup)


# -- a seeded random-kill soak ---------------------------------------------------------------


def test_random_kills_over_a_chained_run_converge(tmp_path: Path, reference: dict[str, object]) -> None:
    """SIGKILL the whole process group at seeded random moments, 12 times, then let the run
    finish: the same result as the uninterrupted run. AUTOPACK_SOAK_SEED picks another seed."""
    seed = int(os.environ.get("AUTOPACK_SOAK_SEED", "1204"))
    rng = random.Random(seed)
    setup = chained_workspace(tmp_path)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--run", "r1"],
            cwd=setup.workspace, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=rng.uniform(0.1, 0.9) if attempt < 12 else 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            kills += 1
            continue
        assert proc.returncode == 0, f"seed {seed}, after {kills} kills: {err}"
        if attempt >= 12:
            break
    print(f"soak seed {seed}: done after {kills} kills")
    assert kills >= 3, f"seed {seed}: too few kills to mean anything"
    assert result_of(setup) == reference, f"seed {seed}, {kills} kills"
    assert_clean_after(setup)
