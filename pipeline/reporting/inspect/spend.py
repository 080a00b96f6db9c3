"""The run inspector's spend section: every budget (run, tier, phase) as a bar, usage told
apart as reported by the agent, estimated by the supervisor, or reserved ahead of a call
(layer L4; reporting/ after the restructure).

builder.json's `usage.sources` says per figure whether it was reported, estimated (a
cost from the price table) or unknown; a spend's `tokens_reserved`, `cost_estimated_usd`
and `cost_reserved_usd` are the parts of its tokens and cost that were not reported (the
reservation charged for calls whose usage was unknown). A usage carrying `tokens_source`
(or `cost_source`) and a spend with `reserved_tokens` (a reservation held for a call in
flight) are read too. Records without those fields are all "reported".
"""

from __future__ import annotations

from typing import Any

from pipeline.reporting.inspect.html import SMALL, bar, esc, fmt_num, fmt_usd, link, table
from pipeline.reporting.inspect.read import Phase, RunFiles, items, num, obj, phase_strategy, text, tier_strategy

LEGEND = (
    '<p class="legend"><svg width="12" height="12"><rect width="12" height="12" class="b-reported"/></svg> reported '
    '<svg width="12" height="12"><rect width="12" height="12" class="b-estimated"/></svg> estimated '
    '<svg width="12" height="12"><rect width="12" height="12" class="b-reserved"/></svg> reserved '
    '<svg width="12" height="12"><rect width="12" height="12" class="b-used"/></svg> used '
    "| the line marks the cap; a red frame is over it</p>"
)


def usage_sources(usage: dict[str, Any]) -> dict[str, str]:
    """{"tokens": "unknown", "cost": "estimated", ...} from `usage.sources` (per figure) or
    `usage.*_source` fields, where present."""
    found: dict[str, str] = {}
    sources = obj(usage, "sources")
    if sources:
        tokens = {text(sources, "tokens_in", "reported"), text(sources, "tokens_out", "reported")}
        found["tokens"] = next((s for s in ("unknown", "estimated") if s in tokens), "reported")
        found["cost"] = text(sources, "cost_usd", "reported")
    found.update(
        {k.removesuffix("_source"): v for k, v in usage.items() if k.endswith("_source") and isinstance(v, str)}
    )
    return found


def usage_tokens(usage: dict[str, Any]) -> float:
    return (num(usage, "tokens_in") or 0.0) + (num(usage, "tokens_out") or 0.0)


def estimated_tokens(phase: Phase) -> float:
    records = [a.builder for a in phase.attempts] + phase.audits
    total = 0.0
    for record in records:
        usage = obj(record, "usage")
        if usage_sources(usage).get("tokens") == "estimated":
            total += usage_tokens(usage)
    return total


def _token_parts(spend: dict[str, Any], estimated: float) -> list[tuple[str, float]]:
    used = num(spend, "tokens") or 0.0
    charged = min(num(spend, "tokens_reserved") or 0.0, used)  # unknown calls' reservations, within used
    held = num(spend, "reserved_tokens") or 0.0  # a reservation held for a call in flight
    estimated = min(estimated, used - charged)
    return [("reported", used - estimated - charged), ("estimated", estimated), ("reserved", charged + held)]


def _cost_parts(spend: dict[str, Any]) -> list[tuple[str, float]]:
    cost = num(spend, "cost_usd") or 0.0
    estimated = min(num(spend, "cost_estimated_usd") or 0.0, cost)
    reserved = min(num(spend, "cost_reserved_usd") or 0.0, cost - estimated)
    return [("reported", cost - estimated - reserved), ("estimated", estimated), ("reserved", reserved)]


def _figure(parts: list[tuple[str, float]], cap: float | None, fmt: Any) -> str:
    used = sum(v for cls, v in parts if cls != "reserved")
    reserved = sum(v for cls, v in parts if cls == "reserved")
    figure = f"{fmt(used)} of {fmt(cap) if cap is not None else 'no cap'}"
    if reserved:
        figure += f" (+{fmt(reserved)} reserved)"
    estimated = sum(v for cls, v in parts if cls == "estimated")
    if estimated:
        figure += f"; {fmt(estimated)} estimated"
    return figure


def _row(name: str, parts: list[tuple[str, float]], cap: float | None, fmt: Any, source: str) -> list[str]:
    figure = _figure(parts, cap, fmt)
    return [esc(name), bar(parts, cap, f"{name}: {figure}"), esc(figure), source]


def _cell(name: str, parts: list[tuple[str, float]], cap: float | None, fmt: Any = fmt_num) -> str:
    """A bar with its figure under it, for the one-row-per-tier/phase tables."""
    figure = _figure(parts, cap, fmt)
    return f'{bar(parts, cap, f"{name}: {figure}", SMALL)}<br><span class="fig">{esc(figure)}</span>'


def _used(value: float | None) -> list[tuple[str, float]]:
    return [("used", value or 0.0)]


def run_rows(files: RunFiles) -> list[list[str]]:
    run, budgets, spend = files.run, obj(files.run, "budgets"), obj(files.run, "spend")
    estimated = sum(estimated_tokens(p) for p in files.phases)
    src = link("run.json")
    rows = [_row("tokens", _token_parts(spend, estimated), num(budgets, "token_cap"), fmt_num, src)]
    cost_cap = num(budgets, "cost_cap_usd")
    rows.append(_row("cost (USD)", _cost_parts(spend), cost_cap, fmt_usd, src))
    minutes = num(budgets, "max_duration_minutes")
    rows.append(
        _row("active time (s)", _used(num(spend, "active_seconds")), minutes * 60 if minutes else None, fmt_num, src)
    )
    rows.append(
        _row("minor issues", _used(num(spend, "minor_issues")), num(budgets, "max_minor_issues_total"), fmt_num, src)
    )
    rows.append(_row("phases", _used(float(len(items(run, "phases")))), num(budgets, "max_phases"), fmt_num, src))
    return rows


def tier_rows(files: RunFiles) -> list[list[str]]:
    rows = []
    estimated = {p.phase_id: estimated_tokens(p) for p in files.phases}
    for tier in items(files.run, "tiers"):
        tier_id = text(tier, "tier_id", "?")
        caps, spend = tier_strategy(files, tier_id), obj(tier, "spend")
        est = sum(estimated.get(pid, 0.0) for pid in items(caps, "phase_ids") if isinstance(pid, str))
        rows.append(
            [
                esc(tier_id),
                _cell(f"{tier_id} tokens", _token_parts(spend, est), num(caps, "token_cap")),
                _cell(f"{tier_id} CI runs", _used(num(spend, "ci_runs")), num(caps, "ci_run_cap")),
                _cell(f"{tier_id} minor issues", _used(num(spend, "minor_issues")), num(caps, "max_minor_issues")),
                _cell(f"{tier_id} major issues", _used(num(spend, "major_issues")), num(caps, "max_major_issues")),
                link("strategy.json", "caps") + " " + link("run.json", "spend"),
            ]
        )
    return rows


def phase_rows(files: RunFiles) -> list[list[str]]:
    rows = []
    for phase in files.phases:
        caps, spend, pid = phase_strategy(files, phase.phase_id), obj(phase.record, "spend"), phase.phase_id
        auditor = num(spend, "auditor_attempts")
        rows.append(
            [
                f'<a href="#phase-{esc(pid)}">{esc(pid)}</a>',
                _cell(f"{pid} tokens", _token_parts(spend, estimated_tokens(phase)), num(caps, "incident_token_cap")),
                _cell(
                    f"{pid} builder attempts", _used(num(spend, "builder_attempts")), num(caps, "max_builder_attempts")
                ),
                _cell(f"{pid} auditor calls", _used(auditor), num(caps, "max_auditor_attempts")) if auditor else "—",
                link(f"{phase.rel}/phase.json", "spend"),
            ]
        )
    return rows


def render_spend(files: RunFiles) -> str:
    headers = ["budget", "", "used", "from"]
    return "".join(
        [
            LEGEND,
            "<h3>Run</h3>",
            table(headers, run_rows(files), "spend"),
            "<h3>Tiers</h3>",
            table(["tier", "tokens", "CI runs", "minor issues", "major issues", "from"], tier_rows(files), "spend"),
            "<h3>Phases</h3>",
            '<p class="muted">A phase\'s token cap is its incident cap: no agent call starts once the phase has '
            "spent it.</p>",
            table(
                ["phase", "tokens (incident cap)", "builder attempts", "auditor calls", "from"],
                phase_rows(files),
                "spend",
            ),
        ]
    )
