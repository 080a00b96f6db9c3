"""The record bound to its event chain (pipeline.store.chain): forged or deleted files are
named with the event that disagrees; start_run adopts no foreign log or branch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.commands.validate import validate_run
from pipeline.core.errors import InvalidInput
from pipeline.run.driver import run_phase, run_to_end
from testing.runs import RunSetup, make_workspace, phase, python_step

FILES = {"mod.py": "X = 1\n"}
BODY = 'write("mod.py", f"X = 2  # {PHASE}\\n")'


def _two_phases(tmp_path: Path) -> RunSetup:
    return make_workspace(
        tmp_path, files=FILES, agent_body=BODY, phases=[phase("P1"), phase("P2")],
        ci_steps=[python_step("import", "import mod")],
    )


def _cli(setup: RunSetup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=setup.workspace, env=dict(os.environ),
        capture_output=True, text=True, timeout=300, check=False,
    )


def _forge(path: Path, **fields: object) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def test_a_forged_complete_phase_stops_the_run_with_exit_2(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.start()
    run_phase(setup.workspace, setup.run_id, "P1")
    forged = setup.phase_dir("P2") / "phase.json"
    _forge(forged, state="COMPLETE")
    done = _cli(setup, "run", "--run", setup.run_id)
    assert done.returncode == 2, done.stderr
    assert f"{forged}: state COMPLETE but the event log records no transition of phase P2" in done.stderr
    assert "Traceback" not in done.stderr
    assert setup.git("tag", "--list", f"autonomous/{setup.run_id}/P2") == ""
    problems = validate_run(setup.workspace, setup.run_id)
    assert any(str(forged) in p and "COMPLETE" in p for p in problems), problems


def test_a_state_against_its_last_event_names_both(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    p1 = setup.phase_dir("P1") / "phase.json"
    _forge(p1, state="FAILED")
    problems = validate_run(setup.workspace, setup.run_id)
    assert any(p.startswith(f"{p1}: state FAILED disagrees with event") and "COMPLETE" in p for p in problems)


def test_an_edited_artifact_is_named_with_its_event(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.start()
    strategy = setup.store.strategy_json
    data = json.loads(strategy.read_text())
    data["protected_paths"] = []
    strategy.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    problems = validate_run(setup.workspace, setup.run_id)
    assert any(p.startswith(f"{strategy}: sha256") and "event 1 (run r1 -> RUN_CREATED)" in p for p in problems)
    with pytest.raises(InvalidInput) as err:
        run_phase(setup.workspace, setup.run_id)
    assert "strategy.json" in err.value.message and err.value.exit_code == 2


@pytest.mark.parametrize("gone", ["strategy", "phase_dir"])
def test_deleted_files_fail_validate(tmp_path: Path, gone: str) -> None:
    import shutil

    setup = _two_phases(tmp_path)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    if gone == "strategy":
        setup.store.strategy_json.unlink()
        expected = str(setup.store.strategy_json)
    else:
        shutil.rmtree(setup.phase_dir("P1"))
        expected = "phase.json: missing; event"
    problems = validate_run(setup.workspace, setup.run_id)
    assert any(expected in p for p in problems), problems
    done = _cli(setup, "validate", "--run", setup.run_id)
    assert done.returncode == 2, done.stdout + done.stderr


def test_start_run_refuses_an_event_log_without_run_json(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.start()
    run_phase(setup.workspace, setup.run_id, "P1")
    setup.store.run_json.unlink()
    with pytest.raises(InvalidInput) as err:
        setup.start()
    assert str(setup.store.events_path) in err.value.message and "went past its start" in err.value.message
    assert len(setup.commits_with_trailer("Autopack-Phase", "P1")) == 1


def test_start_run_starts_over_after_a_crash_before_run_json(tmp_path: Path) -> None:
    """What a SIGKILL between the first start event and run.json leaves is started over."""
    setup = _two_phases(tmp_path)
    setup.start()
    lines = setup.store.events_path.read_text().splitlines(keepends=True)
    setup.store.run_json.unlink()
    setup.store.events_path.write_text(lines[0])  # the RUN_CREATED event only
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"


def test_start_run_refuses_a_branch_it_did_not_create(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.git("checkout", "-q", "-b", f"autonomous/{setup.run_id}")
    (setup.repo / "ungated.py").write_text("EVIL = 1\n")
    setup.git("add", "ungated.py")
    setup.git("commit", "-q", "-m", "ungated")
    setup.git("checkout", "-q", "main")
    with pytest.raises(InvalidInput) as err:
        setup.start()
    # The preflight (shared with validate) finds it first, from the plan's target.
    assert f"branch autonomous/{setup.run_id} already exists" in err.value.message
    assert "commits of its own" in err.value.message
    assert not setup.store.run_json.exists()


def test_start_run_accepts_a_branch_at_its_base(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.git("branch", f"autonomous/{setup.run_id}", "main")
    setup.start()
    assert setup.run_json()["state"] == "PHASE_QUEUEING"


def test_complete_phases_name_their_artifacts(tmp_path: Path) -> None:
    setup = _two_phases(tmp_path)
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    completes = [e for e in setup.events() if e["kind"] == "phase" and e["to_state"] == "COMPLETE"]
    assert len(completes) == 2
    for event in completes:
        named = event["data"]["artifacts"]
        assert any(k.endswith("patch.diff") for k in named) and any(k.endswith("ci.json") for k in named)
    assert validate_run(setup.workspace, setup.run_id) == []
    tag = f"autonomous/{setup.run_id}/P2"
    setup.git("tag", "-f", tag, "main")
    problems = validate_run(setup.workspace, setup.run_id)
    assert any(f"its tag {tag} points at" in p for p in problems), problems


def test_start_run_refuses_a_branch_behind_its_base_or_unrelated_to_it(tmp_path: Path) -> None:
    """Not at the base is enough: a branch behind it (an older, ungated state) or on
    another history is refused as well, and the record is not created."""
    setup = _two_phases(tmp_path)
    (setup.repo / "later.py").write_text("LATER = 1\n")
    setup.git("add", "later.py")
    setup.git("commit", "-q", "-m", "later on main")
    setup.git("branch", f"autonomous/{setup.run_id}", "main~1")
    with pytest.raises(InvalidInput) as err:
        setup.start()
    assert f"branch autonomous/{setup.run_id} already exists" in err.value.message
    assert not setup.store.run_json.exists()
    setup.git("branch", "-D", f"autonomous/{setup.run_id}")
    setup.git("checkout", "-q", "--orphan", "elsewhere")
    setup.git("commit", "-q", "-m", "unrelated history")
    setup.git("checkout", "-q", "main")
    setup.git("branch", f"autonomous/{setup.run_id}", "elsewhere")
    with pytest.raises(InvalidInput) as err:
        setup.start()
    assert f"branch autonomous/{setup.run_id} already exists" in err.value.message
    assert not setup.store.run_json.exists()


def test_the_event_log_is_fsynced_once_per_group_before_a_child_and_at_the_end_of_a_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is the durability point: the events a step appends are fsynced together
    before the next child process starts and when the step ends; the artifacts written
    between them are not fsynced one by one."""
    from pipeline.core import proc
    from pipeline.run.context import open_context

    setup = _two_phases(tmp_path)
    setup.start()
    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real(fd)

    log = setup.run_dir / "events.jsonl"
    with open_context(setup.workspace, setup.run_id) as ctx:
        monkeypatch.setattr(os, "fsync", fsync)
        ctx.rec.note(setup.run_id, "first")
        ctx.rec.note(setup.run_id, "second")
        assert synced == []  # two events, run.json written twice: nothing fsynced yet
        proc.run(["true"])
        assert synced == [log.stat().st_ino]  # the two events, at once, before the child
        proc.run(["true"])
        assert synced == [log.stat().st_ino]  # nothing new: no fsync
        ctx.rec.note(setup.run_id, "third")
    assert synced == [log.stat().st_ino] * 2  # the step's end (the context's flush)
    assert [e.data["what"] for e in ctx.store.events.read()[-3:]] == ["first", "second", "third"]
