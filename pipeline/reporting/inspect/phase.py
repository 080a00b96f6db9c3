"""One phase on the run inspector's page: the spec, every attempt (diff, gate checks and
their evidence, CI tries with failing tests and the log tail, auditor verdicts), the
commit and tag; superseded attempts folded (layer L4; reporting/ after the restructure).
"""

from __future__ import annotations

from typing import Any

from pipeline.reporting.inspect.html import (
    badge,
    diff_block,
    esc,
    fmt_num,
    fmt_usd,
    fold,
    link,
    table,
    text_block,
    tone_of,
)
from pipeline.reporting.inspect.read import Attempt, CiRun, Phase, RunFiles, items, num, obj, ordered, text
from pipeline.reporting.inspect.spend import usage_sources, usage_tokens

FAILING_TESTS_SHOWN = 20


def _usage(record: dict[str, Any]) -> str:
    usage = obj(record, "usage")
    if not usage:
        return "no usage recorded"
    sources = usage_sources(usage)
    tokens = f"{fmt_num(usage_tokens(usage))} tokens ({fmt_num(num(usage, 'tokens_in'))} in, "
    tokens += f"{fmt_num(num(usage, 'tokens_out'))} out)"
    cost = fmt_usd(num(usage, "cost_usd"))
    if sources:
        tokens += f" [{sources.get('tokens', 'reported')}]"
        cost += f" [{sources.get('cost', 'reported')}]"
    else:
        tokens += " as reported"
    return f"{tokens}, {cost}, {fmt_num(num(usage, 'turns'))} turn(s)"


def _gate(gate: dict[str, Any], rel: str) -> str:
    if not gate:
        return '<p class="muted">no gate verdict (the attempt stopped before the gate)</p>'
    rows = []
    for check in ordered(items(gate, "checks")):
        verdict = text(check, "verdict", "?")
        evidence = [esc(e) for e in items(check, "evidence") if isinstance(e, str)]
        policy = " (policy)" if check.get("policy") is True else ""
        rows.append(
            [
                esc(text(check, "name", "?")) + policy,
                badge(verdict, tone_of(verdict)),
                esc(text(check, "message")),
                "<br>".join(evidence),
            ]
        )
    head = f"<p>Gate {badge(text(gate, 'verdict', '?'), tone_of(text(gate, 'verdict')))} — {link(rel)}"
    touched = [esc(p) for p in items(gate, "touched_paths") if isinstance(p, str)]
    if touched:
        head += f"; touched: <code>{'</code>, <code>'.join(touched)}</code>"
    return head + "</p>" + table(["check", "verdict", "message", "evidence"], rows, "checks")


def _ci(ci: CiRun) -> str:
    report = ci.report
    rel = f"{ci.rel}/ci.json"
    if not report:
        return f'<p class="missing">CI run {ci.k}: {link(rel)} missing or unreadable</p>'
    verdict = text(report, "verdict", "?")
    out = [
        f"<p>CI profile <code>{esc(text(report, 'profile', '?'))}</code> "
        f"{badge(verdict, tone_of(verdict))} — {link(rel)}"
    ]
    if text(report, "environment_error"):
        out.append(f"; environment error: {esc(text(report, 'environment_error'))}")
    out.append("</p>")
    rows = []
    for attempt in ordered(items(report, "tries")):
        for step in ordered(items(attempt, "steps")):
            failed = [t for t in ordered(items(step, "tests")) if text(t, "outcome") in ("failed", "error")]
            code = num(step, "returncode")
            status = "timed out" if step.get("timed_out") is True else f"exit {fmt_num(code)}"
            log = text(step, "log")
            rows.append(
                [
                    esc(fmt_num(num(attempt, "n"))),
                    esc(text(step, "name", "?")),
                    badge(status, "ok" if code == 0 else "bad"),
                    esc(f"{num(step, 'duration_s') or 0:.1f}s"),
                    f"{len(ordered(items(step, 'tests')))} test(s), {len(failed)} failed",
                    link(f"{ci.rel}/{log}", log) if log and "/" not in log else "",
                ]
            )
    out.append(table(["try", "step", "result", "time", "tests", "log"], rows, "ci"))
    failing = [esc(t) for t in items(report, "failing_tests") if isinstance(t, str)]
    flaky = [esc(t) for t in items(report, "flaky_tests") if isinstance(t, str)]
    if failing:
        more = len(failing) - FAILING_TESTS_SHOWN
        out.append(
            '<p>Failing tests:</p><ul class="tests">'
            + "".join(f"<li><code>{t}</code></li>" for t in failing[:FAILING_TESTS_SHOWN])
            + (f"<li>… and {more} more in {link(rel)}</li>" if more > 0 else "")
            + "</ul>"
        )
    if flaky:
        out.append("<p>Flaky (passed on a retry): " + ", ".join(f"<code>{t}</code>" for t in flaky) + "</p>")
    if ci.log_tail is not None:
        out.append(f"<p>Log tail of the last try ({link(ci.log_tail.rel)}):</p>")
        out.append(text_block(ci.log_tail, "The last part", "log"))
    return "".join(out)


def _fed_back(phase: Phase, attempt: Attempt, final: bool) -> str:
    """What the attempt was told about the one before it (the full text: the latest only)."""
    before = next((a for a in phase.attempts if a.k == attempt.k - 1), None)
    if before is None:
        return ""
    outcome = text(before.builder, "outcome", "unknown")
    reason = esc(text(before.builder, "reason"))
    failing = [
        f"<code>{esc(t)}</code>"
        for ci in phase.ci
        if int(num(ci.report, "attempt") or ci.k) == before.k
        for t in items(ci.report, "failing_tests")[:FAILING_TESTS_SHOWN]
        if isinstance(t, str)
    ]
    tests = f" — failing: {', '.join(failing)}" if failing else ""
    line = f"<p>Fed back from attempt {before.k}: {badge(outcome, tone_of(outcome))} {reason}{tests}</p>"
    feedback = text(phase.record, "feedback")
    if final and feedback:
        line += fold("The feedback it got", f'<pre class="text">{esc(feedback)}</pre>')
    return line


def _attempt(phase: Phase, attempt: Attempt, ci_runs: list[CiRun], final: bool) -> str:
    builder = attempt.builder
    outcome = text(builder, "outcome", "unknown")
    reason = text(builder, "reason")
    summary = f"Attempt {attempt.k} {badge(outcome, tone_of(outcome))} {esc(reason)}" + (
        "" if final else ' <span class="muted">(superseded)</span>'
    )
    body = [
        '<p class="files">'
        + " · ".join(
            link(f"{attempt.rel}/{n}", n) for n in ("builder.json", "builder.log", "result.json", "patch.diff")
        )
        + "</p>"
    ]
    if not builder:
        body.append(f'<p class="missing">{link(attempt.rel + "/builder.json")} missing or unreadable</p>')
    else:
        exit_code = num(builder, "exit_code")
        body.append(
            f"<p>{esc(text(builder, 'role', 'builder'))} <code>{esc(text(builder, 'agent', '?'))}</code>, "
            f"exit {esc(fmt_num(exit_code))}{' (timed out)' if builder.get('timed_out') is True else ''}, "
            f"{esc(text(builder, 'started_at', '?'))} → {esc(text(builder, 'finished_at', '?'))}; "
            f"{esc(_usage(builder))}</p>"
        )
    body.append(_fed_back(phase, attempt, final))
    notes = text(builder, "result_notes") or text(attempt.result, "notes")
    if notes:
        body.append(f'<p>Agent notes: <q class="notes">{esc(notes)}</q></p>')
    body.append(diff_block(attempt.patch))
    if attempt.gate or not (final and num(phase.gate, "attempt") == attempt.k):
        body.append(_gate(attempt.gate, f"{attempt.rel}/gate.json"))
    else:  # the attempt's copy is gone; the phase's latest verdict is the same attempt's
        body.append(_gate(phase.gate, f"{phase.rel}/gate.json"))
    for ci in ci_runs:
        body.append(_ci(ci))
    return fold(summary, "".join(body), open_=final, cls="attempt")


def _audits(phase: Phase) -> str:
    if not phase.audits:
        return ""
    rows = []
    for audit in phase.audits:
        verdict = text(audit, "verdict") or "none"
        rows.append(
            [
                esc(fmt_num(num(audit, "k"))),
                esc(text(audit, "purpose", "?")),
                badge(verdict, tone_of(verdict)),
                esc(text(audit, "notes")),
                esc(_usage(audit)),
                link(f"{audit['_rel']}/auditor.json", "auditor.json"),
            ]
        )
    return "<h4>Auditor</h4>" + table(["call", "purpose", "verdict", "notes", "usage", "file"], rows, "audits")


def _ci_by_attempt(phase: Phase) -> dict[int, list[CiRun]]:
    found: dict[int, list[CiRun]] = {}
    for ci in phase.ci:
        found.setdefault(int(num(ci.report, "attempt") or ci.k), []).append(ci)
    return found


def render_phase(files: RunFiles, phase: Phase) -> str:
    record = phase.record
    state = text(record, "state", "unknown")
    name = text(record, "name") or next(
        (text(p, "name") for p in items(files.run, "phases") if text(p, "phase_id") == phase.phase_id), ""
    )
    head = (
        f'<section class="phase" id="phase-{esc(phase.phase_id)}"><h3>{esc(phase.phase_id)} {esc(name)} '
        f"{badge(state, tone_of(state))}</h3>"
    )
    facts = [f"tier {esc(text(record, 'tier_id', '?'))}", f"{len(phase.attempts)} attempt(s)"]
    if text(record, "commit"):
        facts.append(f"commit <code>{esc(text(record, 'commit')[:12])}</code>")
    if text(record, "tag"):
        facts.append(f"tag <code>{esc(text(record, 'tag'))}</code>")
    if text(record, "failure_reason"):
        facts.append(f"failed: {esc(text(record, 'failure_reason'))}")
    files_line = " · ".join(link(f"{phase.rel}/{n}", n) for n in ("phase.json", "spec.md", "gate.json", "issues.json"))
    out = [head, f"<p>{'; '.join(facts)}</p>", f'<p class="files">{files_line}</p>']
    if not record:
        out.append(f'<p class="missing">{link(phase.rel + "/phase.json")} missing or unreadable</p>')
    if phase.spec is not None:
        out.append(fold("The spec the builder got (the latest attempt's)", text_block(phase.spec), cls="spec"))
    by_attempt = _ci_by_attempt(phase)
    last = max((a.k for a in phase.attempts), default=0)
    for attempt in phase.attempts:
        out.append(_attempt(phase, attempt, by_attempt.pop(attempt.k, []), attempt.k == last))
    for leftover in by_attempt.values():  # CI runs of attempts with no attempt directory
        out += [_ci(ci) for ci in leftover]
    out.append(_audits(phase))
    out.append("</section>")
    return "".join(out)
