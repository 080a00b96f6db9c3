"""pipeline.ci.runner: real CI steps (real pytest runs) in temp projects; tries, flakes, failures."""

from __future__ import annotations

import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipeline.ci.runner import feedback_for, fingerprint, run_ci
from pipeline.core.errors import InvalidInput
from pipeline.models.plan import CiProfile, CiStep
from pipeline.models.reports import CiReport

REPO = Path(__file__).resolve().parents[1]
PY = shlex.quote(sys.executable)
PYTEST = f"{PY} -m pytest -q -p no:cacheprovider --junitxml={{junit}}"

MODULE = "def add(a, b):\n    return a + b\n"
GREEN_TESTS = """\
from mod import add


def test_add():
    assert add(1, 2) == 3


class TestAdd:
    def test_zero(self):
        assert add(0, 0) == 0
"""
RED_TESTS = """\
from mod import add


def test_add():
    assert add(1, 2) == 3


def test_wrong():
    assert add(2, 2) == 5, "two and two"
"""
# Fails on the first CI try only: the supervisor tells the step which try it is.
FLAKY_TESTS = """\
import os


def test_stable():
    assert True


def test_flaky():
    assert os.environ["AUTOPACK_CI_TRY"] != "1", "first try always fails"
"""


def make_project(root: Path, tests: str) -> Path:
    """A tiny Python project: mod.py plus tests/test_mod.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mod.py").write_text(MODULE)
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_mod.py").write_text(tests)
    return root


def profile(*steps: CiStep, tries: int = 3) -> CiProfile:
    return CiProfile(steps=list(steps), preflight_attempts=tries)


def pytest_step(timeout_s: int = 120) -> CiStep:
    return CiStep(name="tests", run=PYTEST, timeout_s=timeout_s)


def ci(
    worktree: Path, prof: CiProfile, out_dir: Path, name: str = "normal",
    env: dict[str, str] | None = None,
) -> CiReport:
    return run_ci(
        profile=prof, profile_name=name, worktree=worktree, out_dir=out_dir,
        phase_id="p1", attempt=1, env=env,
    )


def junit_step(xml_file: Path, name: str = "report", rc: int = 0) -> CiStep:
    """A step that 'produces' a given JUnit file, so parsing is tested without pytest."""
    return CiStep(name=name, run=f"cp {shlex.quote(str(xml_file))} {{junit}}; exit {rc}")


# --------------------------------------------------------------------------- green / red


def test_green_run_parses_junit_into_pytest_node_ids(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", GREEN_TESTS)
    out = tmp_path / "ci"
    report = ci(wt, profile(pytest_step()), out)

    assert report.verdict == "pass"
    assert [t.n for t in report.tries] == [1]
    step = report.tries[0].steps[0]
    assert (step.returncode, step.timed_out, step.missing_command) == (0, False, False)
    assert step.log == "try1-tests.log" and (out / step.log).is_file()
    assert step.junit == "try1-tests.junit.xml" and (out / step.junit).is_file()
    assert step.cmd == PYTEST  # the template, not the machine-specific path
    assert {(t.node_id, t.outcome) for t in step.tests} == {
        ("tests/test_mod.py::test_add", "passed"),
        ("tests/test_mod.py::TestAdd::test_zero", "passed"),
    }
    assert report.failing_tests == [] and report.flaky_tests == []
    assert report.environment_error is None
    assert feedback_for(report, out) == ""


def test_failing_test_fails_every_try_and_is_named(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", RED_TESTS)
    out = tmp_path / "ci"
    report = ci(wt, profile(pytest_step(), tries=2), out)

    assert report.verdict == "fail"
    assert [(t.n, t.verdict) for t in report.tries] == [(1, "fail"), (2, "fail")]
    assert report.failing_tests == ["tests/test_mod.py::test_wrong"]
    assert report.flaky_tests == []
    failed = [t for t in report.tries[-1].steps[0].tests if t.outcome == "failed"]
    assert "two and two" in failed[0].message

    text = feedback_for(report, out)
    assert "tests/test_mod.py::test_wrong" in text
    assert "two and two" in text
    assert "Failing step: tests (exit status 1)" in text
    assert "try2-tests.log" in text
    assert "1 failed, 1 passed" in text  # pytest's summary line, from the log tail


def test_failing_step_without_junit_stops_the_try(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wt.mkdir()
    never = CiStep(name="never", run="touch ran-after-failure")
    lint = CiStep(name="lint", run="echo 'lint: 3 problems'; exit 3")
    report = ci(wt, profile(lint, never, tries=2), tmp_path / "ci")

    assert report.verdict == "fail"
    assert report.failing_tests == []
    assert [[s.name for s in t.steps] for t in report.tries] == [["lint"], ["lint"]]
    assert report.tries[-1].steps[0].returncode == 3
    assert report.tries[-1].steps[0].junit is None
    assert not (wt / "ran-after-failure").exists()
    text = feedback_for(report, tmp_path / "ci")
    assert "Failing step: lint (exit status 3)" in text
    assert "lint: 3 problems" in text


def test_exit_zero_with_failed_tests_in_junit_still_fails(tmp_path: Path) -> None:
    # `pytest | tee` loses pytest's status; the JUnit report still says what happened.
    wt = make_project(tmp_path / "wt", RED_TESTS)
    step = CiStep(name="tests", run=f"{PYTEST} | tee /dev/null")
    report = ci(wt, profile(step, tries=1), tmp_path / "ci")

    assert report.tries[0].steps[0].returncode == 0
    assert report.verdict == "fail"
    assert report.failing_tests == ["tests/test_mod.py::test_wrong"]


def test_empty_profile_passes_with_one_empty_try(tmp_path: Path) -> None:
    report = ci(tmp_path, CiProfile(), tmp_path / "ci")
    assert report.verdict == "pass"
    assert [(t.n, t.verdict, t.steps) for t in report.tries] == [(1, "pass", [])]


# --------------------------------------------------------------------------- flakes


def test_flaky_test_passes_on_retry_and_is_listed(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", FLAKY_TESTS)
    report = ci(wt, profile(pytest_step()), tmp_path / "ci")

    assert report.verdict == "pass"
    assert [(t.n, t.verdict) for t in report.tries] == [(1, "fail"), (2, "pass")]
    assert report.flaky_tests == ["tests/test_mod.py::test_flaky"]
    assert report.failing_tests == []
    assert feedback_for(report, tmp_path / "ci") == ""


def test_strict_profile_does_not_forgive_a_flake(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", FLAKY_TESTS)
    out = tmp_path / "ci"
    report = ci(wt, profile(pytest_step()), out, name="strict")

    assert [(t.n, t.verdict) for t in report.tries] == [(1, "fail"), (2, "pass")]
    assert report.verdict == "fail"
    assert report.flaky_tests == ["tests/test_mod.py::test_flaky"]
    assert report.failing_tests == ["tests/test_mod.py::test_flaky"]
    text = feedback_for(report, out)
    assert "strict profile does not accept flakes" in text
    assert "first try always fails" in text
    assert "try1-tests.log" in text  # the evidence is the red try's log


def test_flake_is_reported_even_when_every_try_is_red(tmp_path: Path) -> None:
    case = '<testsuite><testcase classname="tests.test_m" name="{}">{}</testcase></testsuite>'
    (tmp_path / "try1.xml").write_text(case.format("test_a", "<failure message='a'/>"))
    (tmp_path / "try2.xml").write_text(case.format("test_a", ""))
    # Try 1 stops at `first`; try 2 gets past it and fails in `second`.
    (tmp_path / "b.xml").write_text(case.format("test_b", "<failure message='b'/>"))
    first = CiStep(name="first", run='cp "try$AUTOPACK_CI_TRY.xml" {junit}')
    second = CiStep(name="second", run="cp b.xml {junit}")
    report = ci(tmp_path, profile(first, second, tries=2), tmp_path / "ci")

    assert report.verdict == "fail"
    assert [[s.name for s in t.steps] for t in report.tries] == [["first"], ["first", "second"]]
    assert report.failing_tests == ["tests/test_m.py::test_b"]
    assert report.flaky_tests == ["tests/test_m.py::test_a"]


def test_strict_green_first_try_passes(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wt.mkdir()
    report = ci(wt, profile(CiStep(name="ok", run="true")), tmp_path / "ci", name="strict")
    assert report.verdict == "pass" and len(report.tries) == 1


# --------------------------------------------------------------------------- timeouts, environment


def test_step_that_times_out_fails_quickly(tmp_path: Path) -> None:
    step = CiStep(name="slow", run="echo started; sleep 30", timeout_s=1)
    started = time.monotonic()
    report = ci(tmp_path, profile(step, tries=1), tmp_path / "ci")

    assert time.monotonic() - started < 10
    result = report.tries[0].steps[0]
    assert result.timed_out is True and result.missing_command is False
    assert report.verdict == "fail"
    assert report.environment_error is None
    text = feedback_for(report, tmp_path / "ci")
    assert "Failing step: slow (timed out)" in text
    assert "timed out after 1 s" in text and "started" in text


def test_missing_command_is_an_environment_error_without_retry(tmp_path: Path) -> None:
    step = CiStep(name="tool", run="no-such-ci-tool --x")
    report = ci(tmp_path, profile(step, tries=3), tmp_path / "ci")

    assert len(report.tries) == 1
    result = report.tries[0].steps[0]
    assert result.missing_command is True and result.returncode == 127
    assert report.verdict == "fail"
    assert report.environment_error is not None
    assert "no-such-ci-tool" in report.environment_error
    assert "retrying cannot fix" in feedback_for(report, tmp_path / "ci")


def test_exit_127_without_not_found_is_an_ordinary_failure(tmp_path: Path) -> None:
    report = ci(tmp_path, profile(CiStep(name="s", run="exit 127"), tries=2), tmp_path / "ci")
    assert report.environment_error is None
    assert len(report.tries) == 2


def test_steps_get_the_given_env_plus_the_try_number(tmp_path: Path) -> None:
    step = CiStep(name="env", run='echo "try=$AUTOPACK_CI_TRY given=$GIVEN"; exit 1')
    env = {"PATH": os.environ["PATH"], "GIVEN": "yes"}
    ci(tmp_path, profile(step, tries=2), tmp_path / "ci", env=env)
    assert "try=1 given=yes" in (tmp_path / "ci" / "try1-env.log").read_text()
    assert "try=2 given=yes" in (tmp_path / "ci" / "try2-env.log").read_text()


def test_default_env_is_scrubbed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_TEST_SECRET", "hunter2")
    step = CiStep(name="env", run='echo "secret=[$AUTOPACK_TEST_SECRET]"')
    ci(tmp_path, profile(step), tmp_path / "ci")
    assert "secret=[]" in (tmp_path / "ci" / "try1-env.log").read_text()


def test_bad_phase_id_is_refused_before_anything_runs(tmp_path: Path) -> None:
    step = CiStep(name="s", run="touch ran")
    with pytest.raises(InvalidInput, match="phase id"):
        run_ci(profile=profile(step), profile_name="normal", worktree=tmp_path,
               out_dir=tmp_path / "ci", phase_id="../x", attempt=1)
    assert not (tmp_path / "ran").exists()


def test_missing_worktree_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="is not a directory"):
        ci(tmp_path / "nope", profile(CiStep(name="s", run="true")), tmp_path / "ci")


# --------------------------------------------------------------------------- JUnit files


def test_truncated_junit_fails_the_step_without_crashing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text('<?xml version="1.0"?><testsuites><testsuite name="pytest"><testcase cla')
    out = tmp_path / "ci"
    report = ci(tmp_path, profile(junit_step(bad), tries=1), out)

    step = report.tries[0].steps[0]
    assert step.returncode == 0 and step.tests == []
    assert step.junit == "try1-report.junit.xml"
    assert report.verdict == "fail"
    assert "is unreadable" in (out / step.log).read_text()
    assert "is unreadable" in feedback_for(report, out)


def test_junit_with_a_foreign_root_element_fails_the_step(tmp_path: Path) -> None:
    odd = tmp_path / "odd.xml"
    odd.write_text("<coverage/>")
    report = ci(tmp_path, profile(junit_step(odd), tries=1), tmp_path / "ci")
    assert report.verdict == "fail" and report.tries[0].steps[0].tests == []


def test_junit_path_with_a_space_is_quoted(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", GREEN_TESTS)
    out = tmp_path / "ci out" / "attempt 1"
    report = ci(wt, profile(pytest_step(), tries=1), out)

    step = report.tries[0].steps[0]
    assert report.verdict == "pass"
    assert (out / "try1-tests.junit.xml").is_file()
    assert len(step.tests) == 2


def test_node_ids_for_other_junit_shapes(tmp_path: Path) -> None:
    xml = tmp_path / "shapes.xml"
    xml.write_text(textwrap.dedent("""\
        <?xml version="1.0" encoding="utf-8"?>
        <testsuite name="mixed">
          <testcase classname="com.example.FooTest" name="testBar"/>
          <testcase classname="" name="tests.test_broken">
            <error message="collection failure">SyntaxError</error>
          </testcase>
          <testcase classname="pkg.test_x.TestA" name="test_b" file="pkg/test_x.py">
            <skipped message="not today"/>
          </testcase>
          <testsuite name="nested">
            <testcase classname="sub.checks" name="it_works"/>
          </testsuite>
        </testsuite>
        """))
    report = ci(tmp_path, profile(junit_step(xml), tries=1), tmp_path / "ci")
    tests = {t.node_id: t for t in report.tries[0].steps[0].tests}

    assert set(tests) == {
        "com.example.FooTest::testBar",          # not a Python test module
        "tests/test_broken.py",                  # pytest's collection error
        "pkg/test_x.py::TestA::test_b",          # xunit1 `file` attribute
        "sub.checks::it_works",                  # nested suite, not a test module
    }
    assert tests["tests/test_broken.py"].outcome == "error"
    assert tests["pkg/test_x.py::TestA::test_b"].message == "not today"
    assert report.failing_tests == ["tests/test_broken.py"]


def test_module_found_in_the_worktree_wins_over_the_name_rule(tmp_path: Path) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "smoke.py").write_text("")
    xml = tmp_path / "smoke.xml"
    xml.write_text('<testsuite><testcase classname="checks.smoke.TestS" name="test_up"/>'
                   "</testsuite>")
    report = ci(tmp_path, profile(junit_step(xml), tries=1), tmp_path / "ci")
    assert [t.node_id for t in report.tries[0].steps[0].tests] == [
        "checks/smoke.py::TestS::test_up"
    ]


def test_stale_junit_from_an_earlier_run_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "ci"
    out.mkdir()
    (out / "try1-tests.junit.xml").write_text(
        '<testsuite><testcase classname="t.test_old" name="test_gone"><failure/></testcase>'
        "</testsuite>"
    )
    report = ci(tmp_path, profile(CiStep(name="tests", run="true")), out)
    assert report.verdict == "pass"
    assert report.tries[0].steps[0].junit is None


def test_step_names_that_sanitise_alike_keep_separate_logs(tmp_path: Path) -> None:
    a = CiStep(name="unit tests", run="echo A")
    b = CiStep(name="unit/tests", run="echo B")
    report = ci(tmp_path, profile(a, b), tmp_path / "ci")
    logs = [s.log for s in report.tries[0].steps]
    assert logs == ["try1-unit_tests.log", "try1-unit_tests-2.log"]
    assert [(tmp_path / "ci" / log).read_text().strip() for log in logs] == ["A", "B"]


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_for_the_same_failure_and_differs_otherwise(
    tmp_path: Path,
) -> None:
    wt = make_project(tmp_path / "wt", RED_TESTS)
    first = ci(wt, profile(pytest_step(), tries=1), tmp_path / "ci1")
    second = ci(wt, profile(pytest_step(), tries=1), tmp_path / "ci2")
    assert fingerprint(first) == fingerprint(second)
    assert len(fingerprint(first)) == 64

    (wt / "tests" / "test_mod.py").write_text(RED_TESTS.replace("test_wrong", "test_other"))
    other_test = ci(wt, profile(pytest_step(), tries=1), tmp_path / "ci3")
    lint = ci(wt, profile(CiStep(name="lint", run="exit 1"), tries=1), tmp_path / "ci4")
    timeout = ci(wt, profile(CiStep(name="lint", run="sleep 5", timeout_s=1), tries=1),
                 tmp_path / "ci5")
    prints = {fingerprint(r) for r in (first, other_test, lint, timeout)}
    assert len(prints) == 4


# --------------------------------------------------------------------------- built-in profiles


def builtin_profiles() -> dict[str, CiProfile]:
    raw = yaml.safe_load((REPO / "pipeline" / "data" / "ci.yaml").read_text())
    return {name: CiProfile.model_validate(body) for name, body in raw.items()}


def test_builtin_profiles_validate() -> None:
    profiles = builtin_profiles()
    assert set(profiles) == {"normal", "strict"}
    normal, strict = profiles["normal"], profiles["strict"]
    assert [s.name for s in normal.steps] == ["tests"] and normal.static_checks == []
    assert normal.steps[0].timeout_s == 900 and normal.preflight_attempts == 3
    assert [s.name for s in strict.static_checks] == ["compile"]
    assert strict.steps == normal.steps and strict.preflight_attempts == 3


def test_builtin_normal_profile_runs_a_real_project(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", RED_TESTS)
    # `python` in the profile is whatever the environment's PATH finds: put ours first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    prof = builtin_profiles()["normal"].model_copy(update={"preflight_attempts": 1})
    report = ci(wt, prof, tmp_path / "ci", env={"PATH": path})
    assert report.failing_tests == ["tests/test_mod.py::test_wrong"]


def test_builtin_strict_static_check_compiles_and_skips_hidden_dirs(tmp_path: Path) -> None:
    wt = make_project(tmp_path / "wt", GREEN_TESTS)
    (wt / ".venv").mkdir()
    (wt / ".venv" / "old.py").write_text("print 'python 2'\n")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    checks = CiProfile(steps=builtin_profiles()["strict"].static_checks, preflight_attempts=1)
    assert ci(wt, checks, tmp_path / "ok", env={"PATH": path}).verdict == "pass"

    (wt / "broken.py").write_text("def (\n")
    assert ci(wt, checks, tmp_path / "bad", env={"PATH": path}).verdict == "fail"


def test_a_huge_junit_report_lists_failing_tests_and_counts_passing_ones(tmp_path: Path) -> None:
    from pipeline.ci.runner import MAX_LISTED_PASSES

    passing = MAX_LISTED_PASSES + 500
    ok = '<testcase classname="tests.test_big" name="test_ok_{}" file="tests/test_big.py"/>'
    cases = [ok.format(i) for i in range(passing)]
    cases += [
        f'<testcase classname="tests.test_big" name="test_bad_{i}" file="tests/test_big.py">'
        f'<failure message="boom {i}">trace</failure></testcase>'
        for i in range(3)
    ]
    xml = tmp_path / "big.xml"
    xml.write_text(f'<testsuites><testsuite name="big">{"".join(cases)}</testsuite></testsuites>')
    (tmp_path / "wt").mkdir()
    report = ci(tmp_path / "wt", profile(junit_step(xml, rc=1)), tmp_path / "ci")

    step = report.tries[-1].steps[0]
    assert step.passed_not_listed == passing
    assert sorted(t.node_id for t in step.tests) == [f"tests/test_big.py::test_bad_{i}" for i in range(3)]
    assert all(t.outcome == "failed" and t.message for t in step.tests)
    assert report.failing_tests == [f"tests/test_big.py::test_bad_{i}" for i in range(3)]
    written = len(report.model_dump_json())
    assert written < 20_000, f"ci.json stays small: {written} bytes"
