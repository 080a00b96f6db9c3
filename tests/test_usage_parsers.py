"""The usage parsers read each CLI's real output, and say "unknown" rather than invent zeros.

Samples under tests/data/cli_outputs/ were printed by the pinned real CLIs (the releases
`.ci/install-agent-clis` installs) run against testing/modelserver.py, which serves 900
input and 60 output tokens per request; the others follow the CLIs' own format code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.agents.accounting import combine_usage
from pipeline.agents.final import with_final_error
from pipeline.agents.usage import parse_usage
from pipeline.models.results import Usage, UsageSources
from pipeline.policy.budgets import charge

SAMPLES = Path(__file__).parent / "data" / "cli_outputs"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


# -- aider ---------------------------------------------------------------------------------


def test_aider_cost_on_its_own_line_is_read() -> None:
    # aider/coders/base_coder.py: with both cache write and cache hit, `Cost:` gets a line of its own
    text = (
        "Applied edit to mod.py\n"
        "Tokens: 12k sent, 1.1k cache write, 8.0k cache hit, 1,204 received.\n"
        "Cost: $0.03 message, $0.04 session.\n"
    )
    parsed = parse_usage("aider_text", text)
    assert parsed.usage is not None and parsed.has_cost
    assert parsed.usage.cost_usd == pytest.approx(0.04)
    assert (parsed.usage.tokens_in, parsed.usage.tokens_cached, parsed.usage.tokens_out) == (12000, 8000, 1204)
    assert not any("printed no cost" in n for n in parsed.notes)


def test_aider_lines_wrapped_at_the_terminal_width_are_read() -> None:
    text = sample("aider-0.86.2-columns40.txt")  # COLUMNS=40: `Cost:` and its figures are split
    assert "Cost: \n$0.0010" in text
    parsed = parse_usage("aider_text", text)
    assert parsed.usage is not None and parsed.has_cost
    assert (parsed.usage.tokens_in, parsed.usage.tokens_out, parsed.usage.cost_usd) == (900, 60, 0.001)
    assert parsed.usage.model == "openai/test-model"


# -- Claude Code ---------------------------------------------------------------------------


def test_claude_verbose_json_array_is_read() -> None:
    text = sample("claude-2.1.332-verbose.json")  # `--verbose --output-format json`: an array
    assert text.lstrip().startswith("[")
    parsed = parse_usage("claude_json", text)
    assert parsed.usage is not None
    assert (parsed.usage.tokens_in, parsed.usage.tokens_out, parsed.usage.turns) == (2700, 180, 3)
    assert parsed.usage.cost_usd is not None and parsed.usage.cost_usd > 0
    assert parsed.usage.model == "claude-sonnet-4-5"
    assert parsed.final_text == "Done: the edit is made."


# -- Cursor --------------------------------------------------------------------------------


def test_cursor_camel_case_usage_is_read_not_zero() -> None:
    text = (
        '{"type":"result","subtype":"success","is_error":false,"duration_ms":5123,"result":"done",'
        '"session_id":"s1","usage":{"inputTokens":1200,"outputTokens":300,"cacheReadTokens":800,'
        '"cacheWriteTokens":100}}\n'
    )
    parsed = parse_usage("cursor_json", text)
    assert parsed.usage is not None
    assert (parsed.usage.tokens_in, parsed.usage.tokens_cached, parsed.usage.tokens_out) == (2100, 800, 300)
    assert parsed.usage.cost_usd is None and parsed.usage.sources.cost_usd == "unknown"


def test_cursor_usage_without_known_fields_is_unknown() -> None:
    text = '{"type":"result","subtype":"success","is_error":false,"result":"done","usage":{"requests":1}}\n'
    assert parse_usage("cursor_json", text).usage is None


# -- Gemini --------------------------------------------------------------------------------


def test_gemini_stream_json_stats_are_read() -> None:
    parsed = parse_usage("gemini_json", sample("gemini-0.61.0-stream-json.jsonl"))
    assert parsed.usage is not None
    assert (parsed.usage.tokens_in, parsed.usage.tokens_out, parsed.usage.tokens_cached) == (2700, 180, 0)
    assert parsed.usage.model == "gemini-2.5-pro"


def test_gemini_stats_without_token_counts_are_unknown() -> None:
    text = '{"response": "ok", "stats": {"models": {"gemini-2.5-pro": {"api": {"totalRequests": 1}}}}}\n'
    assert parse_usage("gemini_json", text).usage is None


# -- Codex: outcome from the final events (issue 17) -----------------------------------------


def test_codex_reconnect_errors_before_a_completed_turn_are_transient() -> None:
    text = sample("codex-0.171.0-websocket-fallback.jsonl")
    assert '"Reconnecting... 2/5' in text and "Falling back from WebSockets" in text
    parsed = parse_usage("codex_jsonl", text)
    assert parsed.final_error is None
    assert parsed.transient_errors >= 4
    assert parsed.usage is not None and (parsed.usage.tokens_in, parsed.usage.tokens_out) == (1800, 120)


def test_codex_error_after_the_last_turn_is_final() -> None:
    text = sample("codex-0.171.0-websocket-fallback.jsonl") + (
        '{"type":"turn.started"}\n{"type":"error","message":"stream disconnected before completion"}\n'
        '{"type":"turn.failed","error":{"message":"stream disconnected before completion"}}\n'
    )
    parsed = parse_usage("codex_jsonl", text)
    assert parsed.final_error is not None and "stream disconnected" in parsed.final_error
    assert parsed.usage is not None and parsed.usage.tokens_in == 1800  # the completed turn still counts


# -- the three states and the budgets --------------------------------------------------------


def test_no_usage_from_a_cli_is_unknown_never_zero() -> None:
    usage, notes = combine_usage(parse_usage("claude_json", "Error: not logged in\n"), Usage(), "claude_json")
    assert (usage.tokens_in, usage.tokens_out, usage.cost_usd) == (None, None, None)
    assert usage.sources == UsageSources(
        tokens_in="unknown", tokens_out="unknown", tokens_cached="unknown", cost_usd="unknown"
    )
    assert any("unknown" in n for n in notes)


def test_a_cost_the_cli_does_not_report_is_estimated_from_the_price_table() -> None:
    parsed = parse_usage("gemini_json", sample("gemini-0.61.0-stream-json.jsonl"))
    usage, notes = combine_usage(parsed, Usage(), "gemini_json")
    assert usage.sources.cost_usd == "estimated" and usage.cost_usd is not None and usage.cost_usd > 0
    assert usage.sources.tokens_in == "reported"
    assert any("estimated" in n for n in notes)


def test_an_unpriced_model_leaves_the_cost_unknown() -> None:
    parsed = parse_usage("codex_jsonl", sample("codex-0.171.0-websocket-fallback.jsonl"))
    usage, _notes = combine_usage(parsed, Usage(), "codex_jsonl", model="no-such-model-anywhere")
    assert usage.cost_usd is None and usage.sources.cost_usd == "unknown"


def test_unknown_usage_is_charged_the_reservation() -> None:
    unknown, _ = combine_usage(parse_usage("cursor_json", ""), Usage(), "cursor_json")
    spend = charge(unknown, 50_000, 1.25, builder_attempts=1)
    assert (spend.tokens, spend.tokens_reserved) == (50_000, 50_000)
    assert (spend.cost_usd, spend.cost_reserved_usd, spend.cost_estimated_usd) == (1.25, 1.25, 0.0)

    known = Usage(tokens_in=900, tokens_out=60, cost_usd=0.01)
    spend = charge(known, 50_000, 1.25)
    assert (spend.tokens, spend.tokens_reserved, spend.cost_usd, spend.cost_reserved_usd) == (960, 0, 0.01, 0.0)


def final(fmt: str, text: str) -> str | None:
    return with_final_error(fmt, text, parse_usage(fmt, text)).final_error


def test_claude_and_gemini_final_errors_fail_but_a_success_does_not() -> None:
    assert final("claude_json", sample("claude-2.1.332-verbose.json")) is None
    failed = '{"type":"result","subtype":"success","is_error":true,"result":"API Error: 401","num_turns":1}\n'
    assert "401" in (final("claude_json", failed) or "")
    assert final("gemini_json", sample("gemini-0.61.0-stream-json.jsonl")) is None
    gem = '{"session_id": "s", "error": {"type": "Error", "message": "Invalid auth method selected.", "code": 41}}\n'
    assert "Invalid auth method" in (final("gemini_json", gem) or "")
