"""start_run and validate refuse a plan whose agents cannot run, before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands.validate import validate_run
from pipeline.core.errors import ValidationErrors
from testing.runs import make_workspace, phase


def test_unknown_preset_is_refused_at_start_and_by_validate(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, builder={"preset": "claudee"}, phases=[phase("P1")])
    before = setup.plan_path.read_bytes()
    with pytest.raises(ValidationErrors) as err:
        setup.start()
    assert "phase P1 builder" in err.value.problems[0] and "claudee" in err.value.problems[0]
    assert not (setup.run_dir / "run.json").exists()
    assert setup.plan_path.read_bytes() == before
    assert setup.git("branch", "--list", setup.branch) == ""
    assert any("claudee" in p for p in validate_run(setup.workspace, setup.run_id))


def test_a_builder_without_command_or_preset_is_refused(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, builder={"timeout_s": 5}, phases=[phase("P1")])
    with pytest.raises(ValidationErrors, match="phase P1 builder: agent has no command"):
        setup.start()
