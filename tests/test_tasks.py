"""The task interface (README.md, The plan; docs/architecture.md, Exit codes) through real subprocesses, both ways in.

`python -m pipeline <task> ...` runs with cwd = a temp workspace (a real git repository),
and the real `doit` binary runs with a `dodo.py` and the `pyproject.toml` snippet that
makes `doit run --run R` reach the run task. Exit codes: 0 ok, 1 a failed step,
2 invalid input (`error: ...` + `  fix: ...` on stderr), 3 an internal bug. No user
mistake ever yields a traceback.

The workspaces are module-scoped (each subprocess costs ~0.3-2 s, most of it start-up):
`planned` holds a fresh `new_run` plan, `started` a run started from an edited copy of it.
Tests that edit a file restore it before they end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testing.gitrepo import IDENTITY, git, make_repo, tree_snapshot, write_script

MAIN_REPO = Path(__file__).resolve().parents[1]
DOIT = Path(sys.executable).parent / "doit"
RUN = "demo1"
PLAN = f"runs/{RUN}/plan.yaml"
DOIT_PLUGIN = '[tool.doit.plugins.command]\nrun = "autopack_tasks:RunCommand"\n'
# Workspace entries the supervisor itself adds (the backlog is derived at every start_run);
# everything else is the user's.
OWN = ("runs", ".autopack", ".doit.db", "reports/project_issue_backlog.json")


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """An isolated environment for the subprocesses (and for git calls made here).

    Module-scoped fixtures run before conftest's per-test isolation, so this sets the same
    isolation itself: no home or system git config, a fixed identity.
    """
    home = tmp_path_factory.mktemp("tasks-home")
    cfg = home / ".gitconfig"
    cfg.write_text("[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n")
    out = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    out.update({"GIT_CONFIG_GLOBAL": str(cfg), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(home), **IDENTITY})
    out.pop("NO_COLOR", None)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("GIT_")]:
            mp.delenv(name)
        for k, v in out.items():
            mp.setenv(k, v)
        yield out


def _check(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert "Traceback" not in done.stderr, done.stderr
    assert "Traceback" not in done.stdout, done.stdout
    return done


def pipeline(ws: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline ARGS` in `ws`."""
    cmd = [sys.executable, "-m", "pipeline", *args]
    return _check(subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120, check=False))


def doit(ws: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The real `doit` binary in `ws` (which holds dodo.py and pyproject.toml)."""
    cmd = [str(DOIT), *args]
    return _check(subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=120, check=False))


def _fails(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """Assert exit `code` with a one-line `error:` and a `fix:`; return stderr."""
    assert done.returncode == code, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.stderr.startswith("error: "), done.stderr
    assert "\n  fix: " in done.stderr, done.stderr
    for needle in needles:
        assert needle in done.stderr, f"{needle!r} not in:\n{done.stderr}"
    return done.stderr


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def _user_files(ws: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_snapshot(ws).items() if not k.startswith(OWN)}


def _user_state(ws: Path) -> dict[str, object]:
    """What a run must leave alone in the user's checkout (docs/architecture.md, Invariants)."""
    return {
        "files": _user_files(ws),
        "head": git(ws, "rev-parse", "HEAD"),
        "branch": git(ws, "symbolic-ref", "HEAD"),
        "main": git(ws, "rev-parse", "refs/heads/main"),
        "index": git(ws, "ls-files", "-s"),
        "staged": git(ws, "diff", "--cached"),
        "unstaged": git(ws, "diff"),
        "stash": git(ws, "stash", "list"),
    }


def _workspace(root: Path) -> Path:
    """A user's repository: committed files, one staged change, one unstaged, one untracked."""
    ws = make_repo(root, {"README.md": "sample\n", "src/lib.py": "VALUE = 1\n", "notes.txt": "a\n"})
    (ws / "notes.txt").write_text("a\nstaged\n")
    git(ws, "add", "notes.txt")
    (ws / "src" / "lib.py").write_text("VALUE = 2  # the user's unsaved work\n")
    (ws / "scratch.txt").write_text("untracked, the user's\n")
    return ws


def _builder(directory: Path) -> Path:
    """A trivial passing agent: writes one file named after the phase, reports usage."""
    return write_script(
        directory / "agent.py",
        f"#!{sys.executable}\n"
        "import json, os, pathlib\n"
        "phase = os.environ['AUTOPACK_PHASE_ID']\n"
        "pathlib.Path(f'out-{phase}.txt').write_text(f'built {phase}\\n')\n"
        "pathlib.Path(os.environ['AUTOPACK_RESULT']).write_text(json.dumps(\n"
        "    {'status': 'success', 'usage': {'tokens_in': 10, 'tokens_out': 5, 'cost_usd': 0.0}}))\n",
    )


def _runnable(plan_text: str, agent: Path) -> str:
    """Hand edits of a `new_run` plan: a real builder, CI step `true`, a second tier."""
    text, n = re.subn(r"(?m)^(\s+command:) .*$", rf"\1 {agent}", plan_text)
    assert n == 1, plan_text
    return (
        text
        + """\
  - tier_id: T2
    name: Second tier
    phases:
      - phase_id: F2.1
        name: Document it
        description: Write the docs.
        task_category: docs
        scope: {allow: ["**"]}
ci:
  normal:
    steps:
      - {name: noop, run: "true"}
"""
    )


@dataclass(frozen=True)
class Planned:
    ws: Path
    new_run: subprocess.CompletedProcess[str]
    plan_text: str


@dataclass(frozen=True)
class Started:
    ws: Path
    before: dict[str, object]
    start: subprocess.CompletedProcess[str]
    plan_text: str


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Planned:
    ws = _workspace(tmp_path_factory.mktemp("planned") / "ws")
    done = pipeline(ws, env, "new_run", "--run", RUN)
    text = (ws / PLAN).read_text() if (ws / PLAN).exists() else ""
    return Planned(ws, done, text)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str], planned: Planned) -> Started:
    root = tmp_path_factory.mktemp("started")
    ws = _workspace(root / "ws")
    plan = ws / PLAN
    plan.parent.mkdir(parents=True)
    plan.write_text(_runnable(planned.plan_text, _builder(root / "agents")))
    before = _user_state(ws)
    done = pipeline(ws, env, "start_run", "--run", RUN)
    return Started(ws, before, done, plan.read_text())


@pytest.fixture
def restore() -> Iterator[list[Path]]:
    """Files a test edits (through `_edit`): put back byte for byte when it ends."""
    paths: list[Path] = []
    yield paths
    for p in reversed(paths):
        backup = p.with_name(p.name + ".test-backup")
        if backup.exists():
            os.replace(backup, p)


def _edit(restore: list[Path], path: Path, old: str, new: str) -> None:
    backup = path.with_name(path.name + ".test-backup")
    shutil.copy2(path, backup)
    restore.append(path)
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {path}"
    path.write_text(text.replace(old, new))


# -- new_run / validate ------------------------------------------------------------------


def test_new_run_writes_a_plan_that_validates(planned: Planned, env: dict[str, str]) -> None:
    assert _ok(planned.new_run).startswith(f"wrote {PLAN}")
    assert planned.plan_text.startswith("#"), "the plan starts with its how-to comment"
    assert f"run_id: {RUN}" in planned.plan_text
    assert "ok" in _ok(pipeline(planned.ws, env, "validate", "--run", RUN))


def test_new_run_refuses_to_overwrite(planned: Planned, env: dict[str, str]) -> None:
    _fails(pipeline(planned.ws, env, "new_run", "--run", RUN), 2, PLAN, "not overwriting")
    assert (planned.ws / PLAN).read_text() == planned.plan_text


def test_hand_edit_error_is_located_and_refused(planned: Planned, env: dict[str, str], restore: list[Path]) -> None:
    plan = planned.ws / PLAN
    _edit(restore, plan, "complexity: medium", "complexity: hgh")
    lines = plan.read_text().splitlines()
    lineno = next(i for i, line in enumerate(lines, 1) if "complexity: hgh" in line)
    key_col = lines[lineno - 1].index("complexity") + 1
    value_col = lines[lineno - 1].index("hgh") + 1
    message = "$.tiers[0].phases[0].complexity: 'hgh' is not one of ['low', 'medium', 'high']"

    err = _fails(pipeline(planned.ws, env, "validate", "--run", RUN), 2, f"{PLAN}:{lineno}:")
    located = re.search(rf"{re.escape(PLAN)}:{lineno}:(\d+): (.*)", err)
    assert located, err
    assert int(located.group(1)) in (key_col, value_col), err
    assert located.group(2) == message, err

    before = _user_state(planned.ws)
    err = _fails(pipeline(planned.ws, env, "start_run", "--run", RUN), 2, f"{PLAN}:{lineno}:", message)
    assert not (planned.ws / "runs" / RUN / "run.json").exists()
    assert not (planned.ws / "runs" / RUN / "events.jsonl").exists()
    assert git(planned.ws, "branch", "--list", f"autonomous/{RUN}") == ""
    assert _user_state(planned.ws) == before


# -- start_run ---------------------------------------------------------------------------


def test_start_run_freezes_records_and_branches(started: Started) -> None:
    out = _ok(started.start)
    assert f"run {RUN} started" in out
    run_dir = started.ws / "runs" / RUN
    for name in ("run.json", "strategy.json", "events.jsonl", "run_issue_index.json"):
        assert (run_dir / name).is_file(), name
    run = json.loads((run_dir / "run.json").read_text())
    assert run["state"] == "PHASE_QUEUEING"
    assert run["branch"] == f"autonomous/{RUN}"
    assert run["base_ref"] == "main"
    assert [p["phase_id"] for p in run["phases"]] == ["F1.1", "F2.1"]

    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert len(events) >= 2
    moves = [(e["from_state"], e["to_state"]) for e in events[:2]]
    assert moves == [("PLAN_BOOTSTRAP", "RUN_CREATED"), ("RUN_CREATED", "PHASE_QUEUEING")]
    assert run["events_count"] == len(events)

    ws = started.ws
    assert git(ws, "rev-parse", "--verify", f"refs/heads/autonomous/{RUN}")
    assert git(ws, "merge-base", "--is-ancestor", "main", f"autonomous/{RUN}") == ""
    # The user's branch, HEAD, index, staged/unstaged/untracked work: exactly as before.
    assert _user_state(ws) == started.before
    assert (ws / "scratch.txt").read_text() == "untracked, the user's\n"


def test_second_start_run_is_refused(started: Started, env: dict[str, str]) -> None:
    run_json = started.ws / "runs" / RUN / "run.json"
    before = run_json.read_bytes()
    _fails(pipeline(started.ws, env, "start_run", "--run", RUN), 2, "already started")
    assert run_json.read_bytes() == before


def test_worktree_is_invisible_to_the_users_git_status(started: Started) -> None:
    assert started.start.returncode == 0
    untracked = git(started.ws, "status", "--porcelain", "--untracked-files=all")
    assert ".autopack" not in untracked, untracked
    assert f"runs/{RUN}/.lock" not in untracked, untracked


# -- status / strategy -------------------------------------------------------------------


def test_status_table(started: Started, env: dict[str, str]) -> None:
    run = json.loads((started.ws / "runs" / RUN / "run.json").read_text())
    out = _ok(pipeline(started.ws, env, "status", "--run", RUN))
    assert run["state"] in out.splitlines()[0]
    lines = out.splitlines()
    header = next(line for line in lines if "attempts" in line)
    for column in ("state", "attempts", "tokens"):
        assert column in header
    assert any(line.split()[:2] == ["tier", "T1"] for line in lines), out
    assert any(line.split()[:2] == ["tier", "T2"] for line in lines), out
    for phase in run["phases"]:
        row = next((line.split() for line in lines if line.split()[:1] == [phase["phase_id"]]), None)
        assert row is not None, out
        assert phase["state"] in row
        assert str(phase["attempts"]) in row[row.index(phase["state"]) + 1 :]
        assert str(phase["tokens"]) in row[row.index(phase["state"]) + 1 :]


def test_status_json_and_run_list(started: Started, env: dict[str, str]) -> None:
    data = json.loads(_ok(pipeline(started.ws, env, "status", "--run", RUN, "--json")))
    assert data["run_id"] == RUN
    assert data == json.loads((started.ws / "runs" / RUN / "run.json").read_text())
    listed = json.loads(_ok(pipeline(started.ws, env, "status", "--json")))
    assert [r["run_id"] for r in listed] == [RUN]

    out = _ok(pipeline(started.ws, env, "status"))
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == [RUN])
    assert data["state"] in row


def test_status_of_unknown_run(started: Started, env: dict[str, str]) -> None:
    _fails(pipeline(started.ws, env, "status", "--run", "nope"), 2, "nope")


def test_status_without_runs(tmp_path: Path, env: dict[str, str]) -> None:
    assert "no runs" in _ok(pipeline(tmp_path, env, "status"))


def test_strategy_gives_each_value_its_reason(started: Started, env: dict[str, str]) -> None:
    out = _ok(pipeline(started.ws, env, "strategy", "--run", RUN))
    strategy = json.loads((started.ws / "runs" / RUN / "strategy.json").read_text())
    assert "frozen at start_run" in out.splitlines()[0]
    lines = out.splitlines()
    for ps in strategy["phases"]:
        start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["phase", ps["phase_id"]])
        block = []
        for line in lines[start + 1 :]:
            if not line.startswith("    "):
                break
            block.append(line)
        fields = {line.split()[0]: line for line in block}
        for field in ("task_category", "complexity", "builder_mode", "ci_profile", "auto_apply"):
            assert field in fields, out
            assert re.search(r"\(\S[^()]*\)\s*$", fields[field]), fields[field]
        assert str(ps["task_category"]) in fields["task_category"]
        assert "(plan)" in fields["task_category"]
    assert "F2.1" in out and "docs" in out


# -- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("task", ["new_run", "start_run", "run_phase", "run_all", "strategy", "submit"])
def test_missing_run_option(task: str, tmp_path: Path, env: dict[str, str]) -> None:
    _fails(pipeline(tmp_path, env, task), 2, "missing --run", "--run ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("task", ["new_run", "validate", "start_run", "run_phase", "status", "strategy"])
def test_invalid_run_id_touches_no_path(task: str, tmp_path: Path, env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    _fails(pipeline(ws, env, task, "--run", "../x"), 2, "invalid run id '../x'")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [p.name for p in ws.iterdir() if not p.name.startswith(".doit.db")] == []


# -- a started run's record is protected --------------------------------------------------


def test_edited_plan_after_start_is_refused(started: Started, env: dict[str, str], restore: list[Path]) -> None:
    run_json = started.ws / "runs" / RUN / "run.json"
    before = run_json.read_bytes()
    _edit(restore, started.ws / PLAN, "name: Document it", "name: Document it all")
    _fails(pipeline(started.ws, env, "run_phase", "--run", RUN), 2, PLAN, "frozen")
    assert run_json.read_bytes() == before


def test_validate_reports_an_edited_frozen_plan(started: Started, env: dict[str, str], restore: list[Path]) -> None:
    _edit(restore, started.ws / PLAN, "name: Document it", "name: Document it all")
    _fails(pipeline(started.ws, env, "validate", "--run", RUN), 2, PLAN, "frozen")


def test_validate_detects_one_edited_byte_of_the_event_log(
    started: Started, env: dict[str, str], restore: list[Path]
) -> None:
    assert "ok" in _ok(pipeline(started.ws, env, "validate", "--run", RUN))
    events = started.ws / "runs" / RUN / "events.jsonl"
    first = events.read_text().splitlines()[0]
    ts = re.search(r'"ts":"[^"]*(\d)Z"', first)
    assert ts
    digit = ts.group(1)
    old = first[: ts.end()]
    _edit(restore, events, old, old[:-2] + str((int(digit) + 1) % 10) + "Z")
    _fails(pipeline(started.ws, env, "validate", "--run", RUN), 2, f"runs/{RUN}/events.jsonl:1:")


# -- the doit binary ----------------------------------------------------------------------


def test_doit_binary_drives_a_run_to_success(tmp_path: Path, env: dict[str, str], planned: Planned) -> None:
    ws = _workspace(tmp_path / "ws")
    before = _user_state(ws)
    before_files = _user_files(ws)
    shutil.copy(MAIN_REPO / "dodo.py", ws / "dodo.py")
    dodo = (ws / "dodo.py").read_bytes()
    (ws / "pyproject.toml").write_text(DOIT_PLUGIN)
    (ws / PLAN).parent.mkdir(parents=True)
    (ws / PLAN).write_text(_runnable(planned.plan_text, _builder(tmp_path / "agents")))

    assert f"run {RUN} started" in _ok(doit(ws, env, "start_run", "--run", RUN))
    out = _ok(doit(ws, env, "run", "--run", RUN))
    assert f"run {RUN}: DONE_SUCCESS" in out

    run = json.loads((ws / "runs" / RUN / "run.json").read_text())
    assert run["state"] == "DONE_SUCCESS"
    assert [p["state"] for p in run["phases"]] == ["COMPLETE", "COMPLETE"]
    branch = f"autonomous/{RUN}"
    for phase in ("F1.1", "F2.1"):
        assert git(ws, "rev-parse", "--verify", f"refs/tags/{branch}/{phase}^{{commit}}")
        assert git(ws, "show", f"{branch}:out-{phase}.txt") == f"built {phase}"
    assert "DONE_SUCCESS" in _ok(doit(ws, env, "status", "--run", RUN))
    # main and the user's checkout are untouched (dodo.py/pyproject.toml are the user's own).
    expected = {**before, "files": {**before_files, "dodo.py": dodo, "pyproject.toml": DOIT_PLUGIN.encode()}}
    assert _user_state(ws) == expected
    # Finished: driving it again is a no-op that still reports success.
    assert "DONE_SUCCESS" in _ok(doit(ws, env, "run", "--run", RUN))


def test_doit_unknown_task_fails(tmp_path: Path, env: dict[str, str]) -> None:
    shutil.copy(MAIN_REPO / "dodo.py", tmp_path / "dodo.py")
    done = doit(tmp_path, env, "no_such_task")
    assert done.returncode != 0
    assert "no_such_task" in done.stderr


def test_module_unknown_task_is_invalid_input(tmp_path: Path, env: dict[str, str]) -> None:
    done = pipeline(tmp_path, env, "no_such_task")
    assert done.returncode == 2, done.stderr
    assert "no_such_task" in done.stderr and 'Type "python -m pipeline list"' in done.stderr
    assert pipeline(tmp_path, env, "status", "--no-such-option").returncode == 2


def test_module_help_names_the_module(tmp_path: Path, env: dict[str, str]) -> None:
    out = _ok(pipeline(tmp_path, env, "help"))
    assert "python -m pipeline run " in out and "__main__.py" not in out


def test_report_in_a_workspace_without_runs(tmp_path: Path, env: dict[str, str]) -> None:
    # the report's own behaviour is covered in tests/test_reports.py
    assert "0 run(s)" in _ok(pipeline(tmp_path, env, "report"))
    assert (tmp_path / "reports" / "index.html").is_file()


def test_status_into_a_closed_pipe_is_not_an_internal_error(started: Started, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "status", "--json"],
        cwd=started.ws,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader went away before anything was written (`| head -0`)
    _, err = proc.communicate(timeout=60)
    assert "internal error" not in err, err
    assert proc.returncode != 3


# -- schemas -----------------------------------------------------------------------------


def test_schemas_task_writes_the_committed_schemas(tmp_path: Path, env: dict[str, str]) -> None:
    out = _ok(pipeline(tmp_path, env, "schemas"))
    assert "schemas/" in out
    written = {p.name: p.read_bytes() for p in (tmp_path / "schemas").iterdir()}
    committed = {p.name: p.read_bytes() for p in (MAIN_REPO / "schemas").iterdir()}
    assert sorted(written) == sorted(committed)
    for name in committed:
        assert written[name] == committed[name], f"schemas/{name} differs: run `doit schemas` in the repository"
