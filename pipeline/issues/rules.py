"""Issue counting rules (docs/architecture.md, Issues): pure functions over the models.

Counts are of distinct issue_keys; a repeat of a key raises occurrence_count only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.models.enums import IssueSource, Severity
from pipeline.models.issues import Issue, IssueState, PhaseIssueFile, RunIssueEntry, RunIssueIndex

# Issues that come from checking one attempt (its gate, CI, static checks, or the attempt
# failing outright): an accepted attempt that no longer shows them has fixed them.
RESOLVABLE_SOURCES = frozenset(
    {IssueSource.gate, IssueSource.ci, IssueSource.test, IssueSource.static_check, IssueSource.probe}
)


def open_issues(issues: Iterable[Issue]) -> list[Issue]:
    return [i for i in issues if i.status == "open"]


def issue_state(issues: Iterable[Issue]) -> IssueState:
    severities = {i.effective_severity for i in open_issues(issues)}
    if Severity.major in severities:
        return "has_major_issues"
    if Severity.minor in severities:
        return "has_minor_issues"
    return "no_issues"


def _merge(old: Issue, new: Issue) -> Issue:
    evidence = list(dict.fromkeys([*old.evidence_refs, *new.evidence_refs]))
    worst = Severity.major if Severity.major in (old.effective_severity, new.effective_severity) else Severity.minor
    return old.model_copy(
        update={
            "occurrence_count": old.occurrence_count + new.occurrence_count,
            "last_seen_run": new.last_seen_run,
            "evidence_refs": evidence,
            "effective_severity": worst,
            "message": new.message or old.message,
            "seen_in_attempts": sorted({*old.seen_in_attempts, *new.seen_in_attempts}),
            "status": "open",
            "resolved_in_attempt": None,
        }
    )


def record_issues(file: PhaseIssueFile, new_issues: Iterable[Issue]) -> PhaseIssueFile:
    """The phase file with `new_issues` folded in by key, counts recomputed."""
    by_key = {i.issue_key: i for i in file.issues}
    for issue in new_issues:
        by_key[issue.issue_key] = _merge(by_key[issue.issue_key], issue) if issue.issue_key in by_key else issue
    return _recount(file, sorted(by_key.values(), key=lambda i: i.issue_key))


def _recount(file: PhaseIssueFile, issues: list[Issue]) -> PhaseIssueFile:
    """The file with `issues` and its counts of open issues (resolved ones count nowhere)."""
    counted = open_issues(issues)
    return file.model_copy(
        update={
            "issues": issues,
            "minor_issue_count": sum(1 for i in counted if i.effective_severity == Severity.minor),
            "major_issue_count": sum(1 for i in counted if i.effective_severity == Severity.major),
            "issue_state": issue_state(counted),
        }
    )


def resolve_fixed(file: PhaseIssueFile, accepted: int) -> PhaseIssueFile:
    """Issues of a resolvable source that the accepted attempt `accepted` did not record
    are `resolved` (fixed within the run): they stay in the file as evidence and no
    longer count against the phase, its tier or the run."""
    issues = [
        i.model_copy(update={"status": "resolved", "resolved_in_attempt": accepted})
        if i.status == "open"
        and i.source in RESOLVABLE_SOURCES
        and i.seen_in_attempts
        and accepted not in i.seen_in_attempts
        else i
        for i in file.issues
    ]
    return _recount(file, issues)


def worst_by_key(files: Iterable[PhaseIssueFile]) -> dict[str, Severity]:
    """Each distinct issue_key of `files` with its worst effective severity."""
    worst: dict[str, Severity] = {}
    for file in files:
        for issue in open_issues(file.issues):
            if worst.get(issue.issue_key) != Severity.major:
                worst[issue.issue_key] = issue.effective_severity
    return worst


def distinct_counts(files: Iterable[PhaseIssueFile]) -> tuple[int, int]:
    """(minor, major) counts of distinct issue_keys over `files` (playbook §5.2: tier and
    run counts are of distinct keys; a key seen in two phases counts once, as its worst)."""
    worst = worst_by_key(files)
    minor = sum(1 for s in worst.values() if s == Severity.minor)
    return minor, len(worst) - minor


def effective(severity: Severity, key: str, raised: Mapping[str, Severity]) -> Severity:
    """Backlog aging may raise a key's severity for this run; it never lowers one."""
    return Severity.major if Severity.major in (severity, raised.get(key, severity)) else Severity.minor


def build_run_index(run_id: str, phase_files: Iterable[tuple[int, PhaseIssueFile]]) -> RunIssueIndex:
    """The run-level index from every phase file; indexes are the phases' 1-based order."""
    entries: dict[str, RunIssueEntry] = {}
    for index, file in sorted(phase_files, key=lambda pair: pair[0]):
        for issue in file.issues:
            old = entries.get(issue.issue_key)
            if old is None:
                entries[issue.issue_key] = RunIssueEntry(
                    category=issue.category,
                    severity=issue.severity,
                    effective_severity=issue.effective_severity,
                    first_phase_index=index,
                    last_phase_index=index,
                    occurrence_count=issue.occurrence_count,
                    seen_in_tiers=[file.tier_id],
                    seen_in_phases=[file.phase_id],
                    status=issue.status,
                )
                continue
            worst = (
                Severity.major
                if Severity.major in (old.effective_severity, issue.effective_severity)
                else Severity.minor
            )
            entries[issue.issue_key] = old.model_copy(
                update={
                    "effective_severity": worst,
                    "first_phase_index": min(old.first_phase_index, index),
                    "last_phase_index": max(old.last_phase_index, index),
                    "occurrence_count": old.occurrence_count + issue.occurrence_count,
                    "seen_in_tiers": sorted({*old.seen_in_tiers, file.tier_id}),
                    "seen_in_phases": sorted({*old.seen_in_phases, file.phase_id}),
                    "status": "open" if "open" in (old.status, issue.status) else "resolved",
                }
            )
    return RunIssueIndex(run_id=run_id, issues_by_key=dict(sorted(entries.items())))
