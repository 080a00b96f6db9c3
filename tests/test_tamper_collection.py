"""The gate's collection check (pipeline.gate.collection): pytest's own collection of the
phase's test command, on the base and on the candidate, compared.

Every tampering here gets past the line check and the AST check (the words they look for
are spelled around), and is caught because the test no longer runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_tamper import BASE  # the same test module, tampered here in other ways

from pipeline.core import sandbox
from pipeline.gate import collection
from pipeline.gate.collection import Collection, PytestCommand, compare, find_command
from pipeline.models.plan import CiStep
from pipeline.run.driver import run_to_end
from testing.runs import RunSetup, cli, command, make_workspace, pytest_step

FILES = {
    "mod.py": "def double(x):\n    return x * 2\n",
    "tests/test_mod.py": BASE,
    "tests/test_other.py": "def test_other():\n    assert 1 + 1 == 2\n",
    "pytest.ini": "[pytest]\npython_files =\n    test_*.py\n",
}

# Each builder breaks `double` and hides test_double from the run some way the line and AST
# checks do not see.
HOSTILE = {
    "conftest-deselects": """
write("mod.py", "def double(x):\\n    return x * 3\\n")
write("tests/conftest.py", '''
def pytest_collection_modifyitems(config, items):
    gone = [i for i in items if "double" in i.name]
    items[:] = [i for i in items if i not in gone]
    config.hook.pytest_deselected(items=gone)
''')
""",
    "conftest-adds-skip-marker": """
write("mod.py", "def double(x):\\n    return x * 3\\n")
write("tests/conftest.py", '''import pytest

def pytest_collection_modifyitems(config, items):
    mark = getattr(pytest.mark, "sk" + "ip")
    for item in items:
        if "double" in item.name:
            item.add_marker(mark)
''')
""",
    "python-files-narrowed-on-a-continuation-line": """
write("mod.py", "def double(x):\\n    return x * 3\\n")
write("pytest.ini", "[pytest]\\npython_files =\\n    test_other.py\\n")
""",
    "parametrised-with-no-params": """
write("mod.py", "def double(x):\\n    return x * 3\\n")
p = Path("tests/test_mod.py")
p.write_text(p.read_text().replace(
    "def test_double():", "@pytest.mark.parametrize('n', [])\\ndef test_double(n):"))
""",
    "collect-ignore-glob": """
write("mod.py", "def double(x):\\n    return x * 3\\n")
write("tests/conftest.py", 'globals()["collect_" + "ignore_glob"] = ["test_mod.py"]\\n')
""",
}

HONEST = """
write("mod.py", "def double(x):\\n    return x * 2\\n\\n\\ndef triple(x):\\n    return x * 3\\n")
p = Path("tests/test_mod.py")
p.write_text(p.read_text().replace("from mod import double", "from mod import double, triple")
             + "\\n\\ndef test_triple():\\n    assert triple(2) == 6\\n")
"""


def _setup(root: Path, body: str, **kwargs: object) -> RunSetup:
    setup = make_workspace(root, files=FILES, agent_body=body, ci_steps=[pytest_step()], **kwargs)  # type: ignore[arg-type]
    setup.start()
    return setup


def _checks(setup: RunSetup, k: int = 1) -> dict[str, dict[str, object]]:
    gate = json.loads((setup.phase_dir("P1") / "attempts" / str(k) / "gate.json").read_text())
    return {c["name"]: c for c in gate["checks"]}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_tests_hidden_from_the_run_are_caught_though_the_ast_check_passes(tmp_path: Path, name: str) -> None:
    setup = _setup(tmp_path, HOSTILE[name])
    run_to_end(setup.workspace, setup.run_id)
    checks = _checks(setup)
    assert checks["test_tampering"]["verdict"] == "pass", checks["test_tampering"]
    assert checks["test_behaviour"]["verdict"] == "pass", checks["test_behaviour"]
    caught = checks["test_collection"]
    assert caught["verdict"] == "fail", caught
    evidence = " ".join(caught["evidence"])  # type: ignore[arg-type]
    assert "tests/test_mod.py::test_double" in evidence, evidence
    whole_file = ("python-files-narrowed-on-a-continuation-line", "collect-ignore-glob")
    assert "test_zero" not in evidence or name in whole_file
    assert "test_other" not in evidence
    assert setup.run_json()["state"] != "DONE_SUCCESS"
    assert "x * 3" not in setup.git("show", "main:mod.py")
    branch = setup.git("show", f"{setup.branch}:mod.py", check=False)
    assert "x * 3" not in branch


def test_an_honest_phase_adding_tests_passes(tmp_path: Path) -> None:
    setup = _setup(tmp_path, HONEST)
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "pass" and "none lost" in str(check["message"]), check
    assert "3 test(s) on the base" in str(check["message"])


def test_a_candidate_whose_conftest_crashes_collection_is_refused(tmp_path: Path) -> None:
    body = 'write("tests/conftest.py", "raise RuntimeError(\'conftest says no\')\\n")\n'
    setup = _setup(tmp_path, body)
    run_to_end(setup.workspace, setup.run_id)
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "fail", check
    assert "collection fails on the candidate" in str(check["message"])
    assert "conftest says no" in " ".join(check["evidence"])  # type: ignore[arg-type]


def test_the_base_collection_is_cached_and_a_retry_reuses_it(tmp_path: Path) -> None:
    """Attempt 1 deselects a test (refused), attempt 2 is honest: the base is collected once."""
    body = f"if ATTEMPT == 1:\n{_indent(HOSTILE['conftest-deselects'])}\nelse:\n{_indent(HONEST)}\n"
    setup = _setup(tmp_path, body)
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["state"] == "DONE_SUCCESS"
    assert _checks(setup, 1)["test_collection"]["verdict"] == "fail"
    second = _checks(setup, 2)["test_collection"]
    assert second["verdict"] == "pass" and "(cached)" in str(second["message"]), second
    attempts = setup.phase_dir("P1") / "attempts"
    assert [p.parent.name for p in sorted(attempts.glob("*/collection-base.log"))] == ["1"]
    assert len(list(attempts.glob("*/collection-candidate.log"))) == 2
    assert len(list((setup.workspace / collection.CACHE_DIR).glob("*.json"))) == 1


def test_switched_off_by_the_ruleset(tmp_path: Path) -> None:
    setup = make_workspace(tmp_path, files=FILES, agent_body=HOSTILE["conftest-deselects"], ci_steps=[pytest_step()])
    (setup.workspace / "profiles").mkdir(exist_ok=True)
    (setup.workspace / "profiles" / "ruleset.yaml").write_text("gate:\n  test_collection: false\n")
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "pass" and "switched off" in str(check["message"]), check


def test_a_phase_that_may_change_tests_is_exempt(tmp_path: Path) -> None:
    from testing.runs import phase

    setup = _setup(tmp_path, HOSTILE["conftest-deselects"], phases=[phase("P1", tests="may_change")])
    run_to_end(setup.workspace, setup.run_id)
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "pass" and "tests may change" in str(check["message"]), check


@pytest.mark.parametrize("point", ["collection_running@1", "collection_running@2"])
def test_a_kill_during_collection_resumes(tmp_path: Path, point: str) -> None:
    """Killed while collecting the base (1) or the candidate (2): the rerun gates the same
    attempt again and refuses it for the same reason; the cache holds only a whole entry."""
    setup = _setup(tmp_path, HOSTILE["conftest-deselects"])
    crashed = cli(setup, "run", "--run", setup.run_id, env={"AUTOPACK_FAILPOINT": point})
    assert crashed.returncode == 137, crashed.stdout + crashed.stderr
    cached = list((setup.workspace / collection.CACHE_DIR).glob("*.json"))
    assert len(cached) == (0 if point.endswith("@1") else 1)
    rerun = cli(setup, "run", "--run", setup.run_id)
    assert "Traceback" not in rerun.stderr, rerun.stderr
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "fail" and "test_double" in " ".join(check["evidence"])  # type: ignore[arg-type]
    assert setup.run_json()["state"] != "DONE_SUCCESS"
    assert cli(setup, "validate", "--run", setup.run_id).returncode == 0


def _indent(body: str) -> str:
    return "\n".join("    " + line if line.strip() else line for line in body.strip("\n").splitlines())


# -- the pieces, on a real pytest project without a run ----------------------------------------------


def _project(root: Path) -> Path:
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _command() -> PytestCommand:
    found = find_command([CiStep(name="tests", run=pytest_step()["run"])])
    assert isinstance(found, PytestCommand)
    return found


def test_a_test_file_renamed_out_of_python_files_is_lost_and_one_renamed_within_is_not(tmp_path: Path) -> None:
    """A rename the patch declares keeps its tests; one that pytest no longer collects
    loses them (the supervisor's diff shows a rename as delete + add: the line check names
    the deletion too)."""
    project, cmd = _project(tmp_path / "p"), _command()
    base = collection.collect(cmd, project, sandbox.UNCONFINED, tmp_path / "base.log")
    (project / "tests/test_mod.py").rename(project / "tests/mod_checks.py")
    lost = collection.collect(cmd, project, sandbox.UNCONFINED, tmp_path / "lost.log")
    moved = {"tests/test_mod.py": "tests/mod_checks.py"}
    assert compare(base, lost, moved) == [
        "tests/mod_checks.py::TestMore::test_zero: no longer collected",
        "tests/mod_checks.py::test_double: no longer collected",
    ]
    (project / "tests/mod_checks.py").rename(project / "tests/test_renamed.py")
    kept = collection.collect(cmd, project, sandbox.UNCONFINED, tmp_path / "kept.log")
    assert compare(base, kept, {"tests/test_mod.py": "tests/test_renamed.py"}) == []
    assert compare(base, kept, {}) != []


def test_a_corrupt_cache_entry_is_recollected(tmp_path: Path) -> None:
    project, cache = _project(tmp_path / "p"), tmp_path / "cache"
    cmd = _command()
    first = collection.base_collection(cmd, project, sandbox.UNCONFINED, cache, "a" * 40, tmp_path / "1.log")
    assert first.clean and not first.cached and len(first.tests) == 3
    assert collection.base_collection(cmd, project, sandbox.UNCONFINED, cache, "a" * 40, tmp_path / "2.log").cached
    assert not (tmp_path / "2.log").exists()
    entry = collection.cache_path(cache, "a" * 40, cmd)
    for bad in ("{", json.dumps({"result": {"format": 1, "tests": {}, "deselected": [], "errors": []}}), "[]"):
        entry.write_text(bad)
        again = collection.base_collection(cmd, project, sandbox.UNCONFINED, cache, "a" * 40, tmp_path / "3.log")
        assert not again.cached and again.tests == first.tests
    forged = json.loads(entry.read_text())
    forged["result"]["tests"] = {}
    entry.write_text(json.dumps(forged))  # the checksum no longer matches
    assert not collection.base_collection(cmd, project, sandbox.UNCONFINED, cache, "a" * 40, tmp_path / "4.log").cached


@pytest.mark.skipif(sandbox.bwrap_problem() is not None, reason="bubblewrap is not usable here")
def test_collection_runs_in_the_sandbox(tmp_path: Path) -> None:
    project = _project(tmp_path / "p")
    (project / "tests" / "conftest.py").write_text(
        f"try:\n    open({str(tmp_path / 'escaped')!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
    )
    jailed = sandbox.Confinement(sandbox.ISOLATION_BWRAP)
    found = collection.collect(_command(), project, jailed, tmp_path / "log")
    assert found.clean and len(found.tests) == 3, found
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize(
    "output",
    [
        "not json",
        json.dumps({"format": 2, "tests": {}, "deselected": [], "errors": []}),
        json.dumps({"format": 1, "tests": {"a::b": "maybe"}, "deselected": [], "errors": []}),
        json.dumps({"format": 1, "tests": {"a\nb": "run"}, "deselected": [], "errors": []}),
        json.dumps({"format": 1, "tests": [], "deselected": [], "errors": []}),
    ],
)
def test_an_output_the_plugin_did_not_write_is_a_problem_not_a_result(tmp_path: Path, output: str) -> None:
    out = tmp_path / "out.json"
    out.write_text(output)
    found = collection._read_output(out, 0, "")
    assert found.problem is not None and "unreadable" in found.problem and not found.tests


def test_an_output_beyond_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collection, "MAX_OUTPUT_BYTES", 100)
    out = tmp_path / "out.json"
    out.write_text(
        json.dumps({"format": 1, "tests": {f"t::{i}": "run" for i in range(50)}, "deselected": [], "errors": []})
    )
    assert "unreadable" in str(collection._read_output(out, 0, "").problem)


def test_the_command_is_found_in_pytest_steps_only() -> None:
    steps = [
        CiStep(name="lint", run="ruff check ."),
        CiStep(name="t", run="FOO=1 pytest -q --junitxml={junit} --lf tests"),
    ]
    found = find_command(steps)
    assert isinstance(found, PytestCommand) and found.step == "t"
    assert found.line.startswith("FOO=1 pytest -q tests --collect-only")
    assert "junit" not in found.line and "--lf" not in found.line
    py = find_command([CiStep(name="t", run=f"{command('-m', 'pytest')} -x --junitxml {{junit}}")])
    assert isinstance(py, PytestCommand) and "-m pytest -x --collect-only" in py.line
    for run in ("npm test", "cd sub && pytest", "pytest | tee log", "tox -e py", "python -m unittest"):
        why = find_command([CiStep(name="t", run=run)])
        assert isinstance(why, str) and "supported for pytest steps only" in why, run


def test_the_comparison_handles_new_renamed_and_parametrised_tests() -> None:
    base = Collection(
        {
            "tests/test_a.py::test_x": "run",
            "tests/test_a.py::test_p[1]": "run",
            "tests/test_a.py::test_p[2]": "run",
            "tests/test_a.py::test_s": "skip",
        }
    )
    fine = Collection(
        {
            "tests/test_b.py::test_x[a]": "run",
            "tests/test_b.py::test_x[b]": "run",
            "tests/test_b.py::test_p[one]": "run",
            "tests/test_b.py::test_p[two]": "run",
            "tests/test_b.py::test_new": "run",
        }
    )
    assert compare(base, fine, {"tests/test_a.py": "tests/test_b.py"}) == []
    assert (
        compare(
            base,
            Collection({"test_b.py::test_x": "run", "test_b.py::test_p[1]": "run", "test_b.py::test_p[2]": "run"}),
            {"sub/test_a.py": "sub/test_b.py"},
        )
        != []
    )
    lost = Collection(
        {"tests/test_a.py::test_x": "xfail", "tests/test_a.py::test_p[1]": "run"},
        deselected=frozenset({"tests/test_a.py::test_p[2]"}),
    )
    assert compare(base, lost, {}) == [
        "tests/test_a.py::test_p[2]: deselected",
        "tests/test_a.py::test_x: xfail now",
    ]
    assert compare(base, Collection({"tests/test_a.py::test_p[1]": "run"}), {}) == [
        "tests/test_a.py::test_p[2]: no longer collected",
        "tests/test_a.py::test_x: no longer collected",
    ]


def test_a_patch_that_shadows_the_plugin_is_refused(tmp_path: Path) -> None:
    from pipeline.gate.patch import parse_patch

    patch = parse_patch(
        "diff --git a/autopack_collect_plugin.py b/autopack_collect_plugin.py\nnew file mode 100644\n"
        "--- /dev/null\n+++ b/autopack_collect_plugin.py\n@@ -0,0 +1 @@\n+X = 1\n"
    )
    check = collection.check_collection(collection.CollectionJob(why_not="x"), patch, tmp_path, None)
    assert check.verdict == "fail" and check.evidence == ["autopack_collect_plugin.py"]


def test_caught_without_the_sandbox_too(tmp_path: Path, unsandboxed: None) -> None:
    setup = _setup(tmp_path, HOSTILE["conftest-adds-skip-marker"])
    run_to_end(setup.workspace, setup.run_id)
    assert setup.run_json()["isolation"].startswith("none")
    check = _checks(setup)["test_collection"]
    assert check["verdict"] == "fail" and check["evidence"] == ["tests/test_mod.py::test_double: skip now"], check
