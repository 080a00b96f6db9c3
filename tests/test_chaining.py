"""A plan longer than max_phases is split into chained runs by tier, stacked branches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.errors import InvalidInput
from pipeline.models.enums import RunState
from pipeline.run.driver import run_to_end
from testing.runs import make_workspace, phase

AGENT = 'write(f"{PHASE}.txt", f"{PHASE}\\n")\nresult(status="success")'


def _tiers(sizes: list[int]) -> list[dict[str, object]]:
    tiers = []
    for t, size in enumerate(sizes, start=1):
        tiers.append(
            {"tier_id": f"T{t}", "name": f"Tier {t}", "phases": [phase(f"P{t}.{n}") for n in range(1, size + 1)]}
        )
    return tiers


def _with_max_phases(setup_plan: Path, cap: int) -> None:
    text = setup_plan.read_text()
    setup_plan.write_text(
        text.replace("run_scope: multi_tier\n", f"run_scope: multi_tier\nbudgets:\n  max_phases: {cap}\n")
    )


def test_long_plan_becomes_chained_runs_on_stacked_branches(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, agent_body=AGENT, tiers=_tiers([2, 1, 2]))
    _with_max_phases(setup.plan_path, 2)
    original = setup.plan_path.read_text()
    setup.start()

    # The first run keeps T1 (its comments too); T2 and T3 become two chained runs.
    assert (
        "T2" not in setup.plan_path.read_text()
        and original.splitlines()[0] == setup.plan_path.read_text().splitlines()[0]
    )
    part2 = setup.workspace / "runs/r1-part2/plan.yaml"
    part3 = setup.workspace / "runs/r1-part3/plan.yaml"
    assert "base: autonomous/r1\n" in part2.read_text() and "chained_from: r1" in part2.read_text()
    assert "base: autonomous/r1-part2\n" in part3.read_text()
    assert setup.run_json()["chain_next"] == "r1-part2"

    outcomes = run_to_end(setup.workspace, setup.run_id)

    assert outcomes[-1].run_id == "r1-part3" and outcomes[-1].run_state == RunState.DONE_SUCCESS
    states = {
        run: json.loads((setup.workspace / f"runs/{run}/run.json").read_text())["state"]
        for run in ("r1", "r1-part2", "r1-part3")
    }
    assert set(states.values()) == {"DONE_SUCCESS"}
    # Each branch stacks on the previous: the last one holds every phase's file.
    files = setup.git("ls-tree", "--name-only", "autonomous/r1-part3").split()
    assert {"P1.1.txt", "P1.2.txt", "P2.1.txt", "P3.1.txt", "P3.2.txt"} <= set(files)
    assert setup.git("merge-base", "--is-ancestor", "autonomous/r1", "autonomous/r1-part2", check=False) == ""
    child = json.loads((setup.workspace / "runs/r1-part2/run.json").read_text())
    assert child["chained_from"] == "r1" and child["base_ref"] == "autonomous/r1"


def test_a_failed_run_does_not_start_its_chained_run(tmp_path: Path) -> None:
    agent = 'import sys\nif PHASE == "P1.1":\n    sys.exit(3)\nwrite("x.txt", "x\\n")'
    setup = make_workspace(tmp_path, agent_body=agent, tiers=_tiers([1, 1]))
    _with_max_phases(setup.plan_path, 1)
    setup.start()
    outcomes = run_to_end(setup.workspace, setup.run_id)
    assert outcomes[-1].run_id == "r1" and outcomes[-1].run_state.terminal
    assert outcomes[-1].run_state != RunState.DONE_SUCCESS
    assert not (setup.workspace / "runs/r1-part2/run.json").exists()
    assert (setup.workspace / "runs/r1-part2/plan.yaml").exists()


def test_a_tier_larger_than_max_phases_is_refused(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, agent_body=AGENT, tiers=_tiers([3]))
    _with_max_phases(setup.plan_path, 2)
    with pytest.raises(InvalidInput, match="tier T1 alone has 3 phases; max_phases is 2"):
        setup.start()
    assert not (setup.run_dir / "run.json").exists()


def test_the_start_commit_carries_the_chained_plans_when_the_record_lives_in_the_branch(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, agent_body=AGENT, tiers=_tiers([1, 1, 1]), target_separate=False)
    _with_max_phases(setup.plan_path, 1)
    setup.start()
    for part in ("r1-part2", "r1-part3"):
        on_branch = setup.git("show", f"{setup.branch}:runs/{part}/plan.yaml")
        assert on_branch == (setup.workspace / f"runs/{part}/plan.yaml").read_text().rstrip("\n")
