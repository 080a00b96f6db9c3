"""One Workspace per task: its configuration is read once, on first use, and passed down;
no module below the commands reads a profile file itself."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipeline.config import workspace as workspace_module
from pipeline.config.workspace import Workspace
from pipeline.core.errors import ValidationErrors
from pipeline.run.driver import run_to_end
from pipeline.run.start import start_run
from testing.runs import make_workspace, phase

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
LOADERS = {"load_ruleset", "load_ci_profiles", "load_agent_presets", "load_workspace", "workspace_problems"}
# The commands build the Workspace; config/ is where it loads; agents/presets holds the
# presets' own loader (Workspace calls it).
MAY_LOAD = ("config", "commands")


def _called_loaders(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in LOADERS:
                found.add(name)
    return found


def test_no_module_below_the_commands_reads_profiles() -> None:
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(_called_loaders(p))
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts[0] not in MAY_LOAD and "data" not in p.parts and _called_loaders(p)
    }
    # The agent runner's own fallback: the built-in presets when a caller passes none.
    offenders.pop("agents/runner.py", None)
    offenders.pop("agents/presets.py", None)
    assert not offenders, f"take these from the Workspace passed down instead: {offenders}"


def test_parts_load_on_first_use_and_once(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    ruleset_file = tmp_path / "profiles" / "ruleset.yaml"
    ruleset_file.write_text("debt_cleanup: auto\n")
    ws = Workspace(tmp_path)
    assert "ruleset" not in ws.__dict__  # nothing read yet
    first = ws.ruleset
    assert first.ruleset.debt_cleanup == "auto" and first.source == str(ruleset_file)
    ruleset_file.write_text('debt_cleanup: "off"\n')
    assert ws.ruleset is first  # the task goes on with what it read
    assert Workspace(tmp_path).ruleset.ruleset.debt_cleanup == "off"  # a new task reads again
    assert Workspace.of(ws) is ws and Workspace.of(tmp_path).root == tmp_path


def test_a_broken_profile_names_its_file(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ci.yaml").write_text("normal: {steps: 7}\n")
    with pytest.raises(ValidationErrors) as caught:
        _ = Workspace(tmp_path).base_ci_profiles
    assert "ci.yaml" in str(caught.value.render())


def test_a_whole_run_reads_the_ruleset_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = "import os\nwrite(os.environ[\"AUTOPACK_PHASE_ID\"] + \".txt\", \"done\\\\n\")"
    setup = make_workspace(tmp_path, agent_body=body, phases=[phase("P1"), phase("P2")])
    calls: list[Path] = []
    real = workspace_module.load_ruleset

    def counting(root: Path) -> object:
        calls.append(root)
        return real(root)

    monkeypatch.setattr(workspace_module, "load_ruleset", counting)
    ws = Workspace(setup.workspace)
    start_run(ws, setup.run_id)
    outcomes = run_to_end(ws, setup.run_id)
    assert outcomes[-1].run_state.value == "DONE_SUCCESS", outcomes[-1].message
    assert calls == [setup.workspace]
