"""The run inspector: `runs/<run>/inspect.html`, one offline page telling a run's whole
story (layer L4; reporting/ after the restructure).

The verdict first (state, failure reason, promotion verdict, whether the event chain
verifies), then a timeline, spend against every budget, each phase's attempts with their
diffs, gate checks, CI tries and auditor verdicts, and the issues at phase, run and
backlog level; every figure links to the file it came from.

The page is self-contained: inline CSS and SVG, no script, and a Content-Security-Policy
that forbids every fetch, so it loads nothing and runs nothing even if a patch smuggled
markup past the escaping. It is deterministic (it names the run's last update, not the
time it was made) and written atomically, so rendering it again changes no byte.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import failpoints
from pipeline.core.jsonio import write_text_atomic
from pipeline.reporting.inspect.html import badge, esc, fmt_num, fmt_usd, link, table, tone_of
from pipeline.reporting.inspect.phase import render_phase
from pipeline.reporting.inspect.read import BACKLOG, Masker, RunFiles, items, num, obj, read_run, text
from pipeline.reporting.inspect.spend import render_spend
from pipeline.reporting.inspect.timeline import COLOURS, KINDS, render_timeline

PAGE = "inspect.html"
BACKLOG_SHOWN = 30
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:1.5rem auto;max-width:1120px;
color:#1f2328;padding:0 1rem;line-height:1.45;font-size:15px}
h1{font-size:1.55rem;margin:.2rem 0}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dee4;
padding-bottom:.2rem}h3{font-size:1.05rem;margin:1.2rem 0 .4rem}h4{margin:.8rem 0 .3rem;font-size:.95rem}
a{color:#0b5cad}code,pre{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,Consolas,monospace;font-size:.82rem}
.verdict{border:2px solid #d8dee4;border-radius:8px;padding:.6rem 1rem;margin:1rem 0}
.verdict.bad{border-color:#d0453b;background:#fff6f5}.verdict.ok{border-color:#3b9a57;background:#f4fbf6}
.verdict.warn{border-color:#e39b2d;background:#fffaf0}.verdict p{margin:.3rem 0}
.badge{display:inline-block;border-radius:4px;padding:0 .4rem;font-size:.78rem;font-weight:600;
vertical-align:middle;color:#fff;background:#8a94a6}
.badge.ok{background:#3b9a57}.badge.bad{background:#d0453b}.badge.warn{background:#c7801a}.badge.muted{background:#aab1bd}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.84rem}
th,td{border:1px solid #d8dee4;padding:.2rem .45rem;vertical-align:top;text-align:left}th{background:#f4f6f8}
pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:6px;padding:.5rem .7rem;overflow-x:auto;
max-height:32rem;overflow-y:auto;white-space:pre}
pre.diff .da{color:#116329;background:#e6ffec;display:inline-block;min-width:100%}
pre.diff .dd{color:#a40e26;background:#ffebe9;display:inline-block;min-width:100%}
pre.diff .dh{color:#6639ba}pre.diff .df{color:#57606a;font-weight:600}
details{margin:.4rem 0}summary{cursor:pointer;padding:.2rem 0}
details.attempt{border:1px solid #d8dee4;border-radius:6px;padding:.2rem .7rem;margin:.6rem 0}
details.attempt>summary{font-weight:600}
section.phase{border-top:1px solid #eaeef2;margin-top:1.2rem}
.missing{color:#a40e26}.muted{color:#6e7781}.note{color:#6e7781;font-size:.85rem;font-style:italic}
.files{font-size:.82rem}q.notes{font-style:italic}
svg.timeline{display:block;max-width:100%;height:auto;border:1px solid #eaeef2;border-radius:6px;background:#fff}
.tl-tier{font-size:12px;font-weight:700;fill:#1f2328}.tl-phase{font-size:12px;fill:#0b5cad}
.tl-label{font-size:10px;fill:#fff;pointer-events:none}.tl-tick{font-size:10px;fill:#57606a}
.tl-axis{stroke:#8c959f}.tl-grid{stroke:#eaeef2}.tl-band{fill:#d8dee4}
svg.bar{vertical-align:middle}.b-frame{fill:#f4f6f8;stroke:#d0d7de}.b-cap{stroke:#1f2328;stroke-width:2}
.b-reported,.b-used{fill:#4f7fc0}.b-nocap{fill:#c9d3e0}
.b-estimated{fill:#9dbbe3}.b-reserved{fill:#fff;stroke:#4f7fc0;stroke-dasharray:3 2}
svg.bar.over .b-frame{stroke:#d0453b;stroke-width:2}
.legend{font-size:.82rem;color:#57606a}.fig{font-size:.78rem;color:#57606a}.legend svg{vertical-align:middle}
nav a{margin-right:.9rem}
"""


def _verdict(files: RunFiles) -> str:
    run = files.run
    state = text(run, "state", "unknown (run.json missing or unreadable)")
    tone = tone_of(state) if state.startswith("DONE_") else "warn"
    eligible = run.get("promotion_eligible_to_main") is True
    reasons = "; ".join(esc(r) for r in items(run, "promotion_reasons") if isinstance(r, str))
    promoted = text(run, "promoted_commit")
    chain_ok, chain_msg = files.chain
    failure = text(run, "failure_reason")
    out = [
        f'<div class="verdict {tone}">',
        f"<p><strong>State</strong> {badge(state, tone)}" + (f" — {esc(failure)}" if failure else "") + "</p>",
        "<p><strong>Promotion</strong> "
        + badge("eligible" if eligible else "not eligible", "ok" if eligible else "bad")
        + (f" — {reasons}" if reasons else "")
        + (f"; promoted as <code>{esc(promoted[:12])}</code>" if promoted else "")
        + "</p>",
        "<p><strong>Event chain</strong> "
        + badge("verifies" if chain_ok else "does not verify", "ok" if chain_ok else "bad")
        + f" — {esc(chain_msg)} ({link('events.jsonl')})</p>",
    ]
    if files.incident or files.incident_files:
        out.append(_incident(files))
    out.append("</div>")
    return "".join(out)


def _incident(files: RunFiles) -> str:
    facts = files.incident
    phase = text(facts, "phase_id")
    where = f' in <a href="#phase-{esc(phase)}">{esc(phase)}</a>' if phase else ""
    links = " · ".join(link(f"incident/{name}", name) for name in files.incident_files)
    inspect = f"; inspect with <code>{esc(text(facts, 'inspect'))}</code>" if text(facts, "inspect") else ""
    reason = esc(text(facts, "reason", "see the pack"))
    return f'<p><strong>Incident</strong>{where}: {reason}{inspect}</p><p class="files">{links}</p>'


def _facts(files: RunFiles) -> str:
    run, spend = files.run, obj(files.run, "spend")
    if not run:
        return ""
    return (
        f"<p>Project <code>{esc(text(run, 'project_id', '?'))}</code>, "
        f"branch <code>{esc(text(run, 'branch', '?'))}</code> "
        f"from <code>{esc(text(run, 'base_ref', '?'))}</code> (<code>{esc(text(run, 'base_commit')[:12])}</code>); "
        f"safety {esc(text(run, 'safety_profile', '?'))}, scope {esc(text(run, 'run_scope', '?'))}. "
        f"Started {esc(text(run, 'created_at', '?'))}, finished {esc(text(run, 'finished_at', '—'))}. "
        f"{fmt_num(num(spend, 'tokens'))} tokens, {fmt_usd(num(spend, 'cost_usd'))}, "
        f"{fmt_num(num(spend, 'builder_attempts'))} builder attempt(s), {fmt_num(num(spend, 'ci_runs'))} CI run(s). "
        f"{link('run.json')} · {link('strategy.json')} · {link('plan.yaml')} · {link('RUN_SUMMARY.md')}</p>"
    )


def _missing(files: RunFiles) -> str:
    if not files.problems:
        return ""
    rows = "".join(f"<li>{esc(p)}</li>" for p in files.problems)
    return f'<h2 id="missing">Missing or unreadable</h2><p>Shown without them:</p><ul class="missing">{rows}</ul>'


def _legend() -> str:
    swatch = '<svg width="12" height="12"><rect width="12" height="12" fill="{}"/></svg> {}'
    outcomes = {"ok": "passed", "retry": "failed, retried", "fail": "failed", "open": "no verdict / running"}
    return (
        '<p class="legend">Spans: '
        + ", ".join(KINDS.values())
        + " (hover for details). "
        + " ".join(swatch.format(COLOURS[k], esc(v)) for k, v in outcomes.items())
        + "</p>"
    )


def _issues(files: RunFiles) -> str:
    rows = []
    for phase in files.phases:
        for issue in items(phase.issues, "issues"):
            refs = [r for r in items(issue, "evidence_refs") if isinstance(r, str)]
            evidence = ", ".join(link(r) if r.startswith("phases/") else f"<code>{esc(r)}</code>" for r in refs[:4])
            severity = text(issue, "effective_severity", "?")
            rows.append(
                [
                    f'<a href="#phase-{esc(phase.phase_id)}">{esc(phase.phase_id)}</a>',
                    f"<code>{esc(text(issue, 'issue_key', '?'))}</code>",
                    badge(severity, "bad" if severity == "major" else "warn"),
                    esc(text(issue, "source")),
                    esc(text(issue, "message")),
                    esc(fmt_num(num(issue, "occurrence_count"))),
                    esc(text(issue, "first_seen_run")),
                    evidence,
                ]
            )
    headers = ["phase", "key", "severity", "source", "message", "seen", "first seen (run)", "evidence"]
    out = ["<h3>Phases</h3>", table(headers, rows)]
    index = obj(files.issue_index, "issues_by_key")
    run_rows = [
        [
            f"<code>{esc(key)}</code>",
            esc(text(entry, "effective_severity", "?")),
            esc(text(entry, "category")),
            esc(fmt_num(num(entry, "occurrence_count"))),
            esc(", ".join(p for p in items(entry, "seen_in_phases") if isinstance(p, str))),
            esc(f"phase {fmt_num(num(entry, 'first_phase_index'))} → {fmt_num(num(entry, 'last_phase_index'))}"),
        ]
        for key, entry in sorted(index.items())
        if isinstance(entry, dict)
    ]
    out += [
        f"<h3>Run ({link('run_issue_index.json')})</h3>",
        table(["key", "severity", "category", "occurrences", "phases", "first → last"], run_rows),
    ]
    return "".join(out) + _backlog(files)


def _backlog(files: RunFiles) -> str:
    path = "../../" + BACKLOG.as_posix()
    issues = obj(files.backlog, "issues_by_key") or obj(files.backlog, "issues")  # older backlog files
    if not files.backlog:
        missing = esc(BACKLOG.as_posix())
        return f'<h3>Project backlog</h3><p class="muted">No {missing} (run <code>doit backlog</code>).</p>'
    run_id = text(files.run, "run_id")
    run_keys = {k for k in obj(files.issue_index, "issues_by_key")}
    mine = {
        k: v
        for k, v in issues.items()
        if isinstance(v, dict) and (k in run_keys or text(v, "last_seen_run_id") == run_id)
    }
    ranked = sorted(mine.items(), key=lambda kv: (-(num(kv[1], "age_in_runs") or 0), kv[0]))[:BACKLOG_SHOWN]
    rows = [
        [
            f"<code>{esc(key)}</code>",
            badge(text(entry, "status", "?"), "bad" if text(entry, "status") == "needs_cleanup" else "muted"),
            esc(fmt_num(num(entry, "age_in_runs"))),
            esc(fmt_num(num(entry, "age_in_tiers"))),
            esc(text(entry, "first_seen_run_id")),
            esc(text(entry, "last_seen_run_id")),
            esc(text(entry, "message")),
        ]
        for key, entry in ranked
    ]
    caption = (
        f"<h3>Project backlog ({link(path, BACKLOG.as_posix())})</h3><p>{len(mine)} of the backlog's "
        f"{len(issues)} issue key(s) concern this run; oldest first.</p>"
    )
    return caption + table(["key", "status", "age (runs)", "age (tiers)", "first seen", "last seen", "message"], rows)


def render_page(files: RunFiles) -> str:
    run_id = text(files.run, "run_id") or files.run_dir.name
    phases = "".join(render_phase(files, phase) for phase in files.phases)
    nav = (
        '<nav><a href="#timeline">Timeline</a><a href="#spend">Spend</a><a href="#phases">Phases</a>'
        '<a href="#issues">Issues</a>' + ('<a href="#missing">Missing</a>' if files.problems else "") + "</nav>"
    )
    body = [
        f"<h1>Run {esc(run_id)}</h1>",
        _verdict(files),
        _facts(files),
        nav,
        _missing(files),
        '<h2 id="timeline">Timeline</h2>',
        _legend(),
        render_timeline(files),
        '<h2 id="spend">Spend against budgets</h2>',
        render_spend(files),
        '<h2 id="phases">Phases</h2>',
        phases or '<p class="missing">No phase directories under phases/.</p>',
        '<h2 id="issues">Issues</h2>',
        _issues(files),
        f'<p class="muted">Rendered from the run directory by <code>doit inspect --run {esc(run_id)}</code> '
        f"(run updated {esc(text(files.run, 'updated_at', '—'))}).</p>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Autopack run {esc(run_id)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_inspect(run_dir: Path, mask: Masker | None = None) -> Path:
    """Render `run_dir`'s page and write it atomically as `run_dir/inspect.html`."""
    html = render_page(read_run(run_dir, mask))
    failpoints.hit("inspect_before_write")
    path = Path(run_dir) / PAGE
    write_text_atomic(path, html)
    return path


def ensure_inspect(run_dir: Path) -> Path | None:
    """Write the page if it is missing (a step killed before writing it); its path."""
    path = Path(run_dir) / PAGE
    return path if path.exists() else write_inspect(run_dir)
