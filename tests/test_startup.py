"""Start-up: read-only commands import only what they use (`-X importtime` of a real run).

Every `doit`/`python -m pipeline` invocation pays its imports once; DuckDB alone costs
more than the 0.2 s a `status` may take; the run context, the start of a run, the rollup,
the backlog, the gate and the agent runner are for commands that drive a run or report.
`validate` reads the branch through the vcs adapter (one git call); `status` runs no git.
Both entries are checked: `python -m pipeline` and `doit` with a dodo.py (which loads
every task definition before running one).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run.driver import run_to_end
from testing.runs import RunSetup, make_workspace, phase

_GIT = {"pipeline.vcs.adapter", "pipeline.vcs.local", "pipeline.vcs.remote"}
_DRIVING = {
    "duckdb",
    "pipeline.run.context",
    "pipeline.run.start",
    "pipeline.run.recorder",
    "pipeline.store.rollup",
    "pipeline.issues.backlog",
    "pipeline.gate.verdict",
    "pipeline.agents.runner",
    "pipeline.reporting",
}
_NOT_FOR_STATUS = {
    *_DRIVING,
    *_GIT,
    "jsonschema",
    "ruamel.yaml",
    "yaml",
    "pipeline.config.workspace",
    "pipeline.core.schemas",
    "pipeline.plan.file",
}
# a valid plan is read by PyYAML's C parser and judged by pydantic (pipeline.plan.file.read_plan):
# ruamel and jsonschema are for a plan with a problem, to name its line
# and a workspace without its own catalog files needs no catalog rules or models
_NOT_FOR_VALIDATE = {*_DRIVING, "jsonschema", "ruamel.yaml", "pipeline.config.catalog", "pipeline.models.catalog"}
_ENTRIES = {"pipeline": ("-m", "pipeline"), "doit": ("-m", "doit")}
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def _imports(cwd: Path, *args: str, entry: str = "pipeline") -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *_ENTRIES[entry], *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return set(_IMPORTED.findall(done.stderr))


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunSetup:
    setup = make_workspace(
        tmp_path_factory.mktemp("startup"),
        agent_body='write("mod.py", "X = 2\\n")\nresult(status="success")',
        phases=[phase("P1", scope={"allow": ["mod.py"]})],
    )
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    (setup.workspace / "dodo.py").write_text("from autopack_tasks import *  # noqa: F403\n")
    return setup


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
@pytest.mark.parametrize("args", [("status",), ("status", "--run", "r1"), ("status", "--run", "r1", "--json")])
def test_status_imports_no_duckdb_yaml_jsonschema_or_git(finished: RunSetup, args: tuple[str, ...], entry: str) -> None:
    imported = _imports(finished.workspace, *args, entry=entry)
    assert "pipeline.commands.status" in imported  # the trace is real
    assert not imported & _NOT_FOR_STATUS, sorted(imported & _NOT_FOR_STATUS)


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
@pytest.mark.parametrize("args", [("validate",), ("validate", "--run", "r1")])
def test_validate_imports_nothing_that_drives_a_run(finished: RunSetup, args: tuple[str, ...], entry: str) -> None:
    imported = _imports(finished.workspace, *args, entry=entry)
    assert "pipeline.commands.validate" in imported
    assert "pipeline.vcs.local" in imported  # a COMPLETE phase: its commit is looked for on the branch
    assert "pipeline.plan.file" in imported  # the plan was read
    assert not imported & _NOT_FOR_VALIDATE, sorted(imported & _NOT_FOR_VALIDATE)


def test_validate_of_a_bad_plan_still_names_its_lines(finished: RunSetup) -> None:
    """The fast path gives up on a plan with a problem: ruamel and jsonschema locate it."""
    plan = finished.workspace / "runs" / "r1" / "plan.yaml"
    good = plan.read_text()
    plan.write_text(good.replace("tiers:", "complexty: low\ntiers:", 1))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "validate", "--run", "r1"],
            cwd=finished.workspace,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        plan.write_text(good)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "plan.yaml:" in done.stderr and "$.complexty: unknown key 'complexty'" in done.stderr, done.stderr


def test_validate_still_checks_a_workspace_catalog(finished: RunSetup) -> None:
    """The built-in stacks/catalog are not re-parsed; a workspace's own ones still are."""
    own = finished.workspace / "catalog" / "features.yaml"
    own.parent.mkdir(parents=True, exist_ok=True)
    own.write_text("features: [not, a, mapping]\n")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "validate"],
            cwd=finished.workspace,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        own.unlink()
        own.parent.rmdir()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "catalog/features.yaml" in done.stderr and "Traceback" not in done.stderr


def test_the_built_in_ruleset_and_ci_profiles_load_without_jsonschema(tmp_path: Path) -> None:
    """The package's own files are read by pydantic alone; a workspace file is still checked
    against the schema, every problem named by its JSON path."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.config.profiles import load_ci_profiles, load_ruleset\n"
        "load_ruleset(Path(sys.argv[1])); load_ci_profiles(Path(sys.argv[1]))\n"
        "print('jsonschema' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stdout + done.stderr
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ruleset.yaml").write_text("run_budgets:\n  max_phases: many\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ruleset.yaml: $.run_budgets.max_phases: 'many' is not of type 'integer'" in done.stderr, done.stderr
