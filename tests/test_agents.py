"""pipeline.agents.runner: real subprocess agents (small scripts in temp dirs), no mocks."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from pipeline.agents.runner import AGENT_ENV_ALLOW, AgentOutcome, Role, run_agent
from pipeline.core.errors import EnvironmentProblem, InvalidInput
from pipeline.models.plan import AgentSpec
from pipeline.models.results import AuditorResult, BuilderResult
from testing.gitrepo import write_script


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    """A worktree, and an attempt directory outside it (where logs and results go)."""
    worktree = tmp_path / "worktree"
    worktree.mkdir()
    attempt = tmp_path / "run" / "attempts" / "1"
    return {"worktree": worktree, "attempt": attempt, "tmp": tmp_path}


def _python_agent(tmp: Path, body: str) -> AgentSpec:
    script = tmp / "agents" / f"agent_{abs(hash(body))}.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import json, os, sys\n" + body)
    return AgentSpec(command=f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}")


def _run(
    dirs: dict[str, Path],
    spec: AgentSpec,
    *,
    role: Role = "builder",
    timeout_s: int = 30,
    result_path: Path | None = None,
    env_vars: dict[str, str] | None = None,
) -> AgentOutcome:
    attempt = dirs["attempt"]
    return run_agent(
        spec=spec,
        role=role,
        worktree=dirs["worktree"],
        env_vars=env_vars if env_vars is not None else {"AUTOPACK_PHASE_ID": "P1"},
        timeout_s=timeout_s,
        log_path=attempt / f"{role}.log",
        result_path=result_path or attempt / "result.json",
    )


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


# --- a well-behaved agent ---------------------------------------------------------------

def test_agent_edits_worktree_and_reports_usage(dirs: dict[str, Path]) -> None:
    spec = _python_agent(dirs["tmp"], (
        "open('hello.txt', 'w').write('hi\\n')\n"
        "print('edited hello.txt')\n"
        "json.dump({'status': 'success', 'notes': 'done',\n"
        "           'usage': {'tokens_in': 1200, 'tokens_out': 300, 'cost_usd': 0.01,"
        " 'turns': 2}},\n"
        "          open(os.environ['AUTOPACK_RESULT'], 'w'))\n"
    ))
    out = _run(dirs, spec)
    assert out.exit_code == 0 and not out.timed_out and out.ok
    assert (dirs["worktree"] / "hello.txt").read_text() == "hi\n"
    assert isinstance(out.result, BuilderResult)
    assert out.result.notes == "done"
    assert out.result_error is None
    assert (out.usage.tokens_in, out.usage.tokens_out, out.usage.turns) == (1200, 300, 2)
    assert out.usage.cost_usd == pytest.approx(0.01)
    assert out.log_path == dirs["attempt"] / "builder.log"
    assert "edited hello.txt" in out.log_path.read_text()
    assert not out.missing_command


def test_builder_without_result_file_is_fine(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="echo quiet agent"))
    assert out.ok and out.result is None and out.result_error is None
    assert out.usage.tokens == 0 and out.usage.cost_usd == 0


def test_stale_result_from_earlier_attempt_is_not_credited(dirs: dict[str, Path]) -> None:
    stale = dirs["attempt"] / "result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"status": "success", "usage": {"tokens_in": 999}}))
    out = _run(dirs, AgentSpec(command="true"), result_path=stale)
    assert out.result is None and out.usage.tokens_in == 0


def test_result_written_inside_worktree_is_removed(dirs: dict[str, Path]) -> None:
    inside = dirs["worktree"] / ".autopack-result.json"
    spec = AgentSpec(command="""printf '{"status": "partial"}' > "$AUTOPACK_RESULT" """)
    out = _run(dirs, spec, result_path=inside)
    assert isinstance(out.result, BuilderResult) and out.result.status == "partial"
    assert not inside.exists()  # never part of the phase's patch


def test_relative_result_path_means_the_same_file_to_agent_and_supervisor(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dirs["tmp"])
    spec = AgentSpec(command="""printf '{"notes": "here"}' > "$AUTOPACK_RESULT" """)
    out = _run(dirs, spec, result_path=Path("side") / "result.json")
    assert isinstance(out.result, BuilderResult) and out.result.notes == "here"
    assert not (dirs["worktree"] / "side").exists()


# --- misbehaving agents -----------------------------------------------------------------

def test_nonzero_exit_is_a_value(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="echo boom >&2; exit 3"))
    assert out.exit_code == 3 and not out.timed_out and not out.ok
    assert not out.missing_command
    assert "boom" in out.log_path.read_text()  # stderr is captured with stdout


def test_timeout_kills_agent_and_the_children_it_forked(dirs: dict[str, Path]) -> None:
    pidfile = dirs["tmp"] / "child.pid"
    script = write_script(dirs["tmp"] / "slow.sh", (
        "#!/bin/sh\n"
        f"sleep 30 &\necho $! > {shlex.quote(str(pidfile))}\n"
        "echo started\nsleep 30\n"
    ))
    started = time.monotonic()
    out = _run(dirs, AgentSpec(command=shlex.quote(str(script))), timeout_s=1)
    elapsed = time.monotonic() - started
    assert out.timed_out and out.exit_code is None and not out.ok
    assert elapsed < 5, elapsed
    assert 0.9 <= out.duration_s < 5
    log = out.log_path.read_text()
    assert "started" in log and "timed out after 1s" in log
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the agent's forked child outlived the timeout"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"status": "success", "usage": {"tokens_in": "lots"}}, "$.usage.tokens_in"),
        ({"status": "done"}, "$.status"),
        ({"status": "success", "mood": "great"}, "$.mood"),
    ],
)
def test_invalid_result_names_file_and_field(
    dirs: dict[str, Path], payload: dict[str, object], expected: str
) -> None:
    spec = AgentSpec(command=f"printf %s {shlex.quote(json.dumps(payload))} > \"$AUTOPACK_RESULT\"")
    out = _run(dirs, spec)
    assert out.exit_code == 0 and out.result is None and not out.ok
    assert out.result_error is not None
    assert str(dirs["attempt"] / "result.json") in out.result_error
    assert expected in out.result_error


def test_result_that_is_not_json_names_file_and_position(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="""printf '{"status": ' > "$AUTOPACK_RESULT" """))
    assert out.result is None
    assert out.result_error is not None
    assert out.result_error.startswith(f"{dirs['attempt'] / 'result.json'}:1:")
    assert "invalid JSON" in out.result_error


def test_usage_of_an_invalid_result_still_counts(dirs: dict[str, Path]) -> None:
    payload = {"status": "bogus", "usage": {"tokens_in": 10, "tokens_out": 5}}
    spec = AgentSpec(command=f"printf %s {shlex.quote(json.dumps(payload))} > \"$AUTOPACK_RESULT\"")
    out = _run(dirs, spec)
    assert out.result_error is not None and "$.status" in out.result_error
    assert out.usage.tokens == 15  # the tokens were spent, the budget must see them


def test_missing_command(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="autopack-no-such-agent-xyz --go"))
    assert out.missing_command
    assert out.exit_code == 127 and not out.timed_out
    assert "not found" in out.log_path.read_text()


def test_exit_127_without_shell_message_is_not_a_missing_command(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="echo deliberate; exit 127"))
    assert out.exit_code == 127 and not out.missing_command


# --- environment ------------------------------------------------------------------------

def test_agent_sees_only_allowlist_and_autopack_vars(
    dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOPACK_TEST_SECRET_TOKEN", "xyz")
    monkeypatch.setenv("GITHUB_TOKEN", "abc")
    monkeypatch.setenv("LC_TESTPREFIX", "kept")
    dump = dirs["tmp"] / "env.json"
    spec = _python_agent(dirs["tmp"], f"json.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n")
    env_vars = {"AUTOPACK_PHASE_ID": "P1.1", "AUTOPACK_ATTEMPT": "2", "AUTOPACK_ROLE": "forged"}
    out = _run(dirs, spec, env_vars=env_vars)
    assert out.ok, out.log_path.read_text()
    seen = json.loads(dump.read_text())
    assert "AUTOPACK_TEST_SECRET_TOKEN" not in seen
    assert "GITHUB_TOKEN" not in seen
    assert not any(name.startswith("GIT_") for name in seen)  # the suite sets GIT_CONFIG_*
    assert seen["AUTOPACK_PHASE_ID"] == "P1.1" and seen["AUTOPACK_ATTEMPT"] == "2"
    assert seen["AUTOPACK_ROLE"] == "builder"  # set by the supervisor, not the caller
    assert seen["AUTOPACK_RESULT"] == str(dirs["attempt"] / "result.json")
    assert seen["PATH"] == os.environ["PATH"]
    assert seen["LC_TESTPREFIX"] == "kept"  # LC_* is a prefix rule
    allowed = {n for n in AGENT_ENV_ALLOW if not n.endswith("*")}
    extra = {n for n in seen if n not in allowed and not n.startswith(("LC_", "AUTOPACK_"))}
    # The Python interpreter itself may add a few of its own (e.g. on macOS); nothing else.
    assert extra <= {"PWD", "SHLVL", "_", "__CF_USER_TEXT_ENCODING", "LC_CTYPE"}, extra


# --- auditor ----------------------------------------------------------------------------

def test_auditor_result_is_parsed_with_the_auditor_model(dirs: dict[str, Path]) -> None:
    payload = {"verdict": "revise", "usage": {"tokens_in": 7}, "notes": "split the function"}
    spec = AgentSpec(
        command=f'[ "$AUTOPACK_ROLE" = auditor ] && printf %s {shlex.quote(json.dumps(payload))}'
        ' > "$AUTOPACK_RESULT"'
    )
    out = _run(dirs, spec, role="auditor")
    assert isinstance(out.result, AuditorResult) and out.result.verdict == "revise"
    assert out.usage.tokens_in == 7 and out.log_path.name == "auditor.log"


def test_auditor_without_verdict_is_a_result_error(dirs: dict[str, Path]) -> None:
    out = _run(dirs, AgentSpec(command="true"), role="auditor")
    assert out.exit_code == 0 and out.result is None and not out.ok
    assert out.result_error is not None and "verdict" in out.result_error


def test_builder_result_given_to_auditor_is_invalid(dirs: dict[str, Path]) -> None:
    spec = AgentSpec(command="""printf '{"status": "success"}' > "$AUTOPACK_RESULT" """)
    out = _run(dirs, spec, role="auditor")
    assert out.result_error is not None and "$.verdict" in out.result_error


# --- definition errors (raised: the plan is wrong, not the agent) -----------------------

def test_unknown_preset_is_invalid(dirs: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="agent preset 'no-such-cli' is not defined") as info:
        _run(dirs, AgentSpec(preset="no-such-cli"))
    assert "claude" in info.value.fix and "profiles/agents.yaml" in info.value.fix
    assert not (dirs["attempt"] / "builder.log").exists()


def test_generic_preset_needs_a_command(dirs: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="runs the plan's `command:` and none is given"):
        _run(dirs, AgentSpec(preset="command"))


@pytest.mark.parametrize("command", [None, "", "   "])
def test_spec_without_command_is_invalid(dirs: dict[str, Path], command: str | None) -> None:
    with pytest.raises(InvalidInput, match="no command"):
        _run(dirs, AgentSpec(command=command))


def test_missing_worktree_is_an_environment_problem(dirs: dict[str, Path]) -> None:
    with pytest.raises(EnvironmentProblem, match="does not exist"):
        run_agent(
            spec=AgentSpec(command="true"), role="builder", worktree=dirs["tmp"] / "gone",
            env_vars={}, timeout_s=5, log_path=dirs["attempt"] / "b.log",
            result_path=dirs["attempt"] / "r.json",
        )
