"""The final events of an agent CLI's output decide its outcome (issue 17; layer: agents).

Errors a CLI reports on the way and gets past (codex's WebSocket reconnects, retried API
calls) are not failures; its last word is. Codex's is read with its usage
(`pipeline.agents.usage`, `ParsedUsage.final_error`); Claude Code's and Gemini CLI's here:

- Claude Code: the last `result` object with `is_error: true`;
- Gemini CLI: an `error` in its final output object, or a stream-json `result` whose
  `status` is not `success`.
"""

from __future__ import annotations

from typing import Any

from pipeline.agents.usage import ParsedUsage, json_objects


def with_final_error(fmt: str, text: str, parsed: ParsedUsage) -> ParsedUsage:
    """`parsed` with the final error the output ends with, for the formats read here."""
    if parsed.final_error is not None:
        return parsed
    finder = _FINDERS.get(fmt)
    error = finder(json_objects(text)[0]) if finder else None
    return parsed if error is None else ParsedUsage(
        parsed.usage, parsed.notes, parsed.has_cost, parsed.final_text, parsed.transient_errors, error[:300]
    )


def _claude(objects: list[dict[str, Any]]) -> str | None:
    results = [o for o in objects if o.get("type") == "result"]
    if not results or results[-1].get("is_error") is not True:
        return None
    last = results[-1]
    detail = next((v for v in (last.get("result"), last.get("subtype")) if isinstance(v, str) and v), "an error")
    return f"claude ended with an error: {detail}"


def _gemini(objects: list[dict[str, Any]]) -> str | None:
    finals = [o for o in objects if "stats" in o or "response" in o or "error" in o or o.get("type") == "result"]
    if not finals:
        return None
    last = finals[-1]
    error = last.get("error")
    if not error and last.get("status") in (None, "success"):
        return None
    message = (error.get("message", error) if isinstance(error, dict) else error) or last.get("status")
    return f"gemini ended with an error: {message}"


_FINDERS = {"claude_json": _claude, "gemini_json": _gemini}
