"""Every bad input is a clear error, found first (issue 12).

One table of hostile inputs across CLI arguments, plans, submitted patches and results,
the run record and JUnit reports. Each case runs the real command line (`python -m
pipeline`'s `main`, in process) in a started workspace and asserts the exit code (2 for
invalid input, 1 for a failed step), a message naming the input, and never a traceback
or exit 3. The workspace is shared; a case that damages the record puts it back.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.ci import runner as ci
from pipeline.commands.cli import main
from testing.gitrepo import IDENTITY, git
from testing.runs import RunSetup, make_workspace, python_step

Prepare = Callable[[RunSetup], Callable[[], None] | None]


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    says: str
    prepare: Prepare | None = None
    files: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunSetup]:
    root = tmp_path_factory.mktemp("hostile")
    home = root / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[init]\n\tdefaultBranch = main\n")
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("GIT_")]:
            mp.delenv(name)
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for k, v in IDENTITY.items():
            mp.setenv(k, v)
        setup = make_workspace(
            root, files={"mod.py": "X = 1\n"}, agent_body='write("mod.py", "X = 2\\n")',
            ci_steps=[python_step("import", "import mod")],
        )
        setup.start()
        git(setup.repo, "branch", "autonomous/taken", "main")
        git(setup.repo, "commit", "-q", "--allow-empty", "-m", "x")  # main moves on; the branch adds nothing
        git(setup.repo, "checkout", "-q", "-b", "autonomous/busy")
        git(setup.repo, "commit", "-q", "--allow-empty", "-m", "someone else's work")
        git(setup.repo, "checkout", "-q", "main")
        git(setup.repo, "tag", "autonomous/tagged/P1", "main")
        os.mkfifo(setup.workspace / "fifo")
        (setup.workspace / "a-dir").mkdir()
        yield setup


# -- building the inputs --------------------------------------------------------------------

GOOD_RESULT = b'{"status": "success", "usage": {"tokens_in": 10, "tokens_out": 2, "cost_usd": 0.1}}'
OK_PATCH = b"diff --git a/new.py b/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1 @@\n+A = 1\n"
GARBAGE = bytes(range(256)) * 8
BOMB = (
    b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
)


def plan_text(setup: RunSetup, run_id: str, edit: Callable[[str], str] = lambda t: t) -> bytes:
    text = setup.plan_path.read_text().replace("run_id: r1\n", f"run_id: {run_id}\n")
    return edit(text).encode()


def plan_case(case_id: str, run_id: str, says: str, edit: Callable[[str], str] | None = None,
              raw: bytes | None = None, command: str = "validate") -> Case:
    """A plan for `run_id` made by `edit` of the workspace's plan (or `raw` bytes)."""

    def prepare(setup: RunSetup) -> None:
        path = setup.workspace / "runs" / run_id / "plan.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw if raw is not None else plan_text(setup, run_id, edit or (lambda t: t)))

    return Case(case_id, (command, "--run", run_id), 2, says, prepare)


def replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new)

    return edit


def damage(rel: str, content: bytes | None, make_dir: bool = False) -> Prepare:
    """Replace runs/r1/<rel> with `content` (or a directory); the returned callable restores it."""

    def prepare(setup: RunSetup) -> Callable[[], None]:
        path = setup.run_dir / rel
        saved = path.read_bytes() if path.is_file() else None
        if path.is_file():
            path.unlink()
        if make_dir:
            path.mkdir()
        else:
            path.write_bytes(content or b"")

        def restore() -> None:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            if saved is not None:
                path.write_bytes(saved)

        return restore

    return prepare


def submit(patch: str = "ok.diff", result: str | None = None, phase: str = "P1") -> tuple[str, ...]:
    args = ("submit", "--run", "r1", "--phase", phase, "--patch", patch)
    return args + (("--result", result) if result else ())


def result_json(body: str) -> dict[str, bytes]:
    return {"ok.diff": OK_PATCH, "res.json": body.encode()}


def huge_spend(setup: RunSetup) -> Callable[[], None]:
    """run.json claiming 2^63 tokens spent (a hand edit, or a bug elsewhere)."""
    path = setup.run_dir / "run.json"
    saved = path.read_bytes()
    data = json.loads(saved)
    data["spend"]["tokens"] = 2**63
    path.write_text(json.dumps(data))
    return lambda: path.write_bytes(saved)


def _repo(text: str, repo: str) -> str:
    lines = [f"  repo: {repo}" if line.startswith("  repo: ") else line for line in text.split("\n")]
    return "\n".join(lines)


def _fifo_prepare(rel: str, setup: RunSetup) -> Callable[[], None]:
    path = setup.run_dir / rel
    saved = path.read_bytes()
    path.unlink()
    os.mkfifo(path)

    def restore() -> None:
        path.unlink()
        path.write_bytes(saved)

    return restore


def _fifo(rel: str) -> Prepare:
    return lambda setup: _fifo_prepare(rel, setup)


# -- the table ------------------------------------------------------------------------------

CLI_CASES = [
    Case("run-empty", ("run", "--run", ""), 2, "--run is empty"),
    Case("run_phase-empty", ("run_phase", "--run", ""), 2, "--run is empty"),
    Case("status-empty", ("status", "--run", ""), 2, "--run is empty"),
    Case("validate-empty", ("validate", "--run", ""), 2, "--run is empty"),
    Case("strategy-empty", ("strategy", "--run", ""), 2, "--run is empty"),
    Case("promote-empty", ("promote", "--run", ""), 2, "--run is empty"),
    Case("start_run-missing", ("start_run", "--run="), 2, "missing --run"),
    Case("run_phase-missing", ("run_phase",), 2, "missing --run"),
    Case("stray-empty-word", ("status", ""), 2, "empty string"),
    Case("phase-empty", ("submit", "--run", "r1", "--phase", "", "--patch", "x"), 2, "--phase is empty"),
    Case("run-not-started", ("run_phase", "--run", "nope"), 2, "run nope is not started"),
    Case("run-id-path", ("run_phase", "--run", "../etc"), 2, "invalid run id '../etc'"),
    Case("run-id-dot-lock", ("run_phase", "--run", "r1.lock"), 2, "ends with '.lock'"),
    Case("run-id-dotdot", ("status", "--run", "r1..2"), 2, "contains '..'"),
    Case("run-id-trailing-dot", ("strategy", "--run", "r1."), 2, "ends with '.'"),
    Case("run-id-space", ("run", "--run", "r 1"), 2, "invalid run id"),
    Case("unknown-phase", ("run_phase", "--run", "r1", "--phase", "P9"), 2, "has no phase 'P9'"),
    Case("unknown-task", ("no_such_task",), 2, ""),
    Case("unknown-option", ("status", "--bogus"), 2, "--bogus"),
    Case("metrics-unknown-runs", ("metrics_diff", "--a", "nope", "--b", "r1"), 2, "no run 'nope'"),
    Case("sql-empty", ("sql", "--query", ""), 2, "--query is empty"),
    Case("promote-not-started", ("promote", "--run", "nope"), 2, "nope"),
    Case("from-md-with-equals", ("new_run", "--run", "md1", "--from-md", "a=b.md"), 2, "a=b.md"),
    Case("new-run-bad-id", ("new_run", "--run", "x/y"), 2, "invalid run id"),
    Case("new-run-dot-lock", ("new_run", "--run", "x.lock"), 2, "ends with '.lock'"),
    Case("catalog-scan-unknown", ("catalog_scan", "--repo", "/nonexistent", "--feature", "nope"), 2, "nope"),
]

SUBMIT_CASES = [
    Case("submit-unknown-phase", submit(phase="P9"), 2, "has no phase 'P9'", files={"ok.diff": OK_PATCH}),
    Case("submit-phase-dot-lock", submit(phase="P1.lock"), 2, "P1.lock", files={"ok.diff": OK_PATCH}),
    Case("submit-missing-patch", submit("missing.diff"), 2, "missing.diff: file not found"),
    Case("submit-patch-dir", submit("a-dir"), 2, "a-dir: is a directory"),
    Case("submit-patch-fifo", submit("fifo"), 2, "fifo: is not a regular file"),
    Case("submit-patch-binary", submit("bin.diff"), 2, "not UTF-8", files={"bin.diff": GARBAGE}),
    Case("submit-patch-nul", submit("nul.diff"), 2, "NUL byte", files={"nul.diff": b"diff\x00\n"}),
    Case("submit-result-fifo", submit(result="fifo"), 2, "fifo: is not a regular file", files={"ok.diff": OK_PATCH}),
    Case("submit-result-dir", submit(result="a-dir"), 2, "a-dir: is a directory", files={"ok.diff": OK_PATCH}),
    Case("submit-result-missing", submit(result="no.json"), 2, "no.json: file not found", files={"ok.diff": OK_PATCH}),
    Case("submit-result-binary", submit(result="res.json"), 2, "not UTF-8",
         files={"ok.diff": OK_PATCH, "res.json": GARBAGE}),
    Case("submit-result-not-json", submit(result="res.json"), 2, "res.json", files=result_json("{not json")),
    Case("submit-result-list", submit(result="res.json"), 2, "res.json", files=result_json("[1, 2]")),
    Case("submit-result-huge-tokens", submit(result="res.json"), 2, "usage.tokens_in",
         files=result_json('{"usage": {"tokens_in": 9223372036854775808}}')),
    Case("submit-result-2-63", submit(result="res.json"), 2, "usage.tokens_out",
         files=result_json('{"usage": {"tokens_out": 9223372036854775807}}')),
    Case("submit-result-negative", submit(result="res.json"), 2, "usage.tokens_in",
         files=result_json('{"usage": {"tokens_in": -1}}')),
    Case("submit-result-huge-cost", submit(result="res.json"), 2, "usage.cost_usd",
         files=result_json('{"usage": {"cost_usd": 1e308}}')),
    Case("submit-result-deep", submit(result="res.json"), 2, "res.json",
         files=result_json("[" * 100000 + "]" * 100000)),
    Case("submit-result-unknown-key", submit(result="res.json"), 2, "res.json",
         files=result_json('{"status": "success", "extra": 1}')),
    Case("submit-result-bad-status", submit(result="res.json"), 2, "status", files=result_json('{"status": "great"}')),
]

PLAN_CASES = [
    plan_case("plan-binary", "pbin", "not UTF-8", raw=GARBAGE),
    plan_case("plan-alias-bomb", "pbomb", "alias *a inside an anchored node", raw=b"run_id: pbomb\n" + BOMB),
    plan_case("plan-many-aliases", "palias", "more than 64 YAML aliases",
              raw=b"run_id: palias\nx: &x 1\ny: [" + b", ".join([b"*x"] * 70) + b"]\n"),
    plan_case("plan-deep-flow", "pdeep", "nested more than 64 levels",
              raw=b"run_id: pdeep\nx: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
    plan_case("plan-deep-block", "pdeep2", "nested more than 64 levels",
              raw=b"run_id: pdeep2\n" + b"".join(b"  " * i + b"k:\n" for i in range(80)) + b"  " * 80 + b"v: 1\n"),
    plan_case("plan-huge", "phuge", "more than the", raw=b"run_id: phuge\n#" + b"x" * (5 * 1024 * 1024) + b"\n"),
    plan_case("plan-empty", "pempty", "pempty", raw=b""),
    plan_case("plan-a-list", "plist", "plist", raw=b"- 1\n- 2\n"),
    plan_case("plan-syntax", "psyn", "psyn/plan.yaml:", raw=b"run_id: psyn\ntiers: [\n"),
    plan_case("plan-conflict", "pconf", "merge conflict", raw=b"run_id: pconf\n<<<<<<< HEAD\n"),
    plan_case("plan-phase-dot-lock", "plock", "it ends with '.lock'", replace("phase_id: P1\n", "phase_id: P1.lock\n")),
    plan_case("plan-phase-dotdot", "pdots", "it contains '..'", replace("phase_id: P1\n", "phase_id: P1..2\n")),
    plan_case("plan-phase-trailing-dot", "ptrail", "it ends with '.'", replace("phase_id: P1\n", "phase_id: P1.\n")),
    plan_case("plan-tier-dot-lock", "ptier", "it ends with '.lock'", replace("tier_id: T1\n", "tier_id: T1.lock\n")),
    plan_case("plan-phase-slash", "pslash", "phase_id", replace("phase_id: P1\n", "phase_id: a/b\n")),
    plan_case("plan-run-id-mismatch", "pmis", "pmis", lambda t: t.replace("run_id: pmis\n", "run_id: other\n")),
    plan_case("target-missing", "tmiss", "does not exist", lambda t: _repo(t, "/nonexistent/repo")),
    plan_case("target-not-git", "tnogit", "is not a usable git repository", lambda t: _repo(t, "/")),
    plan_case("base-missing", "tbase", "'nosuch': no such branch", replace("base: main\n", "base: nosuch\n")),
    plan_case("base-option", "topt", "git would read it as an option",
              replace("base: main\n", "base: --output=/tmp/x\n")),
    plan_case("base-dash", "tdash", "git would read it as an option", replace("base: main\n", "base: -b\n")),
    plan_case("branch-exists", "busy", "branch autonomous/busy already exists"),
    plan_case("tag-exists", "tagged", "tag autonomous/tagged/P1 already exists"),
    plan_case("start-base-option", "sopt", "git would read it as an option",
              replace("base: main\n", "base: --output=/tmp/x\n"), command="start_run"),
    plan_case("start-phase-dot-lock", "slock", "it ends with '.lock'",
              replace("phase_id: P1\n", "phase_id: P1.lock\n"), command="start_run"),
    plan_case("start-tag-exists", "tagged", "tag autonomous/tagged/P1 already exists", command="start_run"),
    plan_case("start-alias-bomb", "sbomb", "alias *a inside an anchored node",
              raw=b"run_id: sbomb\n" + BOMB, command="start_run"),
]

RECORD_CASES = [
    Case("events-dir", ("run_phase", "--run", "r1"), 2, "event log is a directory",
         damage("events.jsonl", None, make_dir=True)),
    Case("events-dir-validate", ("validate", "--run", "r1"), 2, "event log is a directory",
         damage("events.jsonl", None, make_dir=True)),
    Case("lock-dir", ("run_phase", "--run", "r1"), 2, "the run lock is a directory", damage(".lock", None, True)),
    Case("run-json-binary", ("run_phase", "--run", "r1"), 2, "run.json: not UTF-8", damage("run.json", GARBAGE)),
    Case("run-json-dir", ("status", "--run", "r1"), 2, "run.json: is a directory", damage("run.json", None, True)),
    Case("run-json-truncated", ("run_phase", "--run", "r1"), 2, "run.json:1:", damage("run.json", b'{"run_id": ')),
    Case("run-json-deep", ("run_phase", "--run", "r1"), 2, "nested too deeply",
         damage("run.json", b"[" * 100000 + b"]" * 100000)),
    Case("run-json-fifo-validate", ("validate", "--run", "r1"), 2, "run.json", _fifo("run.json")),
    Case("phase-json-garbage", ("validate", "--run", "r1"), 2, "phase.json", damage("phases/01-P1/phase.json", b"{}")),
    # a tampered record is an integrity failure: a failed step (1), not a usage error
    Case("events-edited", ("run_phase", "--run", "r1"), 1, "events.jsonl",
         damage("events.jsonl", b'{"seq": 1}\n')),
    # validate, report, sql and metrics_diff agree: the same record is refused by each
    Case("huge-spend-validate", ("validate", "--run", "r1"), 2, "9223372036854775808 is too large", huge_spend),
    Case("huge-spend-status", ("status", "--run", "r1"), 2, "is too large", huge_spend),
    Case("huge-spend-report", ("report",), 2, "doit validate", huge_spend),
    Case("huge-spend-sql", ("sql", "--query", "FROM runs"), 2, "doit validate", huge_spend),
    Case("huge-spend-metrics-diff", ("metrics_diff", "--a", "r1", "--b", "r1"), 2, "doit validate", huge_spend),
    Case("plan-edited-after-start", ("run_phase", "--run", "r1"), 2, "changed after start_run",
         damage("plan.yaml", b"run_id: r1\n")),
]


CASES = CLI_CASES + SUBMIT_CASES + PLAN_CASES + RECORD_CASES


def test_the_table_has_at_least_sixty_cases() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_a_clear_error(
    case: Case, ws: RunSetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ws.workspace)
    for name, data in case.files.items():
        (ws.workspace / name).write_bytes(data)
    restore = case.prepare(ws) if case.prepare else None
    try:
        try:
            code = main(list(case.args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    finally:
        if restore:
            restore()
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert case.says in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if case.args[0] != "validate":  # validate lists every problem, one line each
        assert len(lines) <= 3, f"one line naming the input, its fix (doit: and a hint): {err}"
    for line in lines:
        assert len(line) < 2000, "a message names the input, it does not dump it"
    # nothing was changed: the started run is where it was
    assert ws.run_json()["state"] == "PHASE_QUEUEING"
    assert ws.phase_json("P1")["attempts"] == []


# -- JUnit reports a CI step leaves ----------------------------------------------------------

LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode() for i in range(1, 10)
    )
    + b']>\n<testsuite name="x"><testcase name="&lol9;"/></testsuite>\n'
)
XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>\n'
    b'<testsuite name="x"><testcase name="&e;"/></testsuite>\n'
)

JUNIT_CASES = {
    "garbage": GARBAGE,
    "truncated": b'<testsuite name="x"><testcase name="a"',
    "billion-laughs": LAUGHS,
    "external-entity": XXE,
    "not-junit": b"<html><body>hello</body></html>",
    "deep": b"<a>" * 50000 + b"</a>" * 50000,
}


@pytest.mark.parametrize("name", sorted(JUNIT_CASES))
def test_a_hostile_junit_report_is_a_note_not_a_crash(tmp_path: Path, name: str) -> None:
    path = tmp_path / "junit.xml"
    path.write_bytes(JUNIT_CASES[name])
    tests, problem = ci._parse_junit(path, tmp_path)
    assert problem or not tests, "a hostile report yields no tests, or says why it could not be read"
    assert all("root:" not in t.name for t in tests), "no external entity was read"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_junit_path_that_is_not_a_file_is_a_note(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "junit.xml"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    tests, problem = ci._parse_junit(path, tmp_path)
    assert tests == [] and problem and "junit.xml" in problem
