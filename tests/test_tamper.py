"""Tamper checks that judge what tests do, not which lines changed (pipeline.gate.behaviour,
and pytest configuration in pipeline.gate.tampering)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.gate.behaviour import before_texts, check_test_behaviour
from pipeline.gate.patch import parse_patch
from pipeline.gate.tampering import check_test_tampering
from pipeline.run.driver import run_to_end
from testing.runs import make_workspace, pytest_step

BASE = '''\
import pytest

from mod import double


def test_double():
    assert double(2) == 4


class TestMore:
    def test_zero(self):
        assert double(0) == 0
'''

TAMPERED = {
    "assert-true": BASE.replace("assert double(2) == 4", "assert True"),
    "assert-constant-compare": BASE.replace("assert double(2) == 4", "assert 1 == 1"),
    "assert-or-true": BASE.replace("assert double(2) == 4", "assert double(2) == 4 or True"),
    "aliased-skip": BASE.replace("import pytest\n", "import pytest\nfrom pytest import skip as s\n").replace(
        "def test_double():\n", "def test_double():\n    s()\n"
    ),
    "early-return": BASE.replace("def test_double():\n", "def test_double():\n    return\n"),
    "early-return-in-class": BASE.replace("    def test_zero(self):\n", "    def test_zero(self):\n        return\n"),
    "skip-decorator": BASE.replace("def test_double():", "@pytest.mark.skip\ndef test_double():"),
    "xfail-decorator": BASE.replace("def test_double():", "@pytest.mark.xfail(reason='x')\ndef test_double():"),
    "module-pytestmark": BASE.replace(
        "from mod import double\n", "from mod import double\n\npytestmark = pytest.mark.skip\n"
    ),
    "removed-test": BASE.replace("def test_double():\n    assert double(2) == 4\n", ""),
    "assert-removed": BASE.replace("    assert double(2) == 4\n", "    double(2)\n"),
    "if-true-return": BASE.replace("def test_double():\n", "def test_double():\n    if True:\n        return\n"),
}

FINE = {
    "more-asserts": BASE.replace("assert double(2) == 4", "assert double(2) == 4\n    assert double(3) == 6"),
    "new-test": BASE + "\n\ndef test_three():\n    assert double(3) == 6\n",
    "rename-variable": BASE.replace("assert double(0) == 0", "value = double(0)\n        assert value == 0"),
    "docstring": BASE.replace("def test_double():\n", 'def test_double():\n    """Doubles."""\n'),
}


def _diff(path: str, before: str, after: str) -> str:
    import difflib

    lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}")
    return f"diff --git a/{path} b/{path}\n" + "".join(lines)


def _judge(tmp_path: Path, after: str, category: str = "feature_implementation") -> list[str]:
    test = tmp_path / "tests" / "test_mod.py"
    test.parent.mkdir(parents=True, exist_ok=True)
    test.write_text(BASE)
    patch = parse_patch(_diff("tests/test_mod.py", BASE, after))
    before = before_texts(patch, tmp_path)
    test.write_text(after)  # what `apply` leaves
    result = check_test_behaviour(patch, before, tmp_path, category)
    return [] if result.verdict == "pass" else result.evidence


@pytest.mark.parametrize("name", sorted(TAMPERED))
def test_tampering_is_caught(tmp_path: Path, name: str) -> None:
    evidence = _judge(tmp_path, TAMPERED[name])
    assert evidence, f"{name} passed the behavioural check"
    assert all(e.startswith("tests/test_mod.py") for e in evidence)


@pytest.mark.parametrize("name", sorted(FINE))
def test_honest_changes_pass(tmp_path: Path, name: str) -> None:
    assert _judge(tmp_path, FINE[name]) == []


def test_test_categories_may_change_tests(tmp_path: Path) -> None:
    assert _judge(tmp_path, TAMPERED["assert-true"], category="tests") == []


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("pytest.ini", "addopts = --deselect tests/test_mod.py::test_double"),
        ("pyproject.toml", 'addopts = "-k not double"'),
        ("setup.cfg", "addopts = --ignore=tests/test_mod.py"),
        ("tests/conftest.py", "collect_ignore = ['test_mod.py']"),
        ("tox.ini", "python_functions = check_*"),
    ],
)
def test_deselecting_through_configuration_is_caught(path: str, line: str) -> None:
    patch = parse_patch(f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1,2 @@\n [x]\n+{line}\n")
    result = check_test_tampering(patch, "feature_implementation")
    assert result.verdict == "fail" and "changes which tests run" in result.evidence[0]


def test_a_constant_assert_ends_the_attempt_in_a_run(tmp_path: Path, unsandboxed: None) -> None:
    """The builder breaks `double` and rewrites its test to `assert True`: the gate refuses,
    the branch never holds it."""
    body = (
        "write('mod.py', 'def double(x):\\n    return x * 3\\n')\n"
        "p = Path('tests/test_mod.py')\n"
        "p.write_text(p.read_text().replace('assert double(2) == 4', 'assert True'))\n"
    )
    setup = make_workspace(
        tmp_path,
        files={"mod.py": "def double(x):\n    return x * 2\n", "tests/test_mod.py": BASE},
        agent_body=body,
        ci_steps=[pytest_step()],
    )
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    gate = setup.gate_json("P1")
    failed = [c for c in gate["checks"] if c["verdict"] == "fail"]
    assert failed and failed[0]["name"] == "test_behaviour", failed
    assert "asserts a constant condition" in " ".join(failed[0]["evidence"])
    assert setup.run_json()["state"] != "DONE_SUCCESS"
    assert "assert True" not in setup.git("show", f"{setup.branch}:tests/test_mod.py")


def test_paths_git_changed_but_the_gate_did_not_see_fail_the_gate(tmp_path: Path) -> None:
    """The gate cross-checks git's own list of changed paths after apply against the
    parsed patch: a path the parser missed is a policy failure naming it."""
    from types import SimpleNamespace
    from typing import Any, cast

    from pipeline.run.verify import _applied_paths
    from pipeline.vcs.local import LocalGitCli
    from testing.gitrepo import git, make_repo

    repo = make_repo(tmp_path / "repo", {"a.py": "A = 1\n"})
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "autonomous/r", str(wt))
    base = git(wt, "rev-parse", "HEAD")
    (wt / "a.py").write_text("A = 2\n")
    (wt / "hidden.py").write_text("B = 1\n")  # what a parser bug would let through
    check = _applied_paths(cast(Any, SimpleNamespace(git=LocalGitCli(repo), worktree=wt)), base)
    judged = check(["a.py"])
    assert judged.verdict == "fail" and judged.policy and judged.evidence == ["hidden.py"]
    (wt / "hidden.py").unlink()
    assert check(["a.py"]).verdict == "pass"
