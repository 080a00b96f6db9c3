"""The run inspector's timeline: tiers, phases and attempts against wall time, as inline
SVG (layer L4; reporting/ after the restructure).

Spans come from the event log (a phase's EXECUTING -> GATE -> CI_RUNNING transitions,
each carrying its attempt) and from the auditor records (their started_at/finished_at).
Events are stamped to the second; the events of one second are spread evenly over it,
so their order shows even when a whole phase took less than a second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from pipeline.reporting.inspect.read import RunFiles, items, num, obj, text

# Span kind -> label; outcome -> colour.
KINDS = {"builder": "builder", "gate": "gate", "auditor": "auditor", "ci": "CI"}
COLOURS = {"ok": "#3b9a57", "fail": "#d0453b", "retry": "#e39b2d", "open": "#8a94a6", "skip": "#c5cad3"}
_PHASE_SPANS = {"EXECUTING": "builder", "GATE": "gate", "CI_RUNNING": "ci"}
LABEL_W, ROW_H, WIDTH = 150, 22, 960


@dataclass(frozen=True)
class Span:
    row: str
    kind: str
    attempt: int
    start: float
    end: float
    outcome: str  # a COLOURS key
    note: str


def parse_ts(value: str) -> float | None:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def event_times(events: list[dict[str, Any]]) -> list[float | None]:
    """Each event's time, events of one second spread over that second."""
    stamps = [parse_ts(text(e, "ts")) for e in events]
    times: list[float | None] = list(stamps)
    i = 0
    while i < len(stamps):
        j = i
        while j < len(stamps) and stamps[j] == stamps[i]:
            j += 1
        start = stamps[i]
        if start is not None:
            for n in range(i, j):
                times[n] = start + (n - i) / (j - i)
        i = j
    return times


def _attempt_outcomes(files: RunFiles) -> dict[tuple[str, int], dict[str, str]]:
    """(phase, attempt) -> {span kind: outcome}, from builder.json, gate.json and ci.json."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for phase in files.phases:
        for attempt in phase.attempts:
            outcome = text(attempt.builder, "outcome")
            builder = "fail" if outcome in ("agent_failed", "timed_out", "no_change", "bad_result") else "ok"
            gate = {"pass": "ok", "fail": "fail"}.get(text(attempt.gate, "verdict"), "open")
            found[(phase.phase_id, attempt.k)] = {"builder": builder, "gate": gate}
        for ci in phase.ci:
            k = int(num(ci.report, "attempt") or ci.k)
            verdict = text(ci.report, "verdict")
            found.setdefault((phase.phase_id, k), {})["ci"] = {"pass": "ok", "fail": "retry"}.get(verdict, "open")
    return found


def phase_spans(files: RunFiles) -> list[Span]:
    times = event_times(files.events)
    outcomes = _attempt_outcomes(files)
    open_span: dict[str, tuple[str, int, float]] = {}
    spans: list[Span] = []
    for event, at in zip(files.events, times, strict=True):
        entity = text(event, "entity")
        if text(event, "kind") != "phase" or at is None:
            continue
        if entity in open_span:
            kind, k, start = open_span.pop(entity)
            outcome = outcomes.get((entity, k), {}).get(kind, "open")
            if kind == "ci" and text(event, "to_state") == "FAILED":
                outcome = "fail"
            if kind == "gate" and text(event, "to_state") == "FAILED":
                outcome = "fail"
            spans.append(Span(entity, kind, k, start, at, outcome, text(event, "to_state")))
        kind = _PHASE_SPANS.get(text(event, "to_state"), "")
        if kind:
            k = int(num(obj(event, "data"), "attempt") or 0)
            open_span[entity] = (kind, k, at)
    end = max((t for t in times if t is not None), default=0.0)
    for entity, (kind, k, start) in open_span.items():
        spans.append(Span(entity, kind, k, start, end, "open", "still running when the record ends"))
    return spans + _auditor_spans(files)


def _auditor_spans(files: RunFiles) -> list[Span]:
    spans = []
    for phase in files.phases:
        for audit in phase.audits:
            start, end = parse_ts(text(audit, "started_at")), parse_ts(text(audit, "finished_at"))
            if start is None:
                continue
            verdict = text(audit, "verdict")
            outcome = {"approve": "ok", "revise": "retry", "reject": "fail"}.get(verdict, "open")
            k = int(num(audit, "k") or 0)
            spans.append(Span(phase.phase_id, "auditor", k, start, end or start + 1, outcome, verdict or "no verdict"))
    return spans


def _tier_rows(files: RunFiles) -> list[tuple[str, list[str]]]:
    """[(tier id, [phase ids])] in plan order, from run.json (else the phase directories)."""
    tiers: dict[str, list[str]] = {}
    for p in items(files.run, "phases"):
        tiers.setdefault(text(p, "tier_id", "?"), []).append(text(p, "phase_id", "?"))
    if not tiers:
        tiers["?"] = [p.phase_id for p in files.phases]
    return list(tiers.items())


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def render_timeline(files: RunFiles) -> str:
    spans = phase_spans(files)
    times = [t for t in event_times(files.events) if t is not None]
    if not times:
        return '<p class="missing">No timeline: events.jsonl has no readable events.</p>'
    t0 = min([*times, *(s.start for s in spans)])
    t1 = max([*times, *(s.end for s in spans), t0 + 1])
    scale = (WIDTH - LABEL_W - 10) / (t1 - t0)
    rows = _tier_rows(files)
    by_row: dict[str, list[Span]] = {}
    for span in spans:
        by_row.setdefault(span.row, []).append(span)
    parts: list[str] = []
    y = 24
    for tier_id, phase_ids in rows:
        parts.append(_tier_band(tier_id, phase_ids, by_row, y, t0, scale))
        y += ROW_H
        for phase_id in phase_ids:
            parts.append(_phase_row(phase_id, by_row.get(phase_id, []), y, t0, scale))
            y += ROW_H
    axis = _axis(t0, t1, scale, y)
    height = y + 24
    return (
        f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
        f'role="img" aria-label="timeline of the run">{axis}{"".join(parts)}</svg>'
    )


def _x(t: float, t0: float, scale: float) -> float:
    return LABEL_W + (t - t0) * scale


def _tier_band(tier_id: str, phase_ids: list[str], by_row: dict[str, list[Span]], y: int, t0: float, s: float) -> str:
    spans = [sp for pid in phase_ids for sp in by_row.get(pid, [])]
    label = f'<text x="4" y="{y + 15}" class="tl-tier">tier {escape(tier_id)}</text>'
    if not spans:
        return label
    x0, x1 = _x(min(sp.start for sp in spans), t0, s), _x(max(sp.end for sp in spans), t0, s)
    return label + (
        f'<rect x="{x0:.1f}" y="{y + 6}" width="{max(x1 - x0, 2):.1f}" height="10" class="tl-band">'
        f"<title>tier {escape(tier_id)}</title></rect>"
    )


def _phase_row(phase_id: str, spans: Iterable[Span], y: int, t0: float, s: float) -> str:
    out = [
        f'<a href="#phase-{escape(phase_id)}"><text x="14" y="{y + 15}" class="tl-phase">{escape(phase_id)}</text></a>'
    ]
    for span in sorted(spans, key=lambda sp: (sp.start, sp.kind)):
        x0, x1 = _x(span.start, t0, s), _x(span.end, t0, s)
        w = max(x1 - x0, 3.0)
        lane = 3 if span.kind == "auditor" else 2
        took = _fmt_duration(span.end - span.start)
        tip = f"{phase_id} attempt {span.attempt}: {KINDS[span.kind]} ({span.outcome}) {took}"
        out.append(
            f'<rect x="{x0:.1f}" y="{y + lane}" width="{w:.1f}" height="{ROW_H - 2 * lane - 2}" '
            f'fill="{COLOURS[span.outcome]}" class="tl-{span.kind}"><title>{escape(tip)}</title></rect>'
        )
        if w > 34:
            label = f"{KINDS[span.kind]} #{span.attempt}" if w > 64 else KINDS[span.kind]
            out.append(f'<text x="{x0 + 3:.1f}" y="{y + 14}" class="tl-label">{escape(label)}</text>')
    return "".join(out)


def _axis(t0: float, t1: float, scale: float, y: int) -> str:
    total = t1 - t0
    out = [f'<line x1="{LABEL_W}" y1="{y + 2}" x2="{WIDTH - 10}" y2="{y + 2}" class="tl-axis"/>']
    for n in range(5):
        t = t0 + total * n / 4
        x = _x(t, t0, scale)
        stamp = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%H:%M:%S")
        if total < 120 and n:  # a short run: offsets say more than repeated seconds
            stamp = f"+{t - t0:.1f}s"
        anchor = "start" if n == 0 else ("end" if n == 4 else "middle")
        out.append(f'<line x1="{x:.1f}" y1="18" x2="{x:.1f}" y2="{y + 2}" class="tl-grid"/>')
        out.append(f'<text x="{x:.1f}" y="{y + 16}" text-anchor="{anchor}" class="tl-tick">{stamp}</text>')
    out.append(
        f'<text x="{LABEL_W}" y="12" class="tl-tick">'
        f"UTC; {_fmt_duration(total)} from the first event to the last</text>"
    )
    return "".join(out)
