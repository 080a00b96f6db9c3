"""The verifier: runs a CI profile in a worktree and reports what it found (docs/architecture.md).

A *try* runs the profile's steps in order and stops at the first failing step. A red try is
retried up to `profile.preflight_attempts` times (the preflight gate): a test that failed in
an earlier try and passed in the last one is *flaky*. The `strict` profile does not forgive
flakes: a red try followed by a green one is still a failing verdict.

Red CI is an outcome, not an error: `run_ci` returns a `CiReport` whatever the steps did and
raises only for a caller's mistake (a worktree that does not exist).

Because a try stops at its first failing step, the failing step of a red try is always its
last step; `feedback_for` and `fingerprint` rely on that instead of storing a flag.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.core import sandbox
from pipeline.core.errors import AutopackError, InvalidInput
from pipeline.core.masking import mask_file
from pipeline.core.proc import scrubbed_env
from pipeline.models.base import ID_PATTERN
from pipeline.models.plan import CiProfile, CiStep
from pipeline.models.reports import CheckVerdict, CiReport, CiStepResult, CiTry, TestCaseResult

if TYPE_CHECKING:
    from junitparser import JUnitXml, TestCase

JUNIT_PLACEHOLDER = "{junit}"
TRY_ENV_VAR = "AUTOPACK_CI_TRY"
STRICT_PROFILE = "strict"

Outcome = Literal["passed", "failed", "error", "skipped"]
_FAILING: frozenset[str] = frozenset({"failed", "error"})

# A shell reports a missing executable as exit status 127 plus "...: not found".
_MISSING_COMMAND_RC = 127
# Long tracebacks would bloat ci.json; keep the head (the assertion) and the tail (the cause).
_MESSAGE_LIMIT = 4000
_FEEDBACK_MESSAGE_LIMIT = 1200
_FEEDBACK_MAX_TESTS = 20
_LOG_TAIL_LINES = 30
_LOG_LINE_LIMIT = 400
# pytest's default `python_files`: how a dotted classname's module part is recognised when
# the file is not in the worktree to check.
_TEST_MODULE = re.compile(r"^(test_\w*|\w+_test)$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class _StepRun:
    """A step's recorded result plus what the report needs but the model does not store."""

    result: CiStepResult
    failed: bool
    environment_error: str | None = None


# --------------------------------------------------------------------------- running


def run_ci(
    *,
    profile: CiProfile,
    profile_name: str,
    worktree: Path,
    out_dir: Path,
    phase_id: str,
    attempt: int,
    env: Mapping[str, str] | None = None,
    confinement: sandbox.Confinement = sandbox.UNCONFINED,
) -> CiReport:
    """Run `profile.steps` in `worktree`, retrying red tries, and summarise them.

    Logs and JUnit files go to `out_dir` as `try<n>-<step>.log` / `.junit.xml`; the
    report's paths are relative to `out_dir`. Steps get `env` (the scrubbed environment
    when None) plus `AUTOPACK_CI_TRY=<n>`. Each step runs in `confinement`'s sandbox,
    writing only the worktree, `out_dir` and its private temp dir.
    """
    # Checked up front: a bad id would otherwise surface only after the whole CI ran.
    if not re.match(ID_PATTERN, phase_id):
        raise InvalidInput(f"phase id {phase_id!r} does not match {ID_PATTERN}", "fix the plan")
    if not worktree.is_dir():
        raise InvalidInput(
            f"CI worktree {worktree} is not a directory",
            "create the run's worktree before running its CI profile",
        )
    # Steps run with cwd=worktree, so every path handed to them must be absolute.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    base_env = dict(env) if env is not None else scrubbed_env()
    tries: list[CiTry] = []
    environment_error: str | None = None
    for n in range(1, profile.preflight_attempts + 1):
        ci_try, environment_error = _run_try(n, profile.steps, worktree, out_dir, base_env, confinement)
        tries.append(ci_try)
        # A missing tool stays missing: retrying only burns the CI budget.
        if ci_try.verdict == "pass" or environment_error:
            break
    return _report(tries, profile_name, phase_id, attempt, environment_error)


def _run_try(
    n: int,
    steps: Sequence[CiStep],
    worktree: Path,
    out_dir: Path,
    env: Mapping[str, str],
    confinement: sandbox.Confinement,
) -> tuple[CiTry, str | None]:
    """One pass over the steps, stopping at the first that fails."""
    step_env = {**env, TRY_ENV_VAR: str(n)}
    results: list[CiStepResult] = []
    used: set[str] = set()
    for index, step in enumerate(steps):
        stem = _file_stem(n, index, step.name, used)
        outcome = _run_step(step, stem, worktree, out_dir, step_env, confinement)
        results.append(outcome.result)
        if outcome.failed:
            return CiTry(n=n, verdict="fail", steps=results), outcome.environment_error
    return CiTry(n=n, verdict="pass", steps=results), None


def _file_stem(n: int, index: int, name: str, used: set[str]) -> str:
    """`try<n>-<name>`, made safe for a file name and unique within the try."""
    safe = _UNSAFE_NAME_CHARS.sub("_", name).strip("._") or "step"
    stem = f"try{n}-{safe}"
    if stem in used:  # two names that sanitise alike must not overwrite each other's log
        stem = f"{stem}-{index + 1}"
    used.add(stem)
    return stem


def _run_step(
    step: CiStep, stem: str, worktree: Path, out_dir: Path, env: Mapping[str, str], confinement: sandbox.Confinement
) -> _StepRun:
    log_path = out_dir / f"{stem}.log"
    junit_path = out_dir / f"{stem}.junit.xml"
    # A stale report from an earlier invocation would be mistaken for this step's.
    junit_path.unlink(missing_ok=True)
    command = step.run.replace(JUNIT_PLACEHOLDER, shlex.quote(str(junit_path)))
    with confinement.jail(worktree, "ci", step.name, writable=[out_dir]) as jail:
        res = sandbox.run(jail, command, cwd=worktree, env=env, timeout_s=step.timeout_s, log_path=log_path)
    output = res.stdout + res.stderr
    notes: list[str] = []
    if res.stderr:  # proc.run could not start the shell at all; keep its reason in the log
        notes.append(res.stderr)
    if res.timed_out:
        notes.append(f"step {step.name!r} timed out after {step.timeout_s} s and was killed")
    missing = not res.timed_out and _is_missing_command(res.returncode, output)
    tests: list[TestCaseResult] = []
    junit_error: str | None = None
    if junit_path.is_file():
        tests, junit_error = _parse_junit(junit_path, worktree)
        if junit_error:
            notes.append(f"JUnit report {junit_path.name} is unreadable ({junit_error}); "
                         "the step counts as failed")
    _append_notes(log_path, notes)
    # The step ran the patch's code: what it printed is kept only with secrets masked.
    mask_file(log_path)
    if junit_path.is_file():
        mask_file(junit_path)
    result = CiStepResult(
        name=step.name,
        cmd=step.run,  # the template: the absolute JUnit path is machine-specific noise
        returncode=res.returncode,
        duration_s=round(res.duration_s, 3),
        timed_out=res.timed_out,
        missing_command=missing,
        junit=junit_path.name if junit_path.is_file() else None,
        log=log_path.name,
        tests=tests,
    )
    # A failing test counts even when the command's status hides it (`pytest | tee log`).
    failed = (
        not res.ok or junit_error is not None or any(t.outcome in _FAILING for t in tests)
    )
    env_error = _missing_command_message(step.name, output) if missing else None
    return _StepRun(result=result, failed=failed, environment_error=env_error)


def _is_missing_command(returncode: int, output: str) -> bool:
    return returncode == _MISSING_COMMAND_RC and "not found" in output.lower()


def _missing_command_message(step_name: str, output: str) -> str:
    line = next(
        (ln.strip() for ln in output.splitlines() if "not found" in ln.lower()), "not found"
    )
    return f"CI step {step_name!r} could not run: {line[:_LOG_LINE_LIMIT]}"


def _append_notes(log_path: Path, notes: Iterable[str]) -> None:
    """Supervisor remarks go into the step's log: it is the evidence the builder sees."""
    text = "".join(f"\n[autopack] {note}\n" for note in notes)
    if text:
        with log_path.open("a", encoding="utf-8") as fh:
            fh.write(text)


# --------------------------------------------------------------------------- JUnit

MAX_JUNIT_BYTES = 256 * 1024 * 1024


def _parse_junit(path: Path, worktree: Path) -> tuple[list[TestCaseResult], str | None]:
    """The test cases in a JUnit file, or no tests and the reason it could not be read."""
    from junitparser import JUnitXmlError, TestSuite

    from pipeline.core.inputs import read_regular

    try:
        # A CI step writes this file: a FIFO there would hang a plain open, a huge one
        # exhaust the memory.
        data = read_regular(path, "JUnit report", MAX_JUNIT_BYTES)
    except AutopackError as exc:
        return [], exc.message
    try:
        parsed = _junit_xml_class().fromstring(data)
        # junitparser < 4 returns a bare TestSuite when that is the root element.
        suites = [parsed] if isinstance(parsed, TestSuite) else list(parsed)
        tests = [_test_case(case, worktree) for suite in suites for case in suite]
    except (SyntaxError, JUnitXmlError, OSError, ValueError) as exc:
        # SyntaxError covers ElementTree's and lxml's parse errors (truncated files).
        return [], f"{type(exc).__name__}: {exc}"
    return tests, None


@functools.cache
def _junit_xml_class() -> type[JUnitXml]:
    """junitparser's reader, extended (its documented way) to read a test case's `file`.

    Built on first use: importing junitparser costs ~50 ms that a task without CI need
    not pay.
    """
    from junitparser import Attr, JUnitXml, TestCase, TestSuite

    class _Case(TestCase):
        file = Attr()  # pytest's xunit1 family writes it

    class _Suite(TestSuite):
        testcase = _Case

    class _Xml(JUnitXml):
        testsuite = _Suite

    return _Xml


def _test_case(case: TestCase, worktree: Path) -> TestCaseResult:
    outcome, message = _outcome(case)
    file = getattr(case, "file", None)
    node_id = _node_id(case.classname or "", case.name or "", file, worktree)
    return TestCaseResult(node_id=node_id, outcome=outcome, message=message)


def _outcome(case: TestCase) -> tuple[Outcome, str]:
    from junitparser import Error, Failure, Skipped

    results = case.result
    kinds: tuple[tuple[type[Failure | Error | Skipped], Outcome], ...] = (
        (Failure, "failed"), (Error, "error"), (Skipped, "skipped"),
    )
    for kind, outcome in kinds:
        hit = next((r for r in results if isinstance(r, kind)), None)
        if hit is not None:
            parts = [p.strip() for p in (hit.message or "", hit.text or "") if p and p.strip()]
            return outcome, _trim("\n".join(parts), _MESSAGE_LIMIT)
    return "passed", ""


def _node_id(classname: str, name: str, file: str | None, worktree: Path) -> str:
    """A pytest-style node id: `tests/test_x.py::Class::test_name` where recognisable.

    pytest's JUnit writes classname `tests.test_x[.Class]` and name `test_name`; a collection
    error has an empty classname and the module as name. Anything that does not look like a
    Python test module keeps `classname::name`.
    """
    parts = classname.split(".") if classname else []
    if file:
        module = file.removesuffix(".py").replace("/", ".").split(".")
        rest = parts[len(module):] if parts[: len(module)] == module else []
        return "::".join([file, *rest, name])
    if not parts:
        name_parts = name.split(".")
        k = _module_length(name_parts, worktree)
        return "/".join(name_parts) + ".py" if k == len(name_parts) else name
    k = _module_length(parts, worktree)
    if k == 0:
        return f"{classname}::{name}"
    return "::".join(["/".join(parts[:k]) + ".py", *parts[k:], name])


def _module_length(parts: Sequence[str], worktree: Path) -> int:
    """How many leading dotted parts name the module file (0: none recognised)."""
    for k in range(len(parts), 0, -1):  # longest first: a package dir beats a same-named file
        if worktree.joinpath(*parts[: k - 1], parts[k - 1] + ".py").is_file():
            return k
    for k in range(len(parts), 0, -1):
        if _TEST_MODULE.match(parts[k - 1]) and all(p.isidentifier() for p in parts[:k]):
            return k
    return 0


# --------------------------------------------------------------------------- verdict


def _report(
    tries: Sequence[CiTry],
    profile_name: str,
    phase_id: str,
    attempt: int,
    environment_error: str | None,
) -> CiReport:
    last = tries[-1]
    flaky = _flaky_tests(tries)
    failing = _failing_ids(last)
    strict = profile_name == STRICT_PROFILE
    verdict: CheckVerdict = last.verdict
    if strict:
        # A flake is a failure under strict; it is reported as failing and as flaky.
        failing |= set(flaky)
        if len(tries) > 1:
            verdict = "fail"
    return CiReport(
        phase_id=phase_id,
        attempt=attempt,
        profile=profile_name,
        verdict=verdict,
        tries=[_compact(t) for t in tries],
        failing_tests=sorted(failing) if verdict == "fail" else [],
        flaky_tests=flaky,
        environment_error=environment_error,
    )


# Passing tests listed per step in ci.json; beyond this they are only counted (a JUnit
# report of 150,000 tests made a 22 MB ci.json). Failing ones are always listed in full.
MAX_LISTED_PASSES = 2000


def _compact(ci_try: CiTry) -> CiTry:
    """`ci_try` with the passing tests of a step over MAX_LISTED_PASSES counted, not listed
    (called once flaky tests, which need them, are known)."""
    steps = []
    for step in ci_try.steps:
        passed = sum(1 for t in step.tests if t.outcome == "passed")
        if passed > MAX_LISTED_PASSES:
            kept = [t for t in step.tests if t.outcome != "passed"]
            step = step.model_copy(update={"tests": kept, "passed_not_listed": step.passed_not_listed + passed})
        steps.append(step)
    return ci_try.model_copy(update={"steps": steps})


def _failing_ids(ci_try: CiTry) -> set[str]:
    return {t.node_id for s in ci_try.steps for t in s.tests if t.outcome in _FAILING}


def _passed_ids(ci_try: CiTry) -> set[str]:
    passed = {t.node_id for s in ci_try.steps for t in s.tests if t.outcome == "passed"}
    return passed - _failing_ids(ci_try)


def _flaky_tests(tries: Sequence[CiTry]) -> list[str]:
    """Tests that failed in an earlier try and passed in the last one."""
    earlier: set[str] = set()
    for ci_try in tries[:-1]:
        earlier |= _failing_ids(ci_try)
    return sorted(earlier & _passed_ids(tries[-1]))


def _failing_step(report: CiReport) -> CiStepResult | None:
    """The step that ended the last red try (a try stops at its failing step)."""
    for ci_try in reversed(report.tries):
        if ci_try.verdict == "fail" and ci_try.steps:
            return ci_try.steps[-1]
    return None


def _failure_kind(step: CiStepResult) -> str:
    if step.missing_command:
        return "missing_command"
    if step.timed_out:
        return "timed_out"
    return "failed"


# --------------------------------------------------------------------------- summaries


def fingerprint(report: CiReport) -> str:
    """sha256 of the failing test ids and the failing step: equal for a repeated failure.

    Durations, messages and log text are left out so the same failure hashes the same.
    """
    if report.verdict == "pass":
        return hashlib.sha256(b"pass").hexdigest()
    step = _failing_step(report)
    payload = {
        "tests": sorted(report.failing_tests),
        "steps": [f"{step.name}:{_failure_kind(step)}"] if step else [],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def feedback_for(report: CiReport, out_dir: Path) -> str:
    """Text for the builder's next attempt: what failed, why, and the failing log's tail.

    `out_dir` is the directory `run_ci` wrote to (the report's log paths are relative to
    it). A passing report needs no feedback: the result is "".
    """
    if report.verdict == "pass":
        return ""
    tries = len(report.tries)
    lines = [f"CI profile {report.profile!r} failed ({tries} {'try' if tries == 1 else 'tries'})."]
    if report.environment_error:
        lines += [f"Environment problem: {report.environment_error}",
                  "A tool the CI profile needs is missing; retrying cannot fix that."]
    messages = _latest_messages(report)
    lines += _test_section("Failing tests:", report.failing_tests, messages)
    if report.flaky_tests and report.profile == STRICT_PROFILE:
        lines += _test_section(
            "Flaky tests (failed, then passed on a retry; the strict profile does not "
            "accept flakes):", report.flaky_tests, messages,
        )
    step = _failing_step(report)
    if step is not None:
        lines += _step_section(step, out_dir)
    return "\n".join(lines) + "\n"


def _latest_messages(report: CiReport) -> dict[str, str]:
    """Each failing test's message from the last try in which it failed."""
    messages: dict[str, str] = {}
    for ci_try in report.tries:
        for step in ci_try.steps:
            for t in step.tests:
                if t.outcome in _FAILING:
                    messages[t.node_id] = t.message
    return messages


def _test_section(title: str, node_ids: Sequence[str], messages: Mapping[str, str]) -> list[str]:
    if not node_ids:
        return []
    lines = ["", title]
    for node_id in node_ids[:_FEEDBACK_MAX_TESTS]:
        lines.append(f"- {node_id}")
        message = _trim(messages.get(node_id, ""), _FEEDBACK_MESSAGE_LIMIT)
        lines += [f"    {ln}" for ln in message.splitlines()]
    if len(node_ids) > _FEEDBACK_MAX_TESTS:
        lines.append(f"- ... and {len(node_ids) - _FEEDBACK_MAX_TESTS} more")
    return lines


def _step_section(step: CiStepResult, out_dir: Path) -> list[str]:
    if step.missing_command:
        why = "a command was not found"
    elif step.timed_out:
        why = "timed out"
    else:
        why = f"exit status {step.returncode}"
    lines = ["", f"Failing step: {step.name} ({why})", f"Command: {step.cmd}"]
    lines += ["", f"Last {_LOG_TAIL_LINES} lines of {step.log}:"]
    lines += [f"    {ln}" for ln in _log_tail(out_dir / step.log)]
    return lines


def _log_tail(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return [f"(log unavailable: {exc})"]
    tail = text.rstrip("\n").splitlines()[-_LOG_TAIL_LINES:]
    return [ln if len(ln) <= _LOG_LINE_LIMIT else ln[:_LOG_LINE_LIMIT] + " …" for ln in tail]


def _trim(text: str, limit: int) -> str:
    """At most about `limit` characters, keeping the head and the tail of the text."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return text[:head] + "\n… [trimmed] …\n" + text[-(limit - head):]
