"""Which usage an agent call is recorded with (layer: agents): the CLI's own figures, the
agent's result file, a cost estimate from the price table, or unknown.

Three states per figure (`Usage.sources`): `reported`; `estimated` (a cost from the price
table, `pipeline.agents.prices`, for a CLI that reports tokens and a model but no cost);
`unknown` (null, never zero: budgets charge the call's reservation for it).
"""

from __future__ import annotations

from pipeline.agents.prices import estimate_cost
from pipeline.agents.usage import ParsedUsage
from pipeline.models.results import UNKNOWN_USAGE, Usage


def combine_usage(
    parsed: ParsedUsage, from_result: Usage, fmt: str, model: str | None = None
) -> tuple[Usage, tuple[str, ...]]:
    """The CLI's own usage where it reports one, else the result file's, else unknown.

    Three states per figure (`Usage.sources`): `reported`; `estimated` (a cost from the
    price table, `pipeline.agents.prices`, for a CLI that reports tokens and a model but no
    cost); `unknown` (null, never zero). The generic `command` preset (fmt `none`) is not a
    model CLI: its usage is what its result file says. Notes say which source counted."""
    notes = list(parsed.notes)
    if parsed.usage is None:
        if fmt == "none":
            return from_result, tuple(notes)
        if from_result.tokens or from_result.cost_usd:
            notes.append("usage taken from the AUTOPACK_RESULT file")
            return from_result, tuple(notes)
        notes.append("no usage reported: unknown (budgets charge the call's reservation)")
        return UNKNOWN_USAGE, tuple(notes)
    usage = parsed.usage
    if usage.cost_usd is None and from_result.cost_usd:
        notes.append("cost taken from the AUTOPACK_RESULT file (the CLI reports none)")
        return usage.model_copy(update={"cost_usd": from_result.cost_usd, "sources": usage.sources.model_copy(
            update={"cost_usd": "reported"})}), tuple(notes)
    if usage.cost_usd is None:
        usage, note = _estimated(usage, model)
        notes.append(note)
    return usage, tuple(notes)


def _estimated(usage: Usage, model: str | None) -> tuple[Usage, str]:
    """`usage` with its unknown cost estimated from the price table, where the model is known."""
    name = usage.model or model
    if name is None:
        return usage, "the CLI reports no cost and no model: cost unknown (budgets charge the reservation)"
    cost = estimate_cost(name, usage.tokens_in or 0, usage.tokens_out or 0, usage.tokens_cached or 0)
    if cost is None:
        return usage, f"the CLI reports no cost and {name!r} is not in the price table: cost unknown"
    sources = usage.sources.model_copy(update={"cost_usd": "estimated"})
    return usage.model_copy(update={"cost_usd": cost, "model": name, "sources": sources}), (
        f"cost estimated from the price table for {name!r} (the CLI reports none)"
    )
