"""Contract tests: each preset drives the vendor's real CLI to a tagged commit.

The CLIs are the pinned releases `.ci/install-agent-clis` puts in `.ci-tools/` (or the ones
on PATH). Each runs through its stock preset plus documented options (the model, the
endpoint and key in the CLI's own variables, `args`), pointed at the scripted model server
of `testing/modelserver.py` on 127.0.0.1. That server is also the CLI's HTTP(S) proxy:
a request for any other destination is refused and fails the test. A CLI that is not
installed makes its test skip with the reason; it never passes silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.run.driver import run_to_end
from testing.modelserver import USAGE_CACHED, USAGE_IN, USAGE_OUT, EditScript, ModelServer
from testing.runs import RunSetup, make_workspace, phase, python_step

pytestmark = pytest.mark.real_cli

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".ci-tools"
PLACES = {
    "aider": TOOLS / "aider-venv" / "bin",
    "codex": TOOLS / "npm" / "node_modules" / ".bin",
    "gemini": TOOLS / "npm" / "node_modules" / ".bin",
    "claude": TOOLS / "npm" / "node_modules" / ".bin",
    "opencode": TOOLS / "npm" / "node_modules" / ".bin",
}
FILES = {"mod.py": "X = 1\n"}
CI_X2 = [python_step("x-is-2", "import mod; assert mod.X == 2, mod.X")]


def cli_dir(name: str) -> Path:
    """The directory holding the CLI `name`, or a skip saying how to install it."""
    local = PLACES[name] / name
    if local.exists():
        return local.parent
    found = shutil.which(name)
    if found:
        return Path(found).parent
    pytest.skip(f"real CLI `{name}` is not installed (run .ci/install-agent-clis); its contract test did not run")


@pytest.fixture
def server() -> Iterator[ModelServer]:
    srv = ModelServer(EditScript(path="", rel="mod.py", before="X = 1\n", after="X = 2\n", old="X = 1", new="X = 2"))
    srv.start()
    yield srv
    srv.stop()


def prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer, name: str,
            builder: dict[str, Any]) -> RunSetup:
    """A workspace whose builder is the real CLI `name`; the supervisor's environment holds
    the proxy variables, a fresh HOME and the CLI's own endpoint/key variables."""
    bin_dir = cli_dir(name)
    setup = make_workspace(tmp_path / "w", files=FILES, builder=builder, ci_steps=CI_X2,
                           phases=[phase("P1", max_builder_attempts=1)])
    server.script = EditScript(path=str(setup.worktree / "mod.py"), rel="mod.py", before="X = 1\n",
                               after="X = 2\n", old="X = 1", new="X = 2")
    home = tmp_path / "home"
    home.mkdir()
    # codex refuses to set up its sandbox helper under $TMPDIR: keep its home outside it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in server.proxy_env().items():
        monkeypatch.setenv(key, value)
    return setup


def finish(setup: RunSetup, server: ModelServer, cached: bool = True) -> dict[str, Any]:
    """Run to the end; the run must succeed with a tag and touch no other destination."""
    setup.start()
    run_to_end(setup.workspace, setup.run_id)
    log = (setup.phase_dir("P1") / "attempts" / "1" / "builder.log").read_text()
    assert server.refused == [], f"the CLI tried other destinations: {server.refused}\n{log[-3000:]}"
    assert setup.run_json()["state"] == "DONE_SUCCESS", log[-4000:]
    assert setup.git("show", f"{setup.tag('P1')}:mod.py") == "X = 2"
    attempt = setup.attempt("P1", 1)
    totals = server.totals()
    assert totals["requests"] >= 1
    usage = attempt["usage"]
    assert (usage["tokens_in"], usage["tokens_out"]) == (totals["tokens_in"], totals["tokens_out"]), (
        usage, totals, log[-3000:])
    assert usage["tokens_cached"] == (totals["tokens_cached"] if cached else 0), (usage, totals)
    return attempt


def test_claude_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer) -> None:
    setup = prepare(tmp_path, monkeypatch, server, "claude", {"preset": "claude", "model": "claude-sonnet-4-5"})
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    attempt = finish(setup, server)
    # the cost is Claude Code's own figure from its result object
    out = (setup.phase_dir("P1") / "attempts" / "1" / "builder.log").read_text()
    reported = json.loads(out[out.index('{"'):out.rindex("}") + 1])["total_cost_usd"]
    assert attempt["usage"]["cost_usd"] == pytest.approx(reported) and reported > 0


def test_codex_falls_back_from_websocket_and_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer
) -> None:
    setup = prepare(tmp_path, monkeypatch, server, "codex", {"preset": "codex", "model": "test-model"})
    monkeypatch.setenv("CODEX_API_KEY", "sk-test-codex-key")
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.url}/v1")
    attempt = finish(setup, server)
    assert server.websocket_attempts >= 1  # the path of issue 17: reconnect errors, then HTTPS
    assert attempt["usage"]["turns"] == 1
    assert attempt["transient_errors"] >= 1
    # codex prints no cost and test-model has no price: unknown, never zero
    assert attempt["usage"]["cost_usd"] is None and attempt["usage"]["sources"]["cost_usd"] == "unknown"


def test_gemini(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer) -> None:
    setup = prepare(tmp_path, monkeypatch, server, "gemini", {"preset": "gemini", "model": "gemini-2.5-pro"})
    monkeypatch.setenv("GEMINI_API_KEY", "test-gemini-key")
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    # Gemini CLI 0.61 headless: GOOGLE_GEMINI_BASE_URL alone selects its "gateway" auth,
    # which headless mode rejects; the user's settings choose the API key. Usage
    # statistics have no environment switch: they are off in the same settings file.
    settings = {"security": {"auth": {"selectedType": "gemini-api-key"}}, "privacy": {"usageStatisticsEnabled": False}}
    (Path(os.environ["HOME"]) / ".gemini").mkdir()
    (Path(os.environ["HOME"]) / ".gemini" / "settings.json").write_text(json.dumps(settings))
    attempt = finish(setup, server)
    # gemini prints tokens and the model, no cost: estimated from the price table
    assert attempt["usage"]["sources"]["cost_usd"] == "estimated" and attempt["usage"]["cost_usd"] > 0


def test_aider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer) -> None:
    # The model's metadata (context size, prices) from a file, as aider documents: without it
    # aider downloads litellm's price list.
    meta = tmp_path / "model-metadata.json"
    meta.write_text(json.dumps({"openai/test-model": {
        "max_input_tokens": 128000, "max_tokens": 8192, "max_output_tokens": 8192, "mode": "chat",
        "input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002, "litellm_provider": "openai"}}))
    builder = {"preset": "aider", "model": "openai/test-model", "args": ["--model-metadata-file", str(meta)]}
    setup = prepare(tmp_path, monkeypatch, server, "aider", builder)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-aider-key")
    monkeypatch.setenv("OPENAI_API_BASE", f"{server.url}/v1")
    # aider reads cache hits from Anthropic/DeepSeek-style fields only, not OpenAI's
    # prompt_tokens_details.cached_tokens: it prints none here, and none is recorded
    attempt = finish(setup, server, cached=False)
    log = (setup.phase_dir("P1") / "attempts" / "1" / "builder.log").read_text()
    printed = re.findall(r"\$([0-9.]+) session", log)[-1]  # aider rounds its cost when it prints it
    assert attempt["usage"]["cost_usd"] == pytest.approx(float(printed)) and float(printed) > 0
    assert any(p.startswith(".aider.tags.cache") for p in attempt["excluded_files"]), attempt


def test_opencode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ModelServer) -> None:
    setup = prepare(tmp_path, monkeypatch, server, "opencode", {"preset": "opencode", "model": "scripted/test-model"})
    config = {"provider": {"scripted": {
        "npm": "@ai-sdk/openai-compatible", "name": "Scripted",
        "options": {"baseURL": f"{server.url}/v1", "apiKey": "test-opencode-key"},
        "models": {"test-model": {"name": "test-model", "cost": {"input": 1, "output": 2, "cache_read": 0.5}}}}},
        # its session-title call is not in `opencode run`'s usage events: off
        "agent": {"title": {"disable": True}}}
    monkeypatch.setenv("OPENCODE_CONFIG_CONTENT", json.dumps(config))
    monkeypatch.setenv("OPENCODE_DISABLE_MODELS_FETCH", "true")
    # opencode installs its plugin package into its config directory in the background: a
    # user's machine has it from the first run; here it comes from the CI install.
    seeded = TOOLS / "opencode-config"
    if not (seeded / "node_modules" / "@opencode-ai" / "plugin").is_dir():
        pytest.skip("opencode's plugin package is not installed in .ci-tools/opencode-config "
                    "(run .ci/install-agent-clis); its contract test did not run")
    shutil.copytree(seeded, Path(os.environ["HOME"]) / ".config" / "opencode", symlinks=True)
    attempt = finish(setup, server)
    requests = server.totals()["requests"]
    per_call = (USAGE_IN - USAGE_CACHED) * 1 + USAGE_CACHED * 0.5 + USAGE_OUT * 2  # USD per million tokens
    assert attempt["usage"]["cost_usd"] == pytest.approx(requests * per_call / 1e6)
