"""Charts as inline SVG text.

The report's HTML page must render offline, with no network and no script, so charts are
plain SVG elements computed here: bars are `<rect>`s, every mark has a `<title>` (the
browser shows it as a tooltip), and the SVG scales with its container via `viewBox`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

WIDTH = 760
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;font-size:12px"
PALETTE = {
    "good": "#2e7d32",
    "bad": "#c62828",
    "warn": "#ef6c00",
    "neutral": "#78909c",
    "accent": "#1565c0",
    "minor": "#f9a825",
    "major": "#c62828",
}


@dataclass(frozen=True)
class Bar:
    label: str  # under the bar (may be blank: too many bars to label each)
    value: float
    tooltip: str
    color: str = PALETTE["accent"]


@dataclass(frozen=True)
class StackedRow:
    label: str
    parts: Mapping[str, float]  # series name -> value, drawn in the series order given
    note: str = ""


@dataclass(frozen=True)
class Series:
    name: str
    color: str


@dataclass
class _Svg:
    width: int
    height: int
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, element: str) -> None:
        self.parts.append(element)

    def text(self) -> str:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {self.height}" '
            f'width="100%" role="img" aria-label="{escape(self.title)}" style="{FONT};max-width:{self.width}px">'
        )
        return "\n".join([head, f"<title>{escape(self.title)}</title>", *self.parts, "</svg>"])


def _nice_max(value: float) -> float:
    """A round upper bound for an axis (1, 2, 2.5, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exponent:
            return float(step * exponent)
    return float(10 * exponent)


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.0f}"
    if abs(value) >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _rect(x: float, y: float, w: float, h: float, color: str, tooltip: str, cls: str) -> str:
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{max(h, 0.0):.1f}" '
        f'fill="{color}"><title>{escape(tooltip)}</title></rect>'
    )


def empty_chart(title: str, message: str) -> str:
    svg = _Svg(WIDTH, 60, title)
    svg.add(f'<text x="8" y="34" fill="#555">{escape(message)}</text>')
    return svg.text()


def column_chart(title: str, bars: Sequence[Bar], y_label: str, x_label: str = "") -> str:
    """Vertical bars left to right (e.g. spend per run in time order), with a y axis."""
    if not bars:
        return empty_chart(title, "no data yet")
    left, right, top, bottom = 64, 12, 16, 46
    height = 260
    plot_w, plot_h = WIDTH - left - right, height - top - bottom
    top_value = _nice_max(max(b.value for b in bars))
    svg = _Svg(WIDTH, height, title)
    for i in range(5):
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        svg.add(f'<line x1="{left}" x2="{WIDTH - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        svg.add(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{_fmt(value)}</text>')
    slot = min(plot_w / len(bars), 48.0)  # a few runs: narrow bars, not one wall of colour
    gap = min(slot * 0.2, 4)
    # label every n-th bar so that labels (~6.5 px per character at 12 px) never overlap
    label_px = 6.5 * max(len(b.label) for b in bars) + 10
    every = max(1, math.ceil(label_px / slot))
    for i, bar in enumerate(bars):
        h = plot_h * bar.value / top_value
        x = left + i * slot + gap / 2
        svg.add(_rect(x, top + plot_h - h, slot - gap, h, bar.color, bar.tooltip, "bar"))
        if bar.label and i % every == 0:
            svg.add(
                f'<text x="{x + (slot - gap) / 2:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                f'fill="#555">{escape(bar.label)}</text>'
            )
    svg.add(f'<line x1="{left}" x2="{WIDTH - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9e9e9e"/>')
    svg.add(
        f'<text x="14" y="{top + plot_h / 2:.1f}" transform="rotate(-90 14 {top + plot_h / 2:.1f})" '
        f'text-anchor="middle" fill="#333">{escape(y_label)}</text>'
    )
    if x_label:
        svg.add(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#333">'
            f"{escape(x_label)}</text>"
        )
    return svg.text()


def stacked_bar_chart(title: str, rows: Sequence[StackedRow], series: Sequence[Series], unit: str = "") -> str:
    """Horizontal bars, one per row, split into the series' parts; a legend on top."""
    if not rows:
        return empty_chart(title, "no data yet")
    label_w, right, row_h, legend_h = 210, 70, 22, 26
    height = legend_h + row_h * len(rows) + 8
    plot_w = WIDTH - label_w - right
    top_value = max(sum(r.parts.get(s.name, 0) for s in series) for r in rows) or 1.0
    svg = _Svg(WIDTH, height, title)
    x = label_w
    for s in series:
        svg.add(f'<rect class="legend" x="{x}" y="6" width="12" height="12" fill="{s.color}"/>')
        svg.add(f'<text x="{x + 16}" y="16" fill="#333">{escape(s.name)}</text>')
        x += 30 + 8 * len(s.name)
    for i, row in enumerate(rows):
        y = legend_h + i * row_h
        label = row.label if len(row.label) <= 30 else row.label[:29] + "…"
        svg.add(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" fill="#333">'
            f"<title>{escape(row.label)}</title>{escape(label)}</text>"
        )
        x0 = float(label_w)
        total = 0.0
        for s in series:
            value = row.parts.get(s.name, 0)
            if value <= 0:
                continue
            w = plot_w * value / top_value
            tip = f"{row.label} — {s.name}: {_fmt(value)}{unit}"
            svg.add(_rect(x0, y + 3, w, row_h - 6, s.color, tip, "bar"))
            x0 += w
            total += value
        note = row.note or f"{_fmt(total)}{unit}"
        svg.add(f'<text x="{x0 + 6:.1f}" y="{y + 15}" fill="#555">{escape(note)}</text>')
    return svg.text()
