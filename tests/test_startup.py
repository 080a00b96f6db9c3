"""Start-up: read-only commands import only what they use (`-X importtime` of a real run).

Every `doit`/`python -m pipeline` invocation pays its imports once; DuckDB alone costs
more than the 0.2 s a `status` may take, git and the run context are for commands that
drive a run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run.driver import run_to_end
from testing.runs import RunSetup, make_workspace, phase

_GIT = {"pipeline.vcs.adapter", "pipeline.vcs.local", "pipeline.vcs.remote", "pipeline.run.context"}
_NOT_FOR_STATUS = {"duckdb", "jsonschema", "ruamel.yaml", "yaml", *_GIT}
_NOT_FOR_VALIDATE = {"duckdb", *_GIT}
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$", re.MULTILINE)


def _imports(cwd: Path, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *args],
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
    return setup


@pytest.mark.parametrize("args", [("status",), ("status", "--run", "r1"), ("status", "--run", "r1", "--json")])
def test_status_imports_no_duckdb_yaml_or_jsonschema(finished: RunSetup, args: tuple[str, ...]) -> None:
    imported = _imports(finished.workspace, *args)
    assert "pipeline.commands.status" in imported  # the trace is real
    assert not imported & _NOT_FOR_STATUS, sorted(imported & _NOT_FOR_STATUS)


@pytest.mark.parametrize("args", [("validate",), ("validate", "--run", "r1")])
def test_validate_imports_no_duckdb_and_no_git(finished: RunSetup, args: tuple[str, ...]) -> None:
    imported = _imports(finished.workspace, *args)
    assert "pipeline.commands.validate" in imported
    assert not imported & _NOT_FOR_VALIDATE, sorted(imported & _NOT_FOR_VALIDATE)


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
