"""The gate: whether a builder's patch may be applied (docs/architecture.md, One phase).

Checks run in a fixed order and the first failure stops the gate; the checks after it are
recorded as skipped, so gate.json always lists every check. A failed gate is a value (a
`GateReport`), never an exception. The gate does not run git itself (applying goes through
the adapter) and does not reset the worktree after a failure: the caller owns the worktree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.core import sandbox
from pipeline.gate.behaviour import before_texts, check_test_behaviour
from pipeline.gate.collection import CollectionJob, check_collection
from pipeline.gate.evidence import POLICY_CHECKS, gate_check, limit_evidence
from pipeline.gate.licence import check_attribution, check_licence
from pipeline.gate.patch import ParsedPatch, PatchParseError, parse_patch
from pipeline.gate.paths import check_patch_bytes, check_paths_safe, check_protected, check_scope, check_size
from pipeline.gate.secrets import check_secrets
from pipeline.gate.static import check_static
from pipeline.gate.tampering import TEST_CATEGORIES, check_test_tampering
from pipeline.models.plan import CiStep
from pipeline.models.reports import GateCheck, GateReport
from pipeline.models.strategy import PhaseStrategy

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass




CHECK_ORDER = (
    "parse",
    "paths_safe",
    "protected_paths",
    "scope",
    "size",
    "secrets",
    "test_tampering",
    "licence",
    "attribution",
    "apply",
    "applied_paths",
    "test_behaviour",
    "test_collection",
    "static_checks",
)




_FEEDBACK_EVIDENCE_LIMIT = 10


class ApplyOutcome(Protocol):
    """What the git adapter's `apply` reports (pipeline.vcs.adapter.ApplyResult)."""

    @property
    def ok(self) -> bool: ...

    @property
    def three_way(self) -> bool: ...

    @property
    def message(self) -> str: ...


class PatchApplier(Protocol):
    """The one thing the gate needs from the git adapter."""

    def apply(self, worktree: Path, patch_path: Path) -> ApplyOutcome: ...


def _tests_may_change(phase: PhaseStrategy) -> str | None:
    """Why the phase may change tests (declared in the plan, by its category, or approved by
    the auditor for this attempt), or None."""
    if not phase.tests_may_change:
        return None
    why = phase.why.get("tests_may_change", "category")
    if why == "plan":
        return "declared in the plan: tests: may_change"
    return f"category {phase.task_category!r}" if why in ("category", "override") else why


def _collection_exempt(phase: PhaseStrategy) -> str | None:
    if phase.task_category in TEST_CATEGORIES and not phase.tests_may_change:
        return f"category {phase.task_category!r}"
    return _tests_may_change(phase)


def run_gate(
    *,
    patch_text: str,
    patch_path: Path,
    worktree: Path,
    phase: PhaseStrategy,
    protected_paths: Sequence[str],
    static_checks: Sequence[CiStep],
    git: PatchApplier,
    attempt: int,
    log_dir: Path,
    confinement: sandbox.Confinement = sandbox.UNCONFINED,
    applied_paths: Callable[[list[str]], GateCheck] | None = None,
    collection: CollectionJob | None = None,
) -> GateReport:
    """Every gate check in order, stopping at the first failure; the patch is applied by
    the `apply` check and left applied (or half-done) for the caller to keep or reset."""
    too_big = check_patch_bytes(len(patch_text.encode("utf-8", "surrogateescape")))
    if too_big is not None:
        return _report(phase, attempt, [too_big], [], three_way=False)
    try:
        patch = parse_patch(patch_text)
    except PatchParseError as exc:
        failed = gate_check("parse", False, exc.message, [exc.fix] if exc.fix else [])
        return _report(phase, attempt, [failed], [], three_way=False)
    applied: list[ApplyOutcome] = []
    tests_before = before_texts(patch, worktree)  # read now: `apply` changes them
    steps: list[Callable[[], GateCheck]] = [
        lambda: gate_check("parse", True, _summary(patch)),
        lambda: check_paths_safe(patch, worktree, phase.allows),
        lambda: check_protected(patch, protected_paths),
        lambda: check_scope(patch, phase.scope_allow, phase.scope_deny),
        lambda: check_size(patch, phase.max_files, phase.max_changed_lines),
        lambda: check_secrets(patch),
        lambda: check_test_tampering(patch, phase.task_category, _tests_may_change(phase)),
        lambda: check_licence(patch, phase),
        lambda: check_attribution(patch, phase, worktree),
        lambda: _check_apply(git, worktree, patch_path, applied),
        lambda: applied_paths(patch.touched_paths) if applied_paths else gate_check("applied_paths", True, "not asked"),
        lambda: check_test_behaviour(patch, tests_before, worktree, phase.task_category, _tests_may_change(phase)),
        lambda: check_collection(
            collection or CollectionJob(why_not="not asked"), patch, worktree, _collection_exempt(phase)
        ),
        lambda: check_static(static_checks, worktree, log_dir, confinement),
    ]
    checks: list[GateCheck] = []
    for step in steps:
        checks.append(step())
        if checks[-1].verdict == "fail":
            break
    three_way = bool(applied) and applied[0].three_way
    return _report(phase, attempt, checks, patch.touched_paths, three_way=three_way)


def _report(
    phase: PhaseStrategy,
    attempt: int,
    checks: list[GateCheck],
    touched: list[str],
    *,
    three_way: bool,
) -> GateReport:
    """The report with the checks that did not run filled in as skipped."""
    failed = next((c for c in checks if c.verdict == "fail"), None)
    reason = f"not run: `{failed.name}` failed" if failed else "not run"
    skipped = [
        GateCheck(name=name, verdict="skip", message=reason, policy=name in POLICY_CHECKS)
        for name in CHECK_ORDER[len(checks) :]
    ]
    return GateReport(
        phase_id=phase.phase_id,
        attempt=attempt,
        verdict="fail" if failed else "pass",
        checks=[*checks, *skipped],
        touched_paths=sorted(touched),
        three_way=three_way,
    )


def _summary(patch: ParsedPatch) -> str:
    return f"{len(patch.files)} file(s), {patch.changed_lines} changed line(s)"


def _check_apply(
    git: PatchApplier, worktree: Path, patch_path: Path, applied: list[ApplyOutcome]
) -> GateCheck:
    result = git.apply(worktree, patch_path)
    applied.append(result)
    if not result.ok:
        return gate_check("apply", False, "the patch does not apply", [result.message])
    how = "applied with a 3-way merge" if result.three_way else "applied cleanly"
    return gate_check("apply", True, how)


_HINTS = {
    "parse": "Hand in a unified diff as produced by `git diff`.",
    "paths_safe": "Only write regular paths inside the repository; no symlinks out of it.",
    "protected_paths": "Those paths are off limits to agents; leave them unchanged.",
    "scope": "Only change files inside this phase's scope.",
    "size": "Make a smaller change: fewer files and lines, only what the phase asks for.",
    "secrets": "Never commit credentials; read them from the environment or a config file.",
    "test_tampering": "Make the code pass the tests; do not delete, skip or weaken them.",
    "licence": "Only take code under the whitelisted licences (MIT, BSD-2-Clause, BSD-3-Clause, "
    "Apache-2.0, ISC); leave out anything under another licence.",
    "attribution": "Keep the licence header of every copied file, or add a NOTICE / THIRD_PARTY_NOTICES "
    "entry naming the source URL, the commit and the licence.",
    "apply": "Base the patch on the current state of the branch; it must apply cleanly.",
    "test_collection": "Make the code pass the tests; every test that ran before must still be collected and "
    "run: do not remove, skip, xfail or deselect tests, whatever the mechanism (conftest hooks, configuration).",
    "static_checks": "Fix the problems the static checks report.",
}


def feedback_for(report: GateReport) -> str:
    """A short text for the builder's next attempt: the failed check and its evidence."""
    failed = next((c for c in report.checks if c.verdict == "fail"), None)
    if failed is None:
        return f"The gate accepted attempt {report.attempt}: every check passed."
    lines = [
        f"The gate refused attempt {report.attempt} at check `{failed.name}`: "
        f"{failed.message}."
    ]
    if failed.evidence:
        lines.append("Evidence:")
        for item in limit_evidence(failed.evidence, _FEEDBACK_EVIDENCE_LIMIT):
            lines.append("- " + item.replace("\n", "\n  "))
    hint = _HINTS.get(failed.name)
    if hint:
        lines.append(hint)
    return "\n".join(lines) + "\n"
