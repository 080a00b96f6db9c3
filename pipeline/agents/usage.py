"""Token and cost usage read from an agent CLI's own output (docs/architecture.md, Agents). Pure.

Each parser takes the agent's captured log (stdout and stderr interleaved, so it tolerates
lines that are not the CLI's structured output) and returns a `ParsedUsage`: the usage it
found, or None when the output carries none, plus notes for the record. A parser never
raises: malformed or truncated output is a note, never a crash (docs/architecture.md, Invariants).

One meaning for every CLI, whatever its own accounting:

- `tokens_in`: every input token the model processed, cached ones included;
- `tokens_cached`: the part of `tokens_in` read from a prompt cache;
- `tokens_out`: every output token, reasoning/thinking tokens included;
- `cost_usd`: the CLI's own cost figure; `has_cost` is False when the CLI reports none;
- `turns`: model turns/requests as the CLI counts them.

Formats followed (field names as documented by each project; see pipeline/data/agents.yaml
for the command lines):

- `claude_json`: Claude Code `claude -p --output-format json` (also the last line of
  `stream-json`): one object `{"type": "result", "subtype": "success"|"error_max_turns"|...,
  "is_error", "num_turns", "total_cost_usd", "usage": {"input_tokens",
  "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens"}, ...}`.
  `input_tokens` excludes both cache counts (Anthropic API usage semantics).
- `codex_jsonl`: OpenAI Codex CLI `codex exec --json` (codex-rs/exec/src/exec_events.rs):
  JSONL `ThreadEvent`s tagged by `type`; `turn.completed` carries `usage: {input_tokens,
  cached_input_tokens, output_tokens}` (cached is a subset of input); `turn.failed`
  carries `error.message`; `error` carries `message`. No cost is reported.
- `aider_text`: Aider's per-message report (aider/coders/base_coder.py, 0.5x-0.8x):
  `Tokens: 2.3k sent, 1.1k cache write, 12k cache hit, 156 received. Cost: $0.0091
  message, $0.0213 session.` Counts are rounded by `format_tokens` (<1000 raw, <10k one
  decimal + "k", else whole "k"); older releases printed `1,234` and `request`.
- `gemini_json`: Gemini CLI `gemini -p ... --output-format json` (the Gemini CLI repository's docs/cli/headless.md):
  one object `{"response", "stats": {"models": {<model>: {"api": {"totalRequests", ...},
  "tokens": {"prompt", "candidates", "total", "cached", "thoughts", "tool"}}}, ...},
  "error"?}`; `prompt` includes `cached`. No cost is reported.
- `opencode_jsonl`: opencode `opencode run --format json` (packages/opencode/src/cli/cmd/
  run.ts, session/message-v2.ts): JSONL `{"type", "timestamp", "sessionID", "part"}`;
  `step_finish` parts carry `cost` and `tokens: {input, output, reasoning, cache: {read,
  write}}` (input excludes the cache counts, output excludes reasoning); `error` events
  carry `error`.
- `cursor_json`: Cursor's `cursor-agent -p --output-format json`
  (cursor.com/docs/cli/reference/output-format): one `{"type": "result", "subtype",
  "is_error", "duration_ms", "result", "session_id", ...}` object without token usage.
- `none`: a plain command; usage comes from its AUTOPACK_RESULT file only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from pipeline.models.results import Usage, UsageSources

UsageFormat = Literal[
    "none", "claude_json", "codex_jsonl", "aider_text", "gemini_json", "opencode_jsonl", "cursor_json"
]
USAGE_FORMATS: tuple[str, ...] = get_args(UsageFormat)

_MAX_NOTES = 5


@dataclass(frozen=True)
class ParsedUsage:
    """What a CLI's output says about its usage."""

    usage: Usage | None  # None: the output carries no usage (malformed, truncated, or none reported)
    notes: tuple[str, ...] = ()
    has_cost: bool = False
    final_text: str | None = None  # the CLI's final answer, where its format carries one
    # Errors the CLI reported on the way and got past (codex's WebSocket reconnects, retries):
    # counted as warnings, never a failure when the run completes.
    transient_errors: int = 0
    # The CLI's final events say it failed (codex `turn.failed` or a last `error`, claude
    # `is_error`, gemini `error`): the attempt fails whatever the exit code.
    final_error: str | None = None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def parse_usage(fmt: str, text: str, who: str = "agent") -> ParsedUsage:
    """Usage from `text` in format `fmt`; never raises."""
    parser = _PARSERS.get(fmt)
    if parser is None:
        return ParsedUsage(None, (f"unknown usage format {fmt!r}",))
    try:
        return parser(text, who)
    except Exception as exc:  # a parser bug must not take a run down; record it instead
        return ParsedUsage(None, (f"{who}: could not read usage ({fmt}): {exc!r}",))


# -- helpers -----------------------------------------------------------------------------


class _Counter:
    """Sums token fields, remembering which ones were not usable numbers."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.bad: list[str] = []

    def add(self, name: str, source: Mapping[str, Any], key: str, where: str) -> None:
        value = source.get(key, 0)
        if value is None:
            value = 0
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.bad.append(f"{where}.{key}={value!r}")
            return
        self.values[name] = self.values.get(name, 0) + value

    def get(self, name: str) -> float:
        return self.values.get(name, 0)

    def usage(self, turns: int, has_cost: bool, model: str | None = None) -> Usage:
        """The sums; a cost the CLI did not report is unknown (null), never zero."""
        return Usage(
            tokens_in=int(self.get("in")),
            tokens_out=int(self.get("out")),
            tokens_cached=int(self.get("cached")),
            cost_usd=round(float(self.get("cost")), 6) if has_cost else None,
            turns=turns,
            model=model,
            sources=UsageSources(cost_usd="reported" if has_cost else "unknown"),
        )

    def notes(self, who: str) -> list[str]:
        if not self.bad:
            return []
        shown = ", ".join(self.bad[:_MAX_NOTES])
        return [f"{who}: ignored non-numeric usage field(s): {shown}"]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _jsonl_events(text: str, who: str, notes: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every line of `text` that is a JSON object; lines that look
    like JSON but do not parse (truncated output) are counted in one note added to `notes`."""
    broken: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped.startswith("{"):
            continue
        try:
            event = json.loads(stripped)
        except ValueError:
            broken.append(number)
            continue
        if isinstance(event, dict):
            yield number, event
    if broken:
        notes.append(f"{who}: {len(broken)} JSONL line(s) did not parse (truncated output?), first at line {broken[0]}")


_JSON_START = re.compile(r"^[ \t]*([{\[])", re.M)


def json_objects(text: str) -> tuple[list[dict[str, Any]], int]:
    """Top-level JSON objects that start at the beginning of a line (one-line or
    pretty-printed), the objects of top-level JSON arrays (Claude Code's `--verbose` JSON is
    an array of messages), and how many such starts did not parse (truncated output)."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    broken = 0
    pos = 0
    while True:
        match = _JSON_START.search(text, pos)
        if match is None:
            break
        start = match.start(1)
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            if match.group(1) == "{":
                broken += 1
            nl = text.find("\n", start)
            if nl < 0:
                break
            pos = nl + 1
            continue
        if isinstance(obj, dict):
            found.append(obj)
        elif isinstance(obj, list):
            found.extend(o for o in obj if isinstance(o, dict))
        pos = end
    return found, broken


def _number(token: str) -> int:
    """Aider's rounded counts: `156`, `1,234`, `2.3k`, `12k`, `1.5M`."""
    token = token.replace(",", "").strip()
    scale = 1
    if token[-1:] in ("k", "K"):
        scale, token = 1000, token[:-1]
    elif token[-1:] in ("m", "M"):
        scale, token = 1_000_000, token[:-1]
    return round(float(token) * scale)


def _done(
    counter: _Counter,
    turns: int,
    notes: list[str],
    who: str,
    has_cost: bool,
    final_text: str | None = None,
    model: str | None = None,
) -> ParsedUsage:
    usage = counter.usage(turns, has_cost, model)
    return ParsedUsage(usage, tuple([*notes, *counter.notes(who)]), has_cost, final_text)


# -- Claude Code ---------------------------------------------------------------------------


def _claude_json(text: str, who: str) -> ParsedUsage:
    objects, broken = json_objects(text)
    results = [o for o in objects if o.get("type") == "result"]
    if not results:
        why = "truncated" if broken else "missing"
        return ParsedUsage(
            None,
            (f"{who}: no Claude Code result object in its output ({why}; expected `--output-format json`)",),
        )
    result = results[-1]
    notes: list[str] = []
    if result.get("is_error") or result.get("subtype") not in (None, "success"):
        notes.append(f"{who}: claude reported {result.get('subtype') or 'an error'}")
    counter = _Counter()
    usage = _mapping(result.get("usage"))
    if not usage:
        notes.append(f"{who}: the Claude Code result has no usage block")
    counter.add("in", usage, "input_tokens", "usage")
    counter.add("in", usage, "cache_creation_input_tokens", "usage")
    counter.add("in", usage, "cache_read_input_tokens", "usage")
    counter.add("cached", usage, "cache_read_input_tokens", "usage")
    counter.add("out", usage, "output_tokens", "usage")
    has_cost = "total_cost_usd" in result
    counter.add("cost", result, "total_cost_usd", "result")
    turns = result.get("num_turns", 0)
    turns = turns if isinstance(turns, int) and turns >= 0 else 0
    models = [m for m in _mapping(result.get("modelUsage")) if isinstance(m, str)]
    model = models[0] if len(models) == 1 else None
    return _done(counter, turns, notes, who, has_cost, _text(result.get("result")), model)


# -- Codex CLI -----------------------------------------------------------------------------


def _codex_jsonl(text: str, who: str) -> ParsedUsage:
    """Usage from `turn.completed`; the outcome from the final events (issue 17): an
    `error` event followed by a completed turn (a WebSocket reconnect, a retried request)
    is a transient error, counted; a `turn.failed` or an `error` after the last completed
    turn is the final error."""
    counter = _Counter()
    notes: list[str] = []
    turns = 0
    final: str | None = None
    pending: list[str] = []  # errors since the last completed turn
    transient = 0
    for number, event in _jsonl_events(text, who, notes):
        kind = event.get("type")
        item = _mapping(event.get("item"))
        if kind == "item.completed" and item.get("type") == "agent_message":
            final = _text(item.get("text")) or final
        elif kind == "turn.completed":
            turns += 1
            transient += len(pending)
            pending = []
            usage = _mapping(event.get("usage"))
            counter.add("in", usage, "input_tokens", f"line {number}.usage")
            counter.add("cached", usage, "cached_input_tokens", f"line {number}.usage")
            counter.add("out", usage, "output_tokens", f"line {number}.usage")
        elif kind == "turn.failed":
            message = _mapping(event.get("error")).get("message", "")
            pending.append(f"codex turn failed: {message}"[:300])
        elif kind == "error":
            pending.append(f"codex error: {event.get('message', '')}"[:300])
    if transient:
        notes.append(f"{who}: codex reported {transient} transient error(s) before its turn completed")
    final_error = pending[-1] if pending else None
    if final_error:
        notes.append(f"{who}: {final_error}")
    if turns == 0:
        return ParsedUsage(None, (*notes, f"{who}: no `turn.completed` event in the codex output"),
                           final_text=final, transient_errors=transient, final_error=final_error)
    done = _done(counter, turns, notes, who, has_cost=False, final_text=final)
    return replace(done, transient_errors=transient, final_error=final_error)


# -- Aider ---------------------------------------------------------------------------------

_COUNT = r"([0-9][0-9,]*(?:\.[0-9]+)?[kKmM]?)"
_AIDER_TOKENS = re.compile(
    rf"Tokens: {_COUNT} sent(?:, {_COUNT} cache write)?(?:, {_COUNT} cache hit)?, {_COUNT} received\."
)
_MONEY = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
_AIDER_COST = re.compile(rf"Cost: \${_MONEY} (?:message|request), \${_MONEY} session\.")
_AIDER_MODEL = re.compile(r"^(?:Main model|Model): (\S+)", re.M)


def _aider_text(text: str, who: str) -> ParsedUsage:
    """Aider's report lines, read with every run of whitespace as one space: aider wraps
    them at the terminal's width, and puts `Cost:` on a line of its own when both cache
    write and cache hit are shown."""
    counter = _Counter()
    turns = 0
    session_cost: float | None = None
    flat = re.sub(r"\s+", " ", text)
    for match in _AIDER_TOKENS.finditer(flat):
        turns += 1
        sent, _write, hit, received = match.groups()
        counter.values["in"] = counter.get("in") + _number(sent)
        if hit:
            counter.values["cached"] = counter.get("cached") + _number(hit)
        counter.values["out"] = counter.get("out") + _number(received)
    for cost in _AIDER_COST.finditer(flat):
        session = float(cost.group(2).replace(",", ""))
        session_cost = session if session_cost is None else max(session_cost, session)
    if turns == 0:
        return ParsedUsage(None, (f"{who}: no aider `Tokens: ... sent, ... received.` line in its output",))
    model = _AIDER_MODEL.search(text)
    notes = [f"{who}: aider rounds its token counts (k = thousands)"]
    if session_cost is not None:
        counter.values["cost"] = session_cost  # `session` is cumulative: the last one is the total
    else:
        notes.append(f"{who}: aider printed no cost (the model has no price in its database)")
    return _done(counter, turns, notes, who, session_cost is not None, None, model.group(1) if model else None)


# -- Gemini CLI ----------------------------------------------------------------------------


def _gemini_json(text: str, who: str) -> ParsedUsage:
    objects, broken = json_objects(text)
    outputs = [o for o in objects if "stats" in o or "response" in o or "error" in o]
    if not outputs:  # stream-json: JSONL events, the last `result` carries the stats
        outputs = [o for o in objects if o.get("type") == "result"]
    if not outputs:
        why = "truncated" if broken else "missing"
        return ParsedUsage(
            None, (f"{who}: no Gemini CLI JSON output object ({why}; expected `--output-format json`)",)
        )
    output = outputs[-1]
    notes: list[str] = []
    error = output.get("error")
    if error:
        message = _mapping(error).get("message", error)
        notes.append(f"{who}: gemini reported an error: {message}"[:300])
    final = _text(output.get("response"))
    stats = _mapping(output.get("stats"))
    if "input_tokens" in stats or "output_tokens" in stats:
        return _gemini_stream_stats(stats, notes, who, final)
    models = _mapping(stats.get("models"))
    if not models:
        return ParsedUsage(None, (*notes, f"{who}: the Gemini CLI output has no stats.models"), final_text=final)
    counter = _Counter()
    turns = 0
    if not any("tokens" in _mapping(m) for m in models.values()):
        return ParsedUsage(None, (*notes, f"{who}: the Gemini CLI stats carry no token counts"), final_text=final)
    for name, stats in models.items():
        tokens = _mapping(_mapping(stats).get("tokens"))
        where = f"stats.models.{name}.tokens"
        counter.add("in", tokens, "prompt", where)
        counter.add("cached", tokens, "cached", where)
        counter.add("out", tokens, "candidates", where)
        counter.add("out", tokens, "thoughts", where)
        requests = _mapping(_mapping(stats).get("api")).get("totalRequests", 0)
        turns += requests if isinstance(requests, int) and requests >= 0 else 0
    main = max(models, key=lambda n: _mapping(_mapping(models[n]).get("tokens")).get("prompt") or 0)
    return _done(counter, turns, notes, who, has_cost=False, final_text=final, model=str(main))


def _gemini_stream_stats(stats: Mapping[str, Any], notes: list[str], who: str, final: str | None) -> ParsedUsage:
    """`--output-format stream-json`'s final `result` event: `stats: {input_tokens (cached
    included), output_tokens, cached, models: {<model>: {input_tokens, ...}}}`."""
    counter = _Counter()
    counter.add("in", stats, "input_tokens", "stats")
    counter.add("out", stats, "output_tokens", "stats")
    counter.add("cached", stats, "cached", "stats")
    models = _mapping(stats.get("models"))
    main = max(models, key=lambda n: _mapping(models[n]).get("input_tokens") or 0) if models else None
    return _done(counter, 0, notes, who, has_cost=False, final_text=final, model=main)


# -- opencode ------------------------------------------------------------------------------


def _opencode_jsonl(text: str, who: str) -> ParsedUsage:
    counter = _Counter()
    notes: list[str] = []
    steps = 0
    has_cost = False
    final: str | None = None
    for number, event in _jsonl_events(text, who, notes):
        kind = event.get("type")
        if kind == "step_finish":
            steps += 1
            part = _mapping(event.get("part"))
            tokens = _mapping(part.get("tokens"))
            cache = _mapping(tokens.get("cache"))
            where = f"line {number}.part.tokens"
            counter.add("in", tokens, "input", where)
            counter.add("in", cache, "read", where + ".cache")
            counter.add("in", cache, "write", where + ".cache")
            counter.add("cached", cache, "read", where + ".cache")
            counter.add("out", tokens, "output", where)
            counter.add("out", tokens, "reasoning", where)
            if "cost" in part:
                has_cost = True
                counter.add("cost", part, "cost", f"line {number}.part")
        elif kind == "text":
            final = _text(_mapping(event.get("part")).get("text")) or final
        elif kind == "error":
            error = event.get("error")
            detail = _mapping(_mapping(error).get("data")).get("message") or _mapping(error).get("name") or error
            notes.append(f"{who}: opencode error: {detail}"[:300])
    if steps == 0:
        return ParsedUsage(None, (*notes, f"{who}: no `step_finish` event in the opencode output"), final_text=final)
    return _done(counter, steps, notes, who, has_cost, final)


# -- Cursor agent --------------------------------------------------------------------------


def _cursor_json(text: str, who: str) -> ParsedUsage:
    objects, broken = json_objects(text)
    results = [o for o in objects if o.get("type") == "result"]
    if not results:
        why = "truncated" if broken else "missing"
        return ParsedUsage(None, (f"{who}: no cursor-agent result object in its output ({why})",))
    result = results[-1]
    notes = [f"{who}: cursor-agent reports no token usage; budgets see only what AUTOPACK_RESULT says"]
    if result.get("is_error") or result.get("subtype") not in (None, "success"):
        notes.insert(0, f"{who}: cursor-agent reported {result.get('subtype') or 'an error'}")
    usage = result.get("usage")
    # Releases that print usage use camelCase (inputTokens, outputTokens, cacheReadTokens,
    # cacheWriteTokens); an object with neither spelling is no usage, not zeros.
    camel = isinstance(usage, Mapping) and ("inputTokens" in usage or "outputTokens" in usage)
    snake = isinstance(usage, Mapping) and ("input_tokens" in usage or "output_tokens" in usage)
    if isinstance(usage, Mapping) and (camel or snake):
        counter = _Counter()
        if camel:
            counter.add("in", usage, "inputTokens", "usage")
            counter.add("in", usage, "cacheReadTokens", "usage")
            counter.add("in", usage, "cacheWriteTokens", "usage")
            counter.add("cached", usage, "cacheReadTokens", "usage")
            counter.add("out", usage, "outputTokens", "usage")
        else:
            counter.add("in", usage, "input_tokens", "usage")
            counter.add("out", usage, "output_tokens", "usage")
        return _done(counter, 0, notes[:-1], who, has_cost=False, final_text=_text(result.get("result")))
    return ParsedUsage(None, tuple(notes), final_text=_text(result.get("result")))


def _none(_text: str, _who: str) -> ParsedUsage:
    return ParsedUsage(None)


_PARSERS: dict[str, Callable[[str, str], ParsedUsage]] = {
    "none": _none,
    "claude_json": _claude_json,
    "codex_jsonl": _codex_jsonl,
    "aider_text": _aider_text,
    "gemini_json": _gemini_json,
    "opencode_jsonl": _opencode_jsonl,
    "cursor_json": _cursor_json,
}
assert set(_PARSERS) == set(USAGE_FORMATS)


def find_json_object(text: str, key: str, tail: int = 50_000) -> dict[str, Any] | None:
    """The last JSON object holding `key` anywhere in (the last `tail` characters of)
    `text`: a verdict an agent CLI printed in its final message, fenced or not."""
    text = text[-tail:]
    decoder = json.JSONDecoder()
    pos = text.rfind("{")
    while pos >= 0:
        try:
            obj, _end = decoder.raw_decode(text, pos)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and key in obj:
            return obj
        pos = text.rfind("{", 0, pos)
    return None
