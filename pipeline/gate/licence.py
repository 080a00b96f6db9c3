"""The gate's licence and attribution checks for phases that reuse external code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.gate.evidence import gate_check
from pipeline.gate.patch import ParsedPatch
from pipeline.models.reports import GateCheck
from pipeline.models.strategy import PhaseStrategy
from pipeline.policy import licences

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    pass


# NOTICE, NOTICE.md, THIRD_PARTY_NOTICES.md, third-party-licenses.txt, LICENSES/<id>.txt
_NOTICE_NAME = re.compile(r"^(?:notice|third[_-]?party|thirdparty)", re.IGNORECASE)


_COMMIT_ID = re.compile(r"\b[0-9a-f]{7,40}\b")


_SOURCE_URL = re.compile(r"(?:https?|file|ssh|git)://\S+|git@\S+")


_DEPENDENCY_CONFLICT = re.compile(
    r"ModuleNotFoundError|No module named|ImportError|VersionConflict|ResolutionImpossible"
    r"|conflicting dependencies|Could not find a version that satisfies|DistributionNotFound"
    r"|requires [^\n]{1,80} but you have|incompatible version",
    re.IGNORECASE,
)


def external_issue_category(task_category: str, kind: str, evidence: Iterable[str] = ()) -> str | None:
    """The category of an issue raised in an external code phase, or None for other phases
    (and for gate checks that keep their own category: scope, secrets, ...).

    `kind` is the gate check that failed, or "ci" for a red CI run; `evidence` the text to
    look for dependency trouble in (docs/architecture.md, Reuse: external_license_mismatch,
    external_dependency_version_conflict, external_code_incompatible).
    """
    if task_category not in licences.EXTERNAL_CODE_CATEGORIES:
        return None
    if kind in ("licence", "attribution"):
        return "external_license_mismatch"
    if kind in ("apply", "static_checks", "ci"):
        if _DEPENDENCY_CONFLICT.search("\n".join(evidence)):
            return "external_dependency_version_conflict"
        return "external_code_incompatible"
    return None


def is_notice_file(path: str) -> bool:
    """A file that records third-party attributions (NOTICE, THIRD_PARTY*, LICENSES/...)."""
    parts = path.lower().split("/")
    return bool(_NOTICE_NAME.match(parts[-1])) or any(p in ("licenses", "licences") for p in parts[:-1])


def _external(phase: PhaseStrategy) -> bool:
    return phase.task_category in licences.EXTERNAL_CODE_CATEGORIES


def check_licence(patch: ParsedPatch, phase: PhaseStrategy) -> GateCheck:
    """External code phases: the source's licence is whitelisted and no added line carries
    the text or SPDX id of another licence (a file copied from a GPL project, say)."""
    if not _external(phase):
        return gate_check("licence", True, "not an external code phase")
    allowed = phase.allowed_licences or list(licences.ALLOWED)
    found: list[str] = []
    source = phase.reuse.source if phase.reuse else None
    if source is not None and not licences.expression_allowed(source.licence, allowed):
        found.append(f"source {source.repo}: licence {source.licence} is not whitelisted")
    for fc in patch.files:
        if fc.is_binary or not fc.added_lines:
            continue
        for hit in licences.find_licences([line.text for line in fc.added_lines]):
            if not licences.expression_allowed(hit.spdx, allowed):
                number = fc.added_lines[hit.line].number
                found.append(f"{fc.path}:{number}: {hit.spdx} ({hit.marker!r})")
    if found:
        message = f"the patch brings in code under a licence that is not whitelisted ({', '.join(allowed)})"
        return gate_check("licence", False, message, found)
    what = f"source licence {source.licence}" if source is not None else "no refused licence text"
    return gate_check("licence", True, f"{what}; nothing under another licence added")


def check_attribution(patch: ParsedPatch, phase: PhaseStrategy, worktree: Path | None = None) -> GateCheck:
    """External code phases: copied files keep their licence header, or a NOTICE/THIRD_PARTY
    entry (added by the patch, or already in the worktree) names the source URL, commit and
    licence; no licence header is dropped."""
    if not _external(phase):
        return gate_check("attribution", True, "not an external code phase")
    problems = _dropped_headers(patch)
    notice = [
        line.text
        for fc in patch.files
        if is_notice_file(fc.path) and not fc.is_binary
        for line in fc.added_lines
    ]
    existing = _existing_notices(worktree) if worktree is not None else []
    if existing and (notice or not _notice_gaps(existing, phase)):
        notice += existing
    added = [
        fc
        for fc in patch.files
        if fc.status == "added" and not fc.is_binary and fc.added_lines and not is_notice_file(fc.path)
    ]
    if notice:
        gaps = _notice_gaps(notice, phase)
        if gaps:
            problems.append(f"the NOTICE/THIRD_PARTY entry lacks {', '.join(gaps)}")
    else:
        bare = [fc.path for fc in added if not licences.has_header([line.text for line in fc.added_lines])]
        problems += [
            f"{path}: added without a licence header, and no NOTICE/THIRD_PARTY entry names the source"
            for path in bare
        ]
        if not added:
            problems.append("nothing attributes the source: add a NOTICE/THIRD_PARTY entry (URL, commit, licence)")
    if problems:
        return gate_check("attribution", False, "external code is not attributed as its licence requires", problems)
    how = "a NOTICE/THIRD_PARTY entry names the source" if notice else "every added file keeps a licence header"
    return gate_check("attribution", True, how)


def _existing_notices(worktree: Path) -> list[str]:
    """The lines of the attribution files the worktree already has (top level, LICENSES/)."""
    lines: list[str] = []
    root = worktree.resolve()
    for path in sorted([*root.glob("*"), *root.glob("LICENSES/*"), *root.glob("LICENCES/*")]):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and is_notice_file(rel) and path.stat().st_size < 1 << 20:
            lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines


def _dropped_headers(patch: ParsedPatch) -> list[str]:
    """Licence header lines a patch removes from a file and does not put back."""
    out: list[str] = []
    for fc in patch.files:
        if fc.status not in ("modified", "renamed") or fc.is_binary or not fc.removed_lines:
            continue
        removed = [line.text for line in fc.removed_lines]
        kept = {licences.normalised_line(line.text) for line in fc.added_lines}
        for index in licences.header_lines(removed):
            if licences.normalised_line(removed[index]) not in kept:
                number = fc.removed_lines[index].number
                out.append(f"{fc.path}:{number}: drops licence header line {removed[index].strip()!r}")
    return out


def _notice_gaps(lines: Sequence[str], phase: PhaseStrategy) -> list[str]:
    """What a NOTICE entry must name and does not: source URL, commit, licence."""
    text = "\n".join(lines)
    source = phase.reuse.source if phase.reuse else None
    gaps = []
    if source is not None:
        if source.repo.rstrip("/") not in text:
            gaps.append(f"the source URL {source.repo}")
    elif not _SOURCE_URL.search(text):
        gaps.append("a source URL")
    if source is not None and source.commit:
        if source.commit not in text:
            gaps.append(f"the commit {source.commit}")
    elif not _COMMIT_ID.search(text):
        gaps.append("a commit id")
    wanted = licences.expression_ids(source.licence) if source is not None else list(licences.ALLOWED)
    named = {hit.spdx for hit in licences.find_licences(list(lines))}
    named |= {i for i in wanted if re.search(rf"(?<![\w.+-]){re.escape(i)}(?![\w.+-])", text)}
    if not named & set(wanted):
        gaps.append(f"the licence ({source.licence if source is not None else 'its SPDX id'})")
    return gaps
