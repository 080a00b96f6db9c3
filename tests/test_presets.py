"""Agent presets end to end (docs/architecture.md, Agents): a fake executable named like each real CLI, put
first on PATH, prints that CLI's real output format and edits the worktree; a full phase
runs with the preset and the run record shows the usage parsed from that format.

No mocks: the fakes are real executables run by the supervisor through /bin/sh, with the
environment the supervisor builds; the phase goes through gate, CI and snapshot.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pipeline.agents.presets import load_agent_presets
from pipeline.agents.runner import resolve_agent, run_agent
from pipeline.agents.usage import parse_usage
from pipeline.core.errors import InvalidInput, ValidationErrors
from pipeline.core.masking import is_secret_name, mask_text
from pipeline.models.plan import AgentSpec
from pipeline.run.driver import run_phase
from testing.gitrepo import write_script
from testing.runs import RunSetup, make_workspace, phase, python_step

# The fake CLIs dump their arguments and environment beside their bin dir, outside the
# worktree: the sandbox forbids that, so these phases run with the fallback
# (tests/test_sandbox.py covers the sandbox).
pytestmark = pytest.mark.usefixtures("unsandboxed")

FILES = {"mod.py": "X = 1\n"}
CI_X2 = [python_step("x-is-2", "import mod; assert mod.X == 2, mod.X")]

# Shared by every fake: read the prompt the way the preset passes it, check it is the
# phase's spec, edit the worktree (cwd), dump argv and environment beside the bin dir.
PRELUDE = """\
#!{python}
import json, os, sys, time
from pathlib import Path

ARGS = sys.argv[1:]
DUMP = Path({dump!r})


def flag(name):
    return ARGS[ARGS.index(name) + 1] if name in ARGS else None


def need(ok, why):
    if not ok:
        print("fake CLI: " + why, file=sys.stderr)
        sys.exit(2)


def record(prompt):
    DUMP.mkdir(parents=True, exist_ok=True)
    (DUMP / (Path(sys.argv[0]).name + ".json")).write_text(
        json.dumps({{"argv": ARGS, "env": dict(os.environ), "prompt": prompt, "cwd": os.getcwd()}})
    )
    need("# Phase P1" in prompt, "the prompt is not the phase spec: " + prompt[:80])


def edit():
    Path("mod.py").write_text("X = 2\\n")


"""

# -- the real output formats (see pipeline/usage.py for the sources) ----------------------

CLAUDE_RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 12045,
    "duration_api_ms": 11020,
    "num_turns": 7,
    "result": "Changed X to 2 in mod.py.",
    "session_id": "5f0c9c5e-2b4a-4d7e-9a51-2f0e7d1c6b11",
    "total_cost_usd": 0.1234,
    "usage": {
        "input_tokens": 1200,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 45000,
        "output_tokens": 800,
        "server_tool_use": {"web_search_requests": 0},
        "service_tier": "standard",
    },
    "permission_denials": [],
}

CODEX_EVENTS = [
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Editing mod.py**"}},
    {
        "type": "item.completed",
        "item": {"id": "item_1", "type": "file_change", "changes": [{"path": "mod.py", "kind": "update"}],
                 "status": "completed"},
    },
    {"type": "turn.completed", "usage": {"input_tokens": 24763, "cached_input_tokens": 24448, "output_tokens": 122}},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_2", "type": "agent_message", "text": "Done."}},
    {"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 78}},
]

AIDER_OUTPUT = """\
Aider v0.86.1
Main model: anthropic/claude-sonnet-4-20250514 with diff edit format, infinite output
Git repo: .git with 1 files
Repo-map: using 4096 tokens, auto refresh

mod.py
<<<<<<< SEARCH
X = 1
=======
X = 2
>>>>>>> REPLACE

Tokens: 2.3k sent, 156 received. Cost: $0.0091 message, $0.0091 session.
Applied edit to mod.py
Tokens: 12k sent, 1.1k cache write, 8.0k cache hit, 1,204 received. Cost: $0.03 message, $0.04 session.
"""

GEMINI_OUTPUT = {
    "response": "I changed X to 2 in mod.py.",
    "stats": {
        "models": {
            "gemini-2.5-pro": {
                "api": {"totalRequests": 3, "totalErrors": 0, "totalLatencyMs": 5053},
                "tokens": {"prompt": 24939, "candidates": 20, "total": 25113, "cached": 21263, "thoughts": 154,
                           "tool": 0},
            },
            "gemini-2.5-flash": {
                "api": {"totalRequests": 1, "totalErrors": 0, "totalLatencyMs": 800},
                "tokens": {"prompt": 1000, "candidates": 30, "total": 1030, "cached": 0, "thoughts": 0, "tool": 0},
            },
        },
        "tools": {"totalCalls": 1, "totalSuccess": 1, "totalFail": 0, "totalDurationMs": 12},
        "files": {"totalLinesAdded": 1, "totalLinesRemoved": 1},
    },
}


def _opencode_step(tokens: dict[str, Any], cost: float) -> dict[str, Any]:
    return {
        "type": "step_finish",
        "timestamp": 1768191337567,
        "sessionID": "ses_44f9562d4ffe",
        "part": {"id": "prt_1", "sessionID": "ses_44f9562d4ffe", "messageID": "msg_1", "type": "step-finish",
                 "reason": "stop", "cost": cost, "tokens": tokens},
    }


OPENCODE_EVENTS = [
    {"type": "step_start", "timestamp": 1768191330000, "sessionID": "ses_44f9562d4ffe",
     "part": {"type": "step-start", "snapshot": "4b825dc642cb6eb9a060e54bf8d69288fbee4904"}},
    {"type": "tool_use", "timestamp": 1768191331000, "sessionID": "ses_44f9562d4ffe",
     "part": {"type": "tool", "callID": "c1", "tool": "edit",
              "state": {"status": "completed", "input": {"filePath": "mod.py"}, "output": ""}}},
    _opencode_step({"input": 9000, "output": 300, "reasoning": 100, "cache": {"read": 5000, "write": 2000}}, 0.05),
    {"type": "text", "timestamp": 1768191336000, "sessionID": "ses_44f9562d4ffe",
     "part": {"type": "text", "text": "Done.", "time": {"start": 1, "end": 2}}},
    _opencode_step({"input": 500, "output": 20, "reasoning": 0, "cache": {"read": 14000, "write": 0}}, 0.01),
]

CURSOR_RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "duration_ms": 1234,
    "duration_api_ms": 1234,
    "result": "Changed X to 2.",
    "session_id": "c6b62c6f-7ead-4fd6-9922-e952131177ff",
    "request_id": "10e11780-df2f-45dc-a1ff-4540af32e9c0",
}

# How each fake takes its prompt and what it prints (after editing mod.py).
BODIES: dict[str, str] = {
    "claude": f"""
need(ARGS[0] == "-p", "expected -p first")
need(flag("--output-format") == "json", "expected --output-format json")
need(flag("--max-turns") is not None, "expected --max-turns")
record(ARGS[1])
edit()
print({json.dumps(CLAUDE_RESULT)!r})
""",
    "codex": f"""
need(ARGS[:2] == ["exec", "--json"], "expected exec --json")
need(flag("--sandbox") == "workspace-write", "expected --sandbox workspace-write")
record(sys.stdin.read())
edit()
for event in json.loads({json.dumps(CODEX_EVENTS)!r}):
    print(json.dumps(event))
""",
    "aider": f"""
need("--no-auto-commits" in ARGS, "expected --no-auto-commits")
record(Path(flag("--message-file")).read_text())
edit()
sys.stdout.write({AIDER_OUTPUT!r})
""",
    "gemini": f"""
need(flag("--output-format") == "json", "expected --output-format json")
record(flag("-p"))
edit()
print(json.dumps(json.loads({json.dumps(GEMINI_OUTPUT)!r}), indent=2))
""",
    "opencode": f"""
need(ARGS[:3] == ["run", "--format", "json"], "expected run --format json")
record(sys.stdin.read())
edit()
for event in json.loads({json.dumps(OPENCODE_EVENTS)!r}):
    print(json.dumps(event))
""",
    "cursor-agent": f"""
need(ARGS[0] == "-p" and flag("--output-format") == "json", "expected -p ... --output-format json")
record(ARGS[1])
edit()
print({json.dumps(CURSOR_RESULT)!r})
""",
}

PRESET_EXECUTABLE = {
    "claude": "claude",
    "codex": "codex",
    "aider": "aider",
    "gemini": "gemini",
    "opencode": "opencode",
    "cursor": "cursor-agent",
}

EXPECTED_USAGE: dict[str, dict[str, Any]] = {
    # input 1200 + cache write 3000 + cache read 45000
    "claude": {"tokens_in": 49200, "tokens_out": 800, "tokens_cached": 45000, "cost_usd": 0.1234, "turns": 7},
    # no cost reported and no model named: the cost is unknown, not zero
    "codex": {"tokens_in": 25763, "tokens_out": 200, "tokens_cached": 24448, "cost_usd": None, "turns": 2},
    # 2.3k + 12k sent; 156 + 1,204 received; the last session cost
    "aider": {"tokens_in": 14300, "tokens_out": 1360, "tokens_cached": 8000, "cost_usd": 0.04, "turns": 2},
    # prompt (cached included); candidates + thoughts; requests
    # no cost reported: estimated from the price table for the model its stats name
    "gemini": {"tokens_in": 25939, "tokens_out": 204, "tokens_cached": 21263, "cost_usd": "estimated", "turns": 4},
    # input + cache read + cache write; output + reasoning
    "opencode": {"tokens_in": 30500, "tokens_out": 420, "tokens_cached": 19000, "cost_usd": 0.06, "turns": 2},
    # cursor-agent's result carries no usage: unknown, never zeros
    "cursor": {"tokens_in": None, "tokens_out": None, "tokens_cached": None, "cost_usd": None, "turns": 0},
}
COST_SOURCE = {"claude": "reported", "codex": "unknown", "aider": "reported", "gemini": "estimated",
               "opencode": "reported", "cursor": "unknown"}


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bin dir first on PATH; returns it (fakes are written into it by `fake`)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def fake(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in `bin_dir`: PRELUDE + body."""
    dump = bin_dir.parent / "dumps"
    text = PRELUDE.format(python=sys.executable, dump=str(dump)) + textwrap.dedent(body).lstrip("\n")
    return write_script(bin_dir / name, text)


def dumped(bin_dir: Path, name: str) -> dict[str, Any]:
    data = json.loads((bin_dir.parent / "dumps" / f"{name}.json").read_text())
    assert isinstance(data, dict)
    return data


def workspace(tmp_path: Path, builder: dict[str, Any] | str, **kw: Any) -> RunSetup:
    spec = {"preset": builder} if isinstance(builder, str) else builder
    kw.setdefault("phases", [phase("P1", max_builder_attempts=1)])
    return make_workspace(tmp_path / "w", files=FILES, builder=spec, ci_steps=CI_X2, **kw)


def run_one_phase(setup: RunSetup) -> dict[str, Any]:
    setup.start()
    run_phase(setup.workspace, setup.run_id)
    return setup.phase_json("P1")


def log_of(setup: RunSetup, k: int = 1) -> str:
    return (setup.phase_dir("P1") / "attempts" / str(k) / "builder.log").read_text()


# -- every preset, a full phase ------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESET_EXECUTABLE))
def test_full_phase_records_the_usage_of_each_cli(tmp_path: Path, fakes: Path, preset: str) -> None:
    exe = PRESET_EXECUTABLE[preset]
    fake(fakes, exe, BODIES[exe])
    setup = workspace(tmp_path, preset)
    rec = run_one_phase(setup)
    assert rec["state"] == "COMPLETE", (rec, log_of(setup))

    attempt = setup.attempt("P1", 1)
    assert attempt["agent"] == preset
    want = dict(EXPECTED_USAGE[preset])
    usage = attempt["usage"]
    assert usage["sources"]["cost_usd"] == COST_SOURCE[preset], log_of(setup)
    if want["cost_usd"] == "estimated":
        assert usage["cost_usd"] > 0
        want["cost_usd"] = usage["cost_usd"]
    assert {k: usage[k] for k in want} == pytest.approx(want), log_of(setup)
    if want["tokens_in"] is None:  # unknown tokens: the call is charged its reservation
        assert rec["spend"]["tokens"] == rec["spend"]["tokens_reserved"] > 0
    else:
        assert rec["spend"]["tokens"] == want["tokens_in"] + want["tokens_out"]
        assert rec["spend"]["tokens_reserved"] == 0
    assert rec["spend"]["cost_usd"] == pytest.approx(want["cost_usd"] or 0.0)
    if COST_SOURCE[preset] == "estimated":
        assert rec["spend"]["cost_estimated_usd"] == pytest.approx(want["cost_usd"])
    # the command that ran is recorded, without the spec's text in it
    assert attempt["command"].startswith(exe + " ") and "# Phase" not in attempt["command"]
    seen = dumped(fakes, exe)
    assert Path(seen["cwd"]).resolve() == setup.worktree  # it ran in the worktree
    assert "X = 2" in setup.git("show", f"{setup.tag('P1')}:mod.py")
    if preset == "cursor":
        assert "reports no token usage" in attempt["result_notes"]


def test_plan_options_reach_the_cli(tmp_path: Path, fakes: Path) -> None:
    fake(fakes, "claude", BODIES["claude"])
    builder = {"preset": "claude", "model": "sonnet", "max_turns": 5, "max_cost_usd": 1.5,
               "args": ["--allowedTools", "Bash(python -m pytest:*)"]}
    rec = run_one_phase(workspace(tmp_path, builder))
    assert rec["state"] == "COMPLETE"
    argv = dumped(fakes, "claude")["argv"]
    assert argv[argv.index("--max-turns") + 1] == "5"
    assert argv[argv.index("--model") + 1] == "sonnet"
    assert argv[argv.index("--max-budget-usd") + 1] == "1.5"
    assert argv[-2:] == ["--allowedTools", "Bash(python -m pytest:*)"]


def test_workspace_profile_overrides_a_preset(tmp_path: Path, fakes: Path) -> None:
    fake(fakes, "claude", BODIES["claude"])
    setup = workspace(tmp_path, "claude")
    profiles = setup.workspace / "profiles"
    profiles.mkdir()
    (profiles / "agents.yaml").write_text("claude:\n  defaults: {max_turns: 3}\n  env: [ONLY_THIS]\n")
    assert run_one_phase(setup)["state"] == "COMPLETE"
    seen = dumped(fakes, "claude")
    assert seen["argv"][seen["argv"].index("--max-turns") + 1] == "3"


# -- bad output never crashes: unknown usage and a note -----------------------------------


@pytest.mark.parametrize(
    ("exe", "preset", "output", "note"),
    [
        ("claude", "claude", "print('this is not json {oops')", "no Claude Code result object"),
        ("claude", "claude", f"sys.stdout.write({json.dumps(CLAUDE_RESULT)[:90]!r})", "truncated"),
        ("gemini", "gemini", "print('{\"response\": \"half')", "truncated"),
        ("cursor-agent", "cursor", "print('Error: not logged in', file=sys.stderr)", "no cursor-agent result"),
    ],
    ids=["claude-malformed", "claude-truncated", "gemini-truncated", "cursor-error"],
)
def test_malformed_or_truncated_output_is_unknown_usage_and_a_note(
    tmp_path: Path, fakes: Path, exe: str, preset: str, output: str, note: str
) -> None:
    take = "record(flag('-p'))" if exe == "gemini" else "record(ARGS[1])"
    fake(fakes, exe, f"{take}\nedit()\n{output}\n")
    setup = workspace(tmp_path, preset)
    rec = run_one_phase(setup)
    assert rec["state"] == "COMPLETE"  # the work was fine; only its accounting is unknown
    attempt = setup.attempt("P1", 1)
    usage = attempt["usage"]
    assert {k: usage[k] for k in ("tokens_in", "tokens_out", "tokens_cached", "cost_usd")} == dict.fromkeys(
        ("tokens_in", "tokens_out", "tokens_cached", "cost_usd")
    )  # null, never an invented zero
    assert set(usage["sources"].values()) == {"unknown"}
    assert note in attempt["result_notes"]
    assert "no usage reported: unknown" in attempt["result_notes"]
    # budgets charge the call its reservation: the token reservation, never zero
    assert rec["spend"]["tokens"] == rec["spend"]["tokens_reserved"] > 0
    assert note in log_of(setup)  # the log explains itself too


def test_truncated_codex_stream_counts_the_complete_turns(tmp_path: Path, fakes: Path) -> None:
    first_turn = CODEX_EVENTS[:5]
    body = (
        "record(sys.stdin.read())\nedit()\n"
        f"for event in json.loads({json.dumps(first_turn)!r}):\n    print(json.dumps(event))\n"
        "sys.stdout.write('{\"type\": \"turn.completed\", \"usage\": {\"input_tok')\n"
    )
    fake(fakes, "codex", body)
    setup = workspace(tmp_path, "codex")
    assert run_one_phase(setup)["state"] == "COMPLETE"
    attempt = setup.attempt("P1", 1)
    assert attempt["usage"]["tokens_in"] == 24763 and attempt["usage"]["turns"] == 1
    assert "did not parse (truncated output?)" in attempt["result_notes"]


def test_cli_without_usage_falls_back_to_the_result_file(tmp_path: Path, fakes: Path) -> None:
    body = (
        "record(ARGS[1])\nedit()\n"
        "Path(os.environ['AUTOPACK_RESULT']).write_text(json.dumps(\n"
        "    {'status': 'success', 'usage': {'tokens_in': 300, 'tokens_out': 40, 'cost_usd': 0.02}}))\n"
        f"print({json.dumps(CURSOR_RESULT)!r})\n"
    )
    fake(fakes, "cursor-agent", body)
    setup = workspace(tmp_path, "cursor")
    assert run_one_phase(setup)["state"] == "COMPLETE"
    attempt = setup.attempt("P1", 1)
    assert (attempt["usage"]["tokens_in"], attempt["usage"]["tokens_out"]) == (300, 40)
    assert "usage taken from the AUTOPACK_RESULT file" in attempt["result_notes"]


def test_cost_from_the_result_file_when_the_cli_reports_none(tmp_path: Path, fakes: Path) -> None:
    body = BODIES["codex"] + (
        "\nPath(os.environ['AUTOPACK_RESULT']).write_text(json.dumps({'usage': {'cost_usd': 0.5}}))\n"
    )
    fake(fakes, "codex", body)
    setup = workspace(tmp_path, "codex")
    assert run_one_phase(setup)["state"] == "COMPLETE"
    usage = setup.attempt("P1", 1)["usage"]
    assert usage["tokens_in"] == 25763 and usage["cost_usd"] == pytest.approx(0.5)


# -- a CLI as auditor ------------------------------------------------------------------------

CODEX_AUDITOR = """
import json as _json
brief = sys.stdin.read()
need(os.environ["AUTOPACK_ROLE"] == "auditor", "expected the auditor role")
need("# Audit (review) of phase P1" in brief and "## The patch" in brief and "+X = 2" in brief, brief[:300])
need("## Your review profile" in brief, "expected the auditor profile in the brief")
answer = "The change is what the phase asks.\\n```json\\n" + _json.dumps(
    {"verdict": "approve", "notes": "X is 2 as asked"}) + "\\n```"
for event in [
    {"type": "thread.started", "thread_id": "t1"},
    {"type": "turn.started"},
    {"type": "item.completed", "item": {"id": "item_0", "type": "agent_message", "text": answer}},
    {"type": "turn.completed", "usage": {"input_tokens": 5000, "cached_input_tokens": 1000, "output_tokens": 50}},
]:
    print(_json.dumps(event))
"""


def test_cli_auditor_reviews_with_a_brief_and_answers_in_its_final_message(tmp_path: Path, fakes: Path) -> None:
    fake(fakes, "claude", BODIES["claude"])
    fake(fakes, "codex", CODEX_AUDITOR)
    setup = workspace(
        tmp_path, "claude",
        phases=[phase("P1", max_builder_attempts=1, auto_apply=False, auditor="codex",
                      task_category="security_auth_change", complexity="high")],
    )
    rec = run_one_phase(setup)
    audit_dir = setup.phase_dir("P1") / "audit" / "1"
    assert rec["state"] == "COMPLETE", (audit_dir / "auditor.log").read_text()
    audit = json.loads((audit_dir / "auditor.json").read_text())
    assert audit["verdict"] == "approve" and audit["purpose"] == "review"
    assert audit["usage"]["tokens_in"] == 5000 and audit["usage"]["tokens_cached"] == 1000
    assert "verdict was taken from the auditor's final message" in audit["notes"]
    assert audit["command"].startswith("codex exec --json")
    assert json.loads((audit_dir / "result.json").read_text())["notes"] == "X is 2 as asked"
    assert (audit_dir / "prompt.md").read_text().startswith("# Audit (review) of phase P1")


# -- hangs, missing CLIs -------------------------------------------------------------------


def test_cli_that_hangs_is_killed_at_the_timeout(tmp_path: Path, fakes: Path) -> None:
    fake(fakes, "claude", "record(ARGS[1])\nprint('thinking...', flush=True)\ntime.sleep(60)\n")
    setup = workspace(tmp_path, {"preset": "claude", "timeout_s": 1})
    rec = run_one_phase(setup)
    attempt = setup.attempt("P1", 1)
    assert attempt["timed_out"] is True and attempt["outcome"] == "timed_out"
    assert rec["state"] == "FAILED"
    log = log_of(setup)
    assert "thinking..." in log and "timed out after 1s" in log


def _path_without(exe: str, extra: Path) -> str:
    dirs = [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / exe).exists()]
    return os.pathsep.join([str(extra), *dirs])


def test_cli_not_installed_ends_the_run_with_the_install_hint(
    tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", _path_without("codex", fakes))
    setup = workspace(tmp_path, "codex")
    rec = run_one_phase(setup)
    run = setup.run_json()
    assert rec["state"] == "FAILED"
    assert run["state"] == "DONE_FAILED_ENVIRONMENT"
    assert "agent preset 'codex'" in run["failure_reason"]
    assert "npm install -g @openai/codex" in run["failure_reason"]
    log = log_of(setup)
    assert "`codex` is not installed" in log and "npm install -g @openai/codex" in log
    attempt = setup.attempt("P1", 1)
    assert attempt["exit_code"] == 127 and "not installed" in attempt["reason"]


def test_not_installed_is_a_value_from_run_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", _path_without("aider", tmp_path))
    (tmp_path / "wt").mkdir()
    out = run_agent(
        spec=AgentSpec(preset="aider"), role="builder", worktree=tmp_path / "wt", env_vars={}, timeout_s=5,
        log_path=tmp_path / "a" / "builder.log", result_path=tmp_path / "a" / "result.json",
    )
    assert out.missing_command and out.exit_code == 127 and not out.ok
    assert out.problem is not None and "aider-install" in out.problem
    assert "aider-install" in out.log_path.read_text()


# -- the generic command preset ------------------------------------------------------------


def test_generic_command_preset(tmp_path: Path, fakes: Path) -> None:
    script = write_script(tmp_path / "my-agent.py", (
        f"#!{sys.executable}\n"
        "import json, os\nfrom pathlib import Path\n"
        "assert '# Phase P1' in Path(os.environ['AUTOPACK_PHASE_SPEC']).read_text()\n"
        "Path('mod.py').write_text('X = 2\\n')\n"
        "Path(os.environ['AUTOPACK_RESULT']).write_text(json.dumps(\n"
        "    {'usage': {'tokens_in': 70, 'tokens_out': 7, 'cost_usd': 0.001, 'turns': 1}, 'notes': 'mine'}))\n"
    ))
    setup = workspace(tmp_path, {"preset": "command", "command": f"{script} --spec {{spec}}"})
    assert run_one_phase(setup)["state"] == "COMPLETE"
    attempt = setup.attempt("P1", 1)
    assert attempt["agent"] == "command"
    assert attempt["command"] == f'{script} --spec "$AUTOPACK_PROMPT"'
    assert attempt["usage"]["tokens_in"] == 70 and attempt["usage"]["cost_usd"] == pytest.approx(0.001)
    assert attempt["result_notes"] == "mine"


def test_preset_definitions(tmp_path: Path) -> None:
    presets = load_agent_presets()
    assert {"claude", "codex", "aider", "gemini", "opencode", "cursor", "command"} <= set(presets)
    for name, preset in presets.items():
        if name != "command":
            assert preset.executable and preset.install and preset.usage != "none", name
    # {prompt}/{spec} become shell words reading AUTOPACK_*; values are shell-quoted
    claude = resolve_agent(AgentSpec(preset="claude", model="a b"), presets)
    assert claude.command.startswith('claude -p "$(cat "$AUTOPACK_PROMPT")" --output-format json')
    assert "--model 'a b'" in claude.command
    codex = resolve_agent(AgentSpec(preset="codex", max_turns=3), presets)
    assert codex.command.endswith('< "$AUTOPACK_PROMPT"')
    assert any("no way to pass max_turns" in n for n in codex.notes)
    # a bare command runs exactly as written (JSON braces and all)
    bare = resolve_agent(AgentSpec(command="printf '{\"spec\": 1}' {spec}"), presets)
    assert bare.command == "printf '{\"spec\": 1}' {spec}" and bare.preset_name == "command"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("claude: [1, 2]\n", "must be a mapping"),
        ("mine:\n  command: x {prompt}\n  prompt: file\n", "needs {spec} in the command"),
        ("mine:\n  command: x {spec} {turns}\n  prompt: file\n", "unknown placeholder"),
        ("mine:\n  command: x\n  usage: claude_xml\n", "claude_xml"),
        ("mine:\n  command: x\n  env: ['BAD NAME']\n", "not environment variable names"),
        ("mine:\n  command: x\n  set_env: {'BAD NAME': '1'}\n", "set_env: not environment variable names"),
        ("mine:\n  command: x\n  owned_files: ['../outside']\n", "not relative path patterns"),
        ("mine:\n  command: x\n  owned_files: ['/etc/']\n", "not relative path patterns"),
        ("- claude\n", "expected a mapping"),
    ],
)
def test_bad_workspace_presets_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "agents.yaml").write_text(text)
    with pytest.raises((InvalidInput, ValidationErrors)) as info:
        load_agent_presets(tmp_path)
    assert message in info.value.message and "agents.yaml" in info.value.message


# -- environment hygiene and masking -------------------------------------------------------


def test_agent_sees_only_the_allowlist_and_its_presets_names(
    tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_" + "a" * 36)
    monkeypatch.setenv("MY_SERVICE_SECRET", "service-secret-value")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-key-value")
    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-value")
    fake(fakes, "claude", BODIES["claude"])
    assert run_one_phase(workspace(tmp_path / "c", "claude"))["state"] == "COMPLETE"
    seen = dumped(fakes, "claude")["env"]
    assert seen["ANTHROPIC_API_KEY"] == "anthropic-key-value"
    assert not {"GITHUB_TOKEN", "MY_SERVICE_SECRET", "OPENAI_API_KEY"} & set(seen)
    assert seen["AUTOPACK_PHASE_ID"] == "P1" and seen["AUTOPACK_ROLE"] == "builder"

    # `codex exec` authenticates with CODEX_API_KEY only: that is the name it gets.
    monkeypatch.setenv("CODEX_API_KEY", "codex-key-value")
    fake(fakes, "codex", BODIES["codex"])
    assert run_one_phase(workspace(tmp_path / "x", "codex"))["state"] == "COMPLETE"
    seen = dumped(fakes, "codex")["env"]
    assert seen["CODEX_API_KEY"] == "codex-key-value"
    assert not {"GITHUB_TOKEN", "MY_SERVICE_SECRET", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"} & set(seen)


def test_preset_telemetry_and_trust_defaults_reach_the_cli_and_the_supervisor_wins(
    tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("GEMINI_TELEMETRY_ENABLED", "true")  # the supervisor's own choice wins
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    fake(fakes, "gemini", BODIES["gemini"])
    assert run_one_phase(workspace(tmp_path / "g", "gemini"))["state"] == "COMPLETE"
    seen = dumped(fakes, "gemini")["env"]
    assert seen["GOOGLE_GEMINI_BASE_URL"] == "http://127.0.0.1:9/"
    assert seen["GEMINI_CLI_TRUST_WORKSPACE"] == "true"
    assert seen["GEMINI_TELEMETRY_ENABLED"] == "true"
    assert seen["HTTPS_PROXY"] == "http://127.0.0.1:9"

    fake(fakes, "claude", BODIES["claude"])
    assert run_one_phase(workspace(tmp_path / "c", "claude"))["state"] == "COMPLETE"
    seen = dumped(fakes, "claude")["env"]
    assert seen["DISABLE_TELEMETRY"] == "1" and seen["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"


def test_codex_endpoint_is_passed_as_a_config_override(
    tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    fake(fakes, "codex", BODIES["codex"])
    assert run_one_phase(workspace(tmp_path / "x", "codex"))["state"] == "COMPLETE"
    argv = dumped(fakes, "codex")["argv"]
    assert 'openai_base_url="http://127.0.0.1:9/v1"' in argv
    assert "analytics.enabled=false" in argv and "features.plugins=false" in argv


def test_agent_owned_files_are_excluded_from_the_patch_and_recorded(tmp_path: Path, fakes: Path) -> None:
    body = BODIES["aider"].replace(
        "edit()",
        "edit()\nPath('.aider.tags.cache.v4').mkdir()\nPath('.aider.tags.cache.v4/cache.db').write_text('x')\n"
        "Path('.aider.chat.history.md').write_text('x')",
        1,
    )
    fake(fakes, "aider", body)
    setup = workspace(tmp_path, "aider")  # the target does not ignore .aider*
    rec = run_one_phase(setup)
    assert rec["state"] == "COMPLETE", log_of(setup)
    attempt = setup.attempt("P1", 1)
    assert attempt["excluded_files"] == [".aider.chat.history.md", ".aider.tags.cache.v4/cache.db"]
    assert attempt["patch_files"] == ["mod.py"]
    assert ".aider" not in setup.git("ls-tree", "-r", "--name-only", setup.tag("P1"))


def test_a_one_field_override_keeps_the_rest_of_the_preset(tmp_path: Path) -> None:
    from pipeline.agents.presets import load_agent_presets

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "agents.yaml").write_text("codex:\n  env: [MY_GATEWAY_TOKEN]\n")
    codex = load_agent_presets(tmp_path)["codex"]
    builtin = load_agent_presets()["codex"]
    assert codex.env == [*builtin.env, "MY_GATEWAY_TOKEN"]
    assert codex.command == builtin.command and codex.owned_files == builtin.owned_files


def test_secrets_are_masked_in_the_log(tmp_path: Path, fakes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_SECRET", "s3rv1ce-s3cr3t-value")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-api03-" + "Q" * 40)
    aws_key = "AKIA" + "ABCDEFGHIJKLMNOP"
    body = f"""
record(ARGS[1])
edit()
print("my key is", os.environ["ANTHROPIC_API_KEY"])
print("read from disk: s3rv1ce-s3cr3t-value and {aws_key}")
print({json.dumps(CLAUDE_RESULT)!r})
"""
    fake(fakes, "claude", body)
    setup = workspace(tmp_path, "claude")
    assert run_one_phase(setup)["state"] == "COMPLETE"
    log = log_of(setup)
    assert "my key is ***" in log and "read from disk: *** and ***" in log
    assert "s3rv1ce" not in log and "QQQQ" not in log and aws_key not in log
    assert setup.attempt("P1", 1)["usage"]["tokens_out"] == 800  # parsed before masking


# -- parsers and masking, in process -------------------------------------------------------


def test_aider_count_formats() -> None:
    text = "Tokens: 999 sent, 1,234 received. Cost: $0.0012 request, $0.0012 session.\n" \
           "Tokens: 1.5M sent, 12k received.\n"
    parsed = parse_usage("aider_text", text)
    assert parsed.usage is not None
    assert (parsed.usage.tokens_in, parsed.usage.tokens_out, parsed.usage.turns) == (1_500_999, 13_234, 2)
    assert parsed.has_cost and parsed.usage.cost_usd == pytest.approx(0.0012)


def test_parsers_note_errors_and_bad_fields() -> None:
    bad = dict(CLAUDE_RESULT, subtype="error_max_turns", is_error=True, usage={"input_tokens": "many"})
    parsed = parse_usage("claude_json", "noise on stderr\n" + json.dumps(bad) + "\n")
    assert parsed.usage is not None and parsed.usage.turns == 7
    assert any("error_max_turns" in n for n in parsed.notes)
    assert any("input_tokens='many'" in n for n in parsed.notes)
    codex = parse_usage("codex_jsonl", '{"type": "turn.failed", "error": {"message": "rate limited"}}\n')
    assert codex.usage is None and any("rate limited" in n for n in codex.notes)
    assert parse_usage("none", "anything").usage is None
    assert parse_usage("opencode_jsonl", "").usage is None


def test_mask_text_and_secret_names() -> None:
    for name in ("GITHUB_TOKEN", "MY_SERVICE_SECRET", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY"):
        assert is_secret_name(name), name
    for name in ("PATH", "HOME", "AWS_REGION", "TOKENIZERS_PARALLELISM", "KEYBOARD"):
        assert not is_secret_name(name), name
    text, n = mask_text("a hunter22 b ghp_" + "x" * 36 + " c", ["hunter22"])
    assert text == "a *** b *** c" and n == 2


def test_presets_are_reloaded_when_the_workspace_file_changes(tmp_path: Path) -> None:
    # every call reads the files: an edit, a new file or a removed one shows.
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    assert load_agent_presets(tmp_path)["claude"].defaults.get("max_turns") != 3
    (profiles / "agents.yaml").write_text("claude:\n  defaults: {max_turns: 3}\n")
    assert load_agent_presets(tmp_path)["claude"].defaults["max_turns"] == 3
    (profiles / "agents.yaml").write_text("claude:\n  defaults: {max_turns: 40}\n")
    assert load_agent_presets(tmp_path)["claude"].defaults["max_turns"] == 40
    (profiles / "agents.yaml").write_text("mine:\n  command: echo hi\n")
    assert "mine" in load_agent_presets(tmp_path)
    (profiles / "agents.yaml").unlink()
    assert "mine" not in load_agent_presets(tmp_path)
    first = load_agent_presets(tmp_path)
    first.pop("claude")
    assert "claude" in load_agent_presets(tmp_path)  # each caller gets its own dict


def test_run_summary_shows_reported_estimated_and_reserved_spend(tmp_path: Path, fakes: Path) -> None:
    from pipeline.run.driver import run_to_end

    fake(fakes, "cursor-agent", BODIES["cursor-agent"])  # its result has no usage: unknown
    setup = workspace(tmp_path, "cursor")
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    spend = setup.run_json()["spend"]
    assert spend["tokens"] == spend["tokens_reserved"] > 0
    summary = setup.store.summary_md.read_text()
    assert f"tokens: 0 reported, {spend['tokens_reserved']} reserved (unknown)" in summary
    assert "Cost by source: $0.0000 reported, $0.0000 estimated" in summary
