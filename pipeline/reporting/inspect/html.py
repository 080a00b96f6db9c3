"""Small HTML pieces of the run inspector: escaping, links into the run directory, diffs,
logs and budget bars (layer L4; reporting/ after the restructure).

Every piece of text goes through `esc` (the text was masked when read); links are
relative paths inside the run directory, percent-encoded, so the page works from a
checkout, a CI artifact or a file:// URL with no network.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from pipeline.reporting.inspect.read import Excerpt


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def esc_body(value: str) -> str:
    """Escaped for element content (not attributes): quotes stay as they are, smaller."""
    return escape(value, quote=False)


def href(rel: str) -> str:
    return esc(quote(rel, safe="/-._~"))


def link(rel: str, label: str | None = None) -> str:
    return f'<a href="{href(rel)}">{esc(label or rel)}</a>'


def badge(label: str, tone: str) -> str:
    return f'<span class="badge {esc(tone)}">{esc(label)}</span>'


def tone_of(state: str) -> str:
    if state in ("COMPLETE", "DONE_SUCCESS", "pass", "passed", "approve", "clean"):
        return "ok"
    if state.startswith("DONE_FAILED") or state in ("FAILED", "fail", "reject", "not_clean", "policy_violation"):
        return "bad"
    if state in ("SKIPPED", "skip"):
        return "muted"
    return "warn"


def _cut_note(excerpt: Excerpt, what: str) -> str:
    return (
        f'<p class="note">{what} of {excerpt.size:,} bytes shown; the whole file: {link(excerpt.rel)}</p>'
        if excerpt.truncated
        else ""
    )


def diff_block(excerpt: Excerpt | None) -> str:
    """A unified diff with added, removed, hunk and file lines told apart."""
    if excerpt is None:
        return '<p class="missing">no patch.diff</p>'
    if not excerpt.text.strip():
        return f'<p class="muted">{link(excerpt.rel)} is empty</p>'
    runs: list[tuple[str, list[str]]] = []  # consecutive lines of one kind share one span
    for line in excerpt.text.split("\n"):
        cls = _line_class(line)
        if runs and runs[-1][0] == cls:
            runs[-1][1].append(esc_body(line))
        else:
            runs.append((cls, [esc_body(line)]))
    body = "\n".join(f'<span class="{cls}">{chr(10).join(ls)}</span>' if cls else "\n".join(ls) for cls, ls in runs)
    return f'<pre class="diff">{body}</pre>{_cut_note(excerpt, "The first part")}'


def _line_class(line: str) -> str:
    if line.startswith(("+++", "---", "diff --git", "index ")):
        return "df"
    if line.startswith("@@"):
        return "dh"
    if line.startswith("+"):
        return "da"
    if line.startswith("-"):
        return "dd"
    return ""


def text_block(excerpt: Excerpt | None, what: str = "The first part", cls: str = "text") -> str:
    if excerpt is None:
        return ""
    return f'<pre class="{cls}">{esc_body(excerpt.text)}</pre>{_cut_note(excerpt, what)}'


def fold(summary: str, body: str, open_: bool = False, cls: str = "") -> str:
    attrs = (" open" if open_ else "") + (f' class="{cls}"' if cls else "")
    return f"<details{attrs}><summary>{summary}</summary>{body}</details>"


def fmt_num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def fmt_usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:,.4f}"


BAR_W, SMALL = 260, 150


def bar(parts: list[tuple[str, float]], cap: float | None, title: str, width: int = BAR_W) -> str:
    """A horizontal bar of stacked parts (class names: reported, estimated, reserved,
    used) against `cap` (a line); past the cap the frame turns red."""
    total = sum(v for _, v in parts)
    if cap is None:
        parts = [("nocap", total)] if total else []
    top = max(cap or 0.0, total, 1e-9)
    x = 0.0
    rects = []
    for cls, value in parts:
        if value <= 0:
            continue
        w = width * value / top
        rects.append(f'<rect x="{x:.1f}" y="2" width="{max(w, 1):.1f}" height="12" class="b-{esc(cls)}"/>')
        x += w
    marks = ""
    if cap:
        cx = width * cap / top
        marks = f'<line x1="{cx:.1f}" y1="0" x2="{cx:.1f}" y2="16" class="b-cap"/>'
    over = " over" if cap is not None and total > cap else ""
    return (
        f'<svg class="bar{over}" width="{width}" height="16" viewBox="0 0 {width} 16" role="img" '
        f'aria-label="{esc(title)}"><title>{esc(title)}</title>'
        f'<rect x="0" y="2" width="{width}" height="12" class="b-frame"/>{"".join(rects)}{marks}</svg>'
    )


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escape with `esc` before)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="muted">(none)</td></tr>'
    return f'<table class="{esc(cls)}"><tr>{head}</tr>{body}</table>'
