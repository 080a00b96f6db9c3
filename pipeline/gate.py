"""The gate: whether a builder's patch may be applied (DESIGN §5, §11.2).

Checks run in a fixed order and the first failure stops the gate; the checks after it are
recorded as skipped, so gate.json always lists every check. A failed gate is a value (a
`GateReport`), never an exception. The gate does not run git itself (applying goes through
the adapter) and does not reset the worktree after a failure: the caller owns the worktree.

The patch is parsed here rather than trusted to git because every policy check (paths,
scope, secrets) must see exactly the files `git apply` would write, including the ones a
naive parser misses: binary patches, mode-only changes, symlinks, and traditional diffs
hidden before or between git sections (git applies those too).
"""

from __future__ import annotations

import itertools
import math
import os
import posixpath
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pipeline import licences, proc
from pipeline.errors import InvalidInput
from pipeline.models.plan import CiStep
from pipeline.models.reports import GateCheck, GateReport
from pipeline.models.strategy import PhaseStrategy

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    from pathspec import GitIgnoreSpec
    from unidiff.patch import PatchedFile

FileStatus = Literal["added", "modified", "deleted", "renamed"]

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
    "static_checks",
)
# A failure of these ends the run as a policy violation; the others go back to the builder.
POLICY_CHECKS = frozenset({"paths_safe", "protected_paths", "scope", "secrets"})
# Categories whose job is the tests themselves: deleting or skipping tests is their work.
TEST_CATEGORIES = frozenset({"tests", "test_maintenance"})

SYMLINK_MODE = "120000"
STATIC_LOG_TAIL_LINES = 20
_EVIDENCE_LIMIT = 20
_FEEDBACK_EVIDENCE_LIMIT = 10
_JUNIT_PLACEHOLDER = "{junit}"
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class PatchParseError(InvalidInput):
    """A patch that is not a unified or git diff, or is truncated or inconsistent."""


# --------------------------------------------------------------------------- patch model


@dataclass(frozen=True)
class PatchLine:
    """One added or removed line: its number in the new (added) or old (removed) file."""

    number: int
    text: str


@dataclass(frozen=True)
class FileChange:
    """What a patch does to one file, as `git apply` would see it."""

    path: str  # the new path; the old one for a deletion
    old_path: str | None
    status: FileStatus
    added_lines: tuple[PatchLine, ...] = ()
    removed_lines: tuple[PatchLine, ...] = ()
    is_binary: bool = False
    new_mode: str | None = None
    symlink_target: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path this change names (a rename or copy names two)."""
        if self.old_path is not None and self.old_path != self.path:
            return (self.path, self.old_path)
        return (self.path,)

    @property
    def changed_lines(self) -> int:
        return len(self.added_lines) + len(self.removed_lines)


@dataclass(frozen=True)
class ParsedPatch:
    files: tuple[FileChange, ...]

    @property
    def touched_paths(self) -> list[str]:
        return sorted({p for fc in self.files for p in fc.paths})

    @property
    def changed_lines(self) -> int:
        return sum(fc.changed_lines for fc in self.files)


# --------------------------------------------------------------------------- parsing

_GIT_HEADER = "diff --git "
_DEV_NULL = "/dev/null"
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 34, "\\": 92}


@dataclass
class _GitHeader:
    """The extended header of one `diff --git` section (mutable while it is read)."""

    a_name: str | None = None
    b_name: str | None = None
    names_certain: bool = False
    minus_name: str | None = None
    plus_name: str | None = None
    rename_from: str | None = None
    rename_to: str | None = None
    copy_from: str | None = None
    copy_to: str | None = None
    new_file: bool = False
    deleted: bool = False
    new_mode: str | None = None
    mode_changed: bool = False
    binary: bool = False
    seen_plus: bool = False


def parse_patch(text: str) -> ParsedPatch:
    """The files a unified or git diff changes; PatchParseError if it is not one."""
    if not text.strip():
        raise PatchParseError("the patch is empty", fix="submit a diff with at least one change")
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(_GIT_HEADER)]
    bounds = [*starts, len(lines)]
    # Text before the first git section may be a commit message, or a traditional diff that
    # git would apply as well: it is parsed, not skipped.
    files = _traditional_changes(lines[: bounds[0]], first_line=1)
    for start, end in itertools.pairwise(bounds):
        files.extend(_git_section_changes(lines[start:end], first_line=start + 1))
    if not files:
        raise PatchParseError(
            "the text holds no file changes: it is not a unified or git diff",
            fix="hand in the output of `git diff` (with --binary for binary files)",
        )
    return ParsedPatch(tuple(files))


def _git_section_changes(lines: list[str], first_line: int) -> list[FileChange]:
    """The file of one `diff --git` section, plus any traditional diff trailing its hunks."""
    header = _read_git_header(lines, first_line)
    # Names first: a section naming two different files must be reported as such, not as
    # whatever unidiff makes of it.
    old_path, new_path = _git_paths(header, first_line)
    patched = _unidiff_files(lines, first_line)
    added, removed = _lines_of(patched[0]) if patched else ((), ())
    if header.binary or (patched and patched[0].is_binary_file):
        header.binary = True
    change = _make_change(header, old_path, new_path, added, removed)
    if change.status == "modified" and not (
        change.changed_lines or change.is_binary or header.mode_changed
    ):
        raise PatchParseError(
            f"line {first_line}: the section for {change.path!r} changes nothing",
            fix="regenerate the patch with `git diff`",
        )
    return [change, *(_traditional_change(p) for p in patched[1:])]


def _make_change(
    header: _GitHeader,
    old_path: str | None,
    new_path: str | None,
    added: tuple[PatchLine, ...],
    removed: tuple[PatchLine, ...],
) -> FileChange:
    status: FileStatus
    old: str | None = None
    if header.deleted:
        status, path = "deleted", old_path or new_path
    elif header.rename_from is not None:
        status, path, old = "renamed", new_path, old_path
    elif header.copy_from is not None:
        # A copy creates a file; its source is kept as old_path so it is checked too.
        status, path, old = "added", new_path, old_path
    else:
        status, path = ("added" if header.new_file else "modified"), new_path or old_path
    assert path is not None  # _git_paths returns at least one name
    new_mode = None if status == "deleted" else header.new_mode
    target = added[0].text if new_mode == SYMLINK_MODE and added else None
    return FileChange(
        path=_normalize(path),
        old_path=_normalize(old) if old is not None else None,
        status=status,
        added_lines=added,
        removed_lines=removed,
        is_binary=header.binary,
        new_mode=new_mode,
        symlink_target=target,
    )


def _read_git_header(lines: list[str], first_line: int) -> _GitHeader:
    header = _GitHeader()
    header.a_name, header.b_name, header.names_certain = _split_git_header(lines[0], first_line)
    for raw in lines[1:]:
        line = raw.rstrip("\r\n")
        if line.startswith("@@") or line == "GIT binary patch":
            header.binary = header.binary or line == "GIT binary patch"
            break
        if line.startswith("Binary files ") and line.endswith(" differ"):
            header.binary = True
            break
        if header.seen_plus:
            break
        _read_header_line(header, line, first_line)
    return header


def _read_header_line(header: _GitHeader, line: str, first_line: int) -> None:
    """Record one extended-header line; lines git does not need (index, similarity) pass."""
    key, _, value = line.partition(" ")
    if line.startswith("--- "):
        header.minus_name = _diff_name(line[4:], first_line)
    elif line.startswith("+++ "):
        header.seen_plus, header.plus_name = True, _diff_name(line[4:], first_line)
    elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
        kind, direction, name = line.split(" ", 2)
        setattr(header, f"{kind}_{direction}", _unquote(name, first_line))
    elif line.startswith("new file mode "):
        header.new_file, header.new_mode = True, line.rsplit(" ", 1)[1]
    elif line.startswith("deleted file mode "):
        header.deleted = True
    elif line.startswith("new mode "):
        header.new_mode, header.mode_changed = line.rsplit(" ", 1)[1], True
    elif key == "index" and " " in value and header.new_mode is None:
        header.new_mode = value.rsplit(" ", 1)[1]  # an unchanged mode is on the index line


def _git_paths(header: _GitHeader, first_line: int) -> tuple[str | None, str | None]:
    """Old and new path, the way git apply picks them, checked for consistency."""
    a_name = _side_name(header.a_name)
    b_name = _side_name(header.b_name)
    minus, plus = _side_name(header.minus_name), _side_name(header.plus_name)
    if header.names_certain:
        old = header.rename_from or header.copy_from or a_name
        new = header.rename_to or header.copy_to or b_name
    else:  # the header could not be split for sure: trust the other lines, like git
        old = header.rename_from or header.copy_from or minus or a_name
        new = header.rename_to or header.copy_to or plus or b_name
    if old is None and new is None:
        raise PatchParseError(
            f"line {first_line}: cannot tell which file the `diff --git` section changes",
            fix="regenerate the patch with `git diff`",
        )
    # git refuses a section whose names disagree with each other; so does the gate, or it
    # would check one file while git writes another.
    pairs = [("---", minus, old), ("+++", plus, new)]
    if header.names_certain:
        pairs += [("`diff --git` old", a_name, old), ("`diff --git` new", b_name, new)]
    for label, named, expected in pairs:
        if named is not None and expected is not None and named != expected:
            raise PatchParseError(
                f"line {first_line}: the {label} name {named!r} disagrees with the section's "
                f"file {expected!r}",
                fix="regenerate the patch with `git diff`",
            )
    return old, new


def _side_name(name: str | None) -> str | None:
    """A header or ---/+++ name without its a/ or b/ prefix; None for /dev/null."""
    return None if name in (None, "", _DEV_NULL) else _strip_component(name or "")


def _split_git_header(line: str, line_no: int) -> tuple[str | None, str | None, bool]:
    """The two names of `diff --git A B`, and whether that split is certain.

    Either name may be quoted; unquoted names may hold spaces, which makes the split
    ambiguous unless both names are the same (then git splits in the middle).
    """
    rest = line[len(_GIT_HEADER) :].rstrip("\r\n")
    if rest.startswith('"'):
        first, remainder = _take_quoted(rest, line_no)
        second = remainder.lstrip(" ")
        return first, _unquote(second, line_no) if second else None, True
    if ' "' in rest:  # a name holding `"` is quoted, so the first ` "` starts the second
        first, _, second = rest.partition(' "')
        return first, _unquote('"' + second, line_no), True
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[:half][2:] == rest[half + 1 :][2:]:
        return rest[:half], rest[half + 1 :], True
    first, sep, second = rest.partition(" b/")
    if not sep:
        return rest, None, False
    return first, "b/" + second, rest.count(" ") == 1


def _diff_name(raw: str, line_no: int) -> str:
    """The file name of a ---/+++ line, without the tab-separated timestamp git may add."""
    name = raw.rstrip("\r\n")
    if name.startswith('"'):
        return _take_quoted(name, line_no)[0]
    return name.split("\t", 1)[0]


def _take_quoted(text: str, line_no: int) -> tuple[str, str]:
    """A C-quoted name at the start of `text`, decoded, and the text after it."""
    out = bytearray()
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return out.decode("utf-8", errors="surrogateescape"), text[i + 1 :]
        if ch != "\\":
            out.extend(ch.encode("utf-8", errors="surrogateescape"))
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt in _C_ESCAPES:
            out.append(_C_ESCAPES[nxt])
            i += 2
        elif re.fullmatch(r"[0-7]{3}", text[i + 1 : i + 4]):
            out.append(int(text[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            break
    raise PatchParseError(
        f"line {line_no}: malformed quoted file name {text!r}",
        fix="regenerate the patch with `git diff`",
    )


def _unquote(name: str, line_no: int) -> str:
    return _take_quoted(name, line_no)[0] if name.startswith('"') else name


def _strip_component(name: str) -> str:
    """Drop the a/ or b/ prefix like `git apply -p1`.

    Absolute names and names starting with `..` are kept whole so the path check refuses
    them instead of the gate silently rewriting them into harmless ones.
    """
    if name.startswith("/") or "/" not in name or name.split("/", 1)[0] == "..":
        return name
    return name.split("/", 1)[1]


def _unidiff_files(lines: list[str], first_line: int) -> list[PatchedFile]:
    """unidiff's reading of some lines (hunks and their line numbers)."""
    from unidiff.errors import UnidiffParseError
    from unidiff.patch import PatchSet

    try:
        return list(PatchSet(lines))
    except UnidiffParseError as exc:
        raise PatchParseError(
            f"the patch is malformed near line {first_line}: {exc}",
            fix="regenerate the patch with `git diff`; a hand-edited hunk must keep its "
            "@@ line counts right",
        ) from exc


def _lines_of(patched: PatchedFile) -> tuple[tuple[PatchLine, ...], tuple[PatchLine, ...]]:
    added: list[PatchLine] = []
    removed: list[PatchLine] = []
    for hunk in patched:
        for line in hunk:
            text = line.value.rstrip("\r\n")
            if line.is_added:
                added.append(PatchLine(line.target_line_no or 0, text))
            elif line.is_removed:
                removed.append(PatchLine(line.source_line_no or 0, text))
    return tuple(added), tuple(removed)


def _traditional_changes(lines: list[str], first_line: int) -> list[FileChange]:
    if not any(line.startswith("--- ") for line in lines):
        return []  # a commit message or other preamble git ignores too
    return [_traditional_change(p) for p in _unidiff_files(lines, first_line)]


def _traditional_change(patched: PatchedFile) -> FileChange:
    """A file of a plain unified diff (no git header): names come from ---/+++."""
    source = _plain_name(str(patched.source_file))
    target = _plain_name(str(patched.target_file))
    added, removed = _lines_of(patched)
    binary = bool(patched.is_binary_file)
    if source is None and target is None:
        raise PatchParseError("a file section names /dev/null on both sides")
    if source is None:
        assert target is not None
        return FileChange(target, None, "added", added, removed, binary)
    if target is None:
        return FileChange(source, None, "deleted", added, removed, binary)
    old = source if source != target else None
    return FileChange(target, old, "modified", added, removed, binary)


def _plain_name(name: str) -> str | None:
    name = _diff_name(name, 0)
    return None if name in (_DEV_NULL, "") else _normalize(_strip_component(name))


def _normalize(path: str) -> str:
    """`a//b` and `a/./b` as git writes them (`a/b`), so the globs see the real path;
    `..` stays for the path check to refuse."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    return ("/" if path.startswith("/") else "") + "/".join(parts)


# --------------------------------------------------------------------------- the gate


class ApplyOutcome(Protocol):
    """What the git adapter's `apply` reports (pipeline.git.ApplyResult)."""

    @property
    def ok(self) -> bool: ...

    @property
    def three_way(self) -> bool: ...

    @property
    def message(self) -> str: ...


class PatchApplier(Protocol):
    """The one thing the gate needs from the git adapter."""

    def apply(self, worktree: Path, patch_path: Path) -> ApplyOutcome: ...


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
) -> GateReport:
    """Every gate check in order, stopping at the first failure; the patch is applied by
    the `apply` check and left applied (or half-done) for the caller to keep or reset."""
    try:
        patch = parse_patch(patch_text)
    except PatchParseError as exc:
        failed = _check("parse", False, exc.message, [exc.fix] if exc.fix else [])
        return _report(phase, attempt, [failed], [], three_way=False)
    applied: list[ApplyOutcome] = []
    steps: list[Callable[[], GateCheck]] = [
        lambda: _check("parse", True, _summary(patch)),
        lambda: check_paths_safe(patch, worktree),
        lambda: check_protected(patch, protected_paths),
        lambda: check_scope(patch, phase.scope_allow, phase.scope_deny),
        lambda: check_size(patch, phase.max_files, phase.max_changed_lines),
        lambda: check_secrets(patch),
        lambda: check_test_tampering(patch, phase.task_category),
        lambda: check_licence(patch, phase),
        lambda: check_attribution(patch, phase, worktree),
        lambda: _check_apply(git, worktree, patch_path, applied),
        lambda: check_static(static_checks, worktree, log_dir),
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


def _check(name: str, ok: bool, message: str, evidence: Iterable[str] = ()) -> GateCheck:
    return GateCheck(
        name=name,
        verdict="pass" if ok else "fail",
        message=message,
        evidence=_limit(list(evidence)),
        policy=name in POLICY_CHECKS,
    )


def _limit(evidence: list[str], limit: int = _EVIDENCE_LIMIT) -> list[str]:
    if len(evidence) <= limit:
        return evidence
    return [*evidence[:limit], f"... and {len(evidence) - limit} more"]


def _summary(patch: ParsedPatch) -> str:
    return f"{len(patch.files)} file(s), {patch.changed_lines} changed line(s)"


# --------------------------------------------------------------------------- paths_safe


def check_paths_safe(patch: ParsedPatch, worktree: Path) -> GateCheck:
    """No path or symlink that leads outside the worktree or into git's own files."""
    root = worktree.resolve()
    problems: list[str] = []
    for fc in patch.files:
        # Lexical first: resolving `../x` on disk would only probe foreign directories.
        reasons = [(p, _lexical_problem(p) or _physical_problem(root, p)) for p in fc.paths]
        problems.extend(f"{path}: {reason}" for path, reason in reasons if reason)
        if any(reason for _, reason in reasons):
            continue  # refused already; never read what a bad name points at
        target = _resulting_symlink(fc, root)
        reason = _symlink_problem(root, fc.path, target) if target is not None else None
        if reason:
            problems.append(f"{fc.path}: {reason}")
    if problems:
        return _check("paths_safe", False, "the patch writes outside the worktree", problems)
    return _check("paths_safe", True, "every path stays inside the worktree")


def _resulting_symlink(fc: FileChange, root: Path) -> str | None:
    """The target of the symlink this change leaves at `fc.path`, or None if none.

    Usually it is the added line. A pure mode change to 120000, or a rename or copy of a
    symlink, carries no content: the target is then what the source holds today (a
    relative link moved to another directory can point elsewhere).
    """
    if fc.status == "deleted":
        return None
    if fc.symlink_target is not None:
        return fc.symlink_target
    source = root / (fc.old_path or fc.path)
    if fc.new_mode != SYMLINK_MODE and not (fc.old_path and source.is_symlink()):
        return None
    if source.is_symlink():
        return os.readlink(source)
    if source.is_file():
        return source.read_bytes()[:4096].decode("utf-8", errors="replace")
    return ""


def _lexical_problem(path: str) -> str | None:
    parts = path.split("/")
    if not path.strip() or "\0" in path:
        return "empty or invalid path"
    if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
        return "absolute path"
    if ".." in parts:
        return "`..` component"
    if "\\" in path:  # a separator on Windows checkouts, where `..\x` would escape
        return "backslash in path"
    if any(part.lower() == ".git" for part in parts):  # case-insensitive filesystems
        return "inside .git"
    return None


def _physical_problem(root: Path, path: str) -> str | None:
    """A parent directory in the worktree that is a symlink.

    One leading out of the worktree is the escape this check exists for; one staying inside
    is refused too, because the lexical path would then dodge the protected and scope globs
    (`link/run.json` really writing `runs/R/run.json`). git diff never names a path through
    a symlink, so a genuine patch is never refused for it.
    """
    parent = (root / path).parent
    try:
        resolved = parent.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return f"parent directory {_rel(parent, root)} cannot be resolved (symlink loop?)"
    if resolved == parent:
        return None
    if not resolved.is_relative_to(root):
        return f"parent directory {_rel(parent, root)} is a symlink leading to {resolved}"
    return f"parent directory {_rel(parent, root)} is a symlink to {_rel(resolved, root)}"


def _symlink_problem(root: Path, path: str, target: str) -> str | None:
    if not target.strip() or "\n" in target or "\0" in target:
        return f"symlink with an empty or malformed target {target[:80]!r}"
    if target.startswith("/"):
        return f"symlink to absolute path {target!r}"
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if joined == ".." or joined.startswith("../"):
        return f"symlink {target!r} points outside the repository"
    if any(part.lower() == ".git" for part in joined.split("/")):
        return f"symlink {target!r} points into .git"
    try:
        resolved = ((root / path).parent / target).resolve()
    except (OSError, RuntimeError):
        return f"symlink {target!r} cannot be resolved (symlink loop?)"
    if not resolved.is_relative_to(root):
        return f"symlink {target!r} resolves outside the worktree ({resolved})"
    return None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- globs


def _spec(globs: Iterable[str]) -> tuple[GitIgnoreSpec, list[str]]:
    """A gitignore-style matcher and the pattern list its match indexes refer to."""
    import pathspec

    lines = [g.strip() for g in globs if g.strip() and not g.strip().startswith("#")]
    return pathspec.GitIgnoreSpec.from_lines(lines), lines


def _matching_glob(spec: GitIgnoreSpec, lines: list[str], path: str) -> str | None:
    """The glob that decides `path` is matched, or None if it is not matched."""
    result = spec.check_file(path)
    if not result.include:
        return None
    return lines[result.index] if result.index is not None else "?"


def _folded_matcher(globs: Sequence[str]) -> Callable[[str], str | None]:
    """The glob matching a path, also case-folded: on macOS and Windows checkouts `RUNS/x`
    is written into `runs/`, so a deny-style list must not be dodged by spelling."""
    spec, lines = _spec(globs)
    folded, folded_lines = _spec(g.lower() for g in globs)

    def match(path: str) -> str | None:
        return _matching_glob(spec, lines, path) or _matching_glob(
            folded, folded_lines, path.lower()
        )

    return match


def check_protected(patch: ParsedPatch, protected_paths: Sequence[str]) -> GateCheck:
    """No touched path (old or new name) matches a protected glob."""
    match = _folded_matcher(protected_paths)
    hits = [
        f"{path} (matches {glob!r})"
        for path in patch.touched_paths
        if (glob := match(path)) is not None
    ]
    if hits:
        return _check("protected_paths", False, "the patch touches protected paths", hits)
    return _check("protected_paths", True, "no protected path touched")


def check_scope(patch: ParsedPatch, allow: Sequence[str], deny: Sequence[str]) -> GateCheck:
    """Every touched path is allowed by the phase's scope and not denied by it."""
    allow_spec, allow_lines = _spec(allow)  # exact case: an allow list only errs on refusing
    denied = _folded_matcher(deny)
    out: list[str] = []
    for path in patch.touched_paths:
        if _matching_glob(allow_spec, allow_lines, path) is None:
            out.append(f"{path} (not allowed)")
        elif (glob := denied(path)) is not None:
            out.append(f"{path} (denied by {glob!r})")
    if out:
        scope = f"allow {', '.join(allow) or '(nothing)'}"
        if deny:
            scope += f"; deny {', '.join(deny)}"
        return _check("scope", False, f"the patch touches paths outside the scope ({scope})", out)
    return _check("scope", True, "every path is in scope")


# --------------------------------------------------------------------------- size


def check_size(patch: ParsedPatch, max_files: int | None, max_lines: int | None) -> GateCheck:
    files, lines = len(patch.files), patch.changed_lines
    over: list[str] = []
    if max_files is not None and files > max_files:
        over.append(f"{files} files changed, at most {max_files} allowed")
    if max_lines is not None and lines > max_lines:
        over.append(f"{lines} lines added+removed, at most {max_lines} allowed")
    if over:
        per_file = [f"{fc.path}: {fc.changed_lines} line(s)" for fc in patch.files]
        return _check("size", False, "the patch is too large: " + "; ".join(over), per_file)
    return _check("size", True, f"{files} file(s), {lines} line(s) within limits")


# --------------------------------------------------------------------------- secrets


@dataclass(frozen=True)
class _SecretRule:
    kind: str
    pattern: re.Pattern[str]
    keep: int  # leading characters that are a public prefix (AKIA, ghp_), safe to show
    group: str = "value"


_SECRET_RULES = (
    _SecretRule(
        "private key block",
        re.compile(r"(?P<value>-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----)"),
        keep=-1,  # the BEGIN line names the key type and holds nothing secret
    ),
    _SecretRule(
        "AWS access key id",
        re.compile(r"(?<![A-Z0-9])(?P<value>(?:AKIA|ASIA)[0-9A-Z]{16})(?![A-Z0-9])"),
        keep=4,
    ),
    _SecretRule("GitHub token", re.compile(r"(?P<value>gh[pousr]_[A-Za-z0-9]{36,})"), keep=4),
    _SecretRule(
        "GitHub token", re.compile(r"(?P<value>github_pat_[A-Za-z0-9_]{22,})"), keep=11
    ),
    _SecretRule("Slack token", re.compile(r"(?P<value>xox[abposr]-[A-Za-z0-9-]{10,})"), keep=5),
    _SecretRule(
        "Slack webhook",
        re.compile(r"(?P<value>https://hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,})"),
        keep=len("https://hooks.slack.com/services/"),
    ),
)
_GENERIC_ASSIGNMENT = re.compile(
    r"""(?ix)
    (?P<key>[a-z0-9_.-]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key
        |auth[_-]?token|token|private[_-]?key)[a-z0-9_.-]*)
    ["']?\s*(?::=|=>|==|=|:)\s*
    (?P<quote>["'`])(?P<value>[^"'`\s]+)(?P=quote)
    """
)
_GENERIC_MIN_LENGTH = 16
# Bits per character: random tokens score ~4 and more, words and placeholders well below.
_GENERIC_MIN_ENTROPY = 3.5
_PLACEHOLDER = re.compile(r"\$\{|\{\{|<[^>]*>|%\(|^x+$|changeme|example|dummy|redacted", re.I)


def check_secrets(patch: ParsedPatch) -> GateCheck:
    """No added line carries something that looks like a credential."""
    found: list[str] = []
    for fc in patch.files:
        if fc.is_binary:
            continue
        for line in fc.added_lines:
            found.extend(
                f"{fc.path}:{line.number}: {kind} {masked}" for kind, masked in _secrets_in(line)
            )
    if found:
        return _check("secrets", False, "added lines contain what looks like secrets", found)
    return _check("secrets", True, "no secrets in added lines")


def _secrets_in(line: PatchLine) -> list[tuple[str, str]]:
    hits: list[tuple[str, str]] = []
    for rule in _SECRET_RULES:
        for match in rule.pattern.finditer(line.text):
            hits.append((rule.kind, _mask(match.group(rule.group), rule.keep)))
    if hits:
        return hits
    for match in _GENERIC_ASSIGNMENT.finditer(line.text):
        value = match.group("value")
        if _looks_random(value):
            hits.append((f"hard-coded {match.group('key')}", _mask(value, 0)))
    return hits


def _looks_random(value: str) -> bool:
    if len(value) < _GENERIC_MIN_LENGTH or _PLACEHOLDER.search(value):
        return False
    return _entropy(value) >= _GENERIC_MIN_ENTROPY


def _entropy(value: str) -> float:
    counts = Counter(value)
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _mask(value: str, keep: int) -> str:
    """Never the secret: its public prefix at most, then stars and the length."""
    if keep < 0:
        return value
    return f"{value[:keep]}{'*' * 8} ({len(value)} chars)"


# --------------------------------------------------------------------------- tampering

_SKIP_MARKER = re.compile(
    r"""pytest\.mark\.(?:skip|skipif|xfail)\b
    |pytest\.(?:skip|xfail|importorskip)\s*\(
    |\bunittest\.skip|\bSkipTest\b
    |\bxfail\b
    |\b(?:it|describe|test|context)\.skip\b
    |\b(?:it|describe|test|context)\.only\s*\(
    |\bx(?:it|describe|test)\s*\(
    |\bt\.Skip(?:Now|f)?\s*\(
    |\bcollect_ignore\b|--deselect\b""",
    re.VERBOSE,
)
_ASSERT_LINE = re.compile(
    r"""^\s*(?:assert\b|self\.assert\w*\s*\(|(?:await\s+)?expect\s*\(|assert_\w*\s*\(
    |\w+\.assert\w*\s*\()""",
    re.VERBOSE,
)
_COMMENT = re.compile(r"^\s*(?:#|//)")


def is_test_file(path: str) -> bool:
    """A test by the usual conventions (tests/ directories, test_*.py, *.spec.* ...)."""
    parts = path.split("/")
    name = parts[-1]
    if any(part in ("tests", "test", "__tests__") for part in parts[:-1]):
        return True
    return (
        (name.startswith("test_") and name.endswith(".py"))
        or re.search(r"_test\.(?:py|go)$", name) is not None
        or re.search(r"\.(?:spec|test)\.[^.]+$", name) is not None
    )


def check_test_tampering(patch: ParsedPatch, task_category: str) -> GateCheck:
    """Tests are not deleted, skipped or stripped of asserts outside test-only phases."""
    if task_category in TEST_CATEGORIES:
        return _check("test_tampering", True, f"category {task_category!r} may change tests")
    found: list[str] = []
    for fc in patch.files:
        found.extend(_tampering_in(fc))
    if found:
        message = "the patch deletes, skips or weakens tests; fix the code, not the tests"
        return _check("test_tampering", False, message, found)
    return _check("test_tampering", True, "tests are left intact")


def _tampering_in(fc: FileChange) -> list[str]:
    was_test = is_test_file(fc.old_path or fc.path)
    if fc.status == "deleted" and is_test_file(fc.path):
        return [f"{fc.path}: test file deleted"]
    if fc.status == "renamed" and was_test and not is_test_file(fc.path):
        return [f"{fc.old_path}: test file renamed away to {fc.path}"]
    if not (is_test_file(fc.path) or posixpath.basename(fc.path) == "conftest.py"):
        return []
    found = [
        f"{fc.path}:{line.number}: adds skip marker `{match.group(0).strip()}`"
        for line in fc.added_lines
        if not _COMMENT.match(line.text) and (match := _SKIP_MARKER.search(line.text))
    ]
    if fc.status in ("modified", "renamed"):
        removed = sum(1 for line in fc.removed_lines if _ASSERT_LINE.match(line.text))
        added = sum(1 for line in fc.added_lines if _ASSERT_LINE.match(line.text))
        if removed and not added:
            found.append(f"{fc.path}: removes {removed} assert line(s) and adds none")
    return found


# --------------------------------------------------------------------------- licences

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
    look for dependency trouble in (DESIGN §11.12: external_license_mismatch,
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
        return _check("licence", True, "not an external code phase")
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
        return _check("licence", False, message, found)
    what = f"source licence {source.licence}" if source is not None else "no refused licence text"
    return _check("licence", True, f"{what}; nothing under another licence added")


def check_attribution(patch: ParsedPatch, phase: PhaseStrategy, worktree: Path | None = None) -> GateCheck:
    """External code phases: copied files keep their licence header, or a NOTICE/THIRD_PARTY
    entry (added by the patch, or already in the worktree) names the source URL, commit and
    licence; no licence header is dropped."""
    if not _external(phase):
        return _check("attribution", True, "not an external code phase")
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
        return _check("attribution", False, "external code is not attributed as its licence requires", problems)
    how = "a NOTICE/THIRD_PARTY entry names the source" if notice else "every added file keeps a licence header"
    return _check("attribution", True, how)


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


# --------------------------------------------------------------------------- apply


def _check_apply(
    git: PatchApplier, worktree: Path, patch_path: Path, applied: list[ApplyOutcome]
) -> GateCheck:
    result = git.apply(worktree, patch_path)
    applied.append(result)
    if not result.ok:
        return _check("apply", False, "the patch does not apply", [result.message])
    how = "applied with a 3-way merge" if result.three_way else "applied cleanly"
    return _check("apply", True, how)


# --------------------------------------------------------------------------- static checks


def check_static(steps: Sequence[CiStep], worktree: Path, log_dir: Path) -> GateCheck:
    """Every static check runs (so the builder sees all failures at once); any red fails."""
    if not steps:
        return _check("static_checks", True, "no static checks")
    log_dir = log_dir.resolve()  # steps run with cwd=worktree: paths handed over are absolute
    log_dir.mkdir(parents=True, exist_ok=True)
    env = proc.scrubbed_env()
    failed: list[str] = []
    evidence: list[str] = []
    used: set[str] = set()
    for step in steps:
        problem = _run_static(step, worktree, log_dir, env, used)
        if problem:
            failed.append(step.name)
            evidence.extend(problem)
    if failed:
        message = f"static check(s) failed: {', '.join(failed)}"
        return _check("static_checks", False, message, evidence)
    return _check("static_checks", True, f"passed: {', '.join(s.name for s in steps)}")


def _run_static(
    step: CiStep, worktree: Path, log_dir: Path, env: dict[str, str], used: set[str]
) -> list[str]:
    """Run one static check; evidence of its failure, or [] when it passed."""
    stem = _log_stem(step.name, used)
    log_path = log_dir / f"{stem}.log"
    junit = shlex.quote(str(log_dir / f"{stem}.junit.xml"))
    res = proc.run(
        step.run.replace(_JUNIT_PLACEHOLDER, junit),
        cwd=worktree,
        env=env,
        timeout_s=step.timeout_s,
        log_path=log_path,
    )
    if res.ok:
        return []
    outcome = (
        f"timed out after {step.timeout_s} s and was killed"
        if res.timed_out
        else f"rc {res.returncode}"
    )
    output = res.stdout + res.stderr  # stderr only holds proc's own reason a start failed
    tail = "\n".join(output.splitlines()[-STATIC_LOG_TAIL_LINES:]) or "(no output)"
    return [
        f"{step.name}: command: {step.run}",
        f"{step.name}: {outcome}",
        f"{step.name}: last {STATIC_LOG_TAIL_LINES} lines of {log_path.name}:\n{tail}",
    ]


def _log_stem(name: str, used: set[str]) -> str:
    safe = _UNSAFE_NAME_CHARS.sub("_", name).strip("._") or "check"
    stem = f"static-{safe}"
    if stem in used:  # two names that sanitise alike must not share a log
        stem = f"{stem}-{len(used) + 1}"
    used.add(stem)
    return stem


# --------------------------------------------------------------------------- feedback

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
        for item in _limit(failed.evidence, _FEEDBACK_EVIDENCE_LIMIT):
            lines.append("- " + item.replace("\n", "\n  "))
    hint = _HINTS.get(failed.name)
    if hint:
        lines.append(hint)
    return "\n".join(lines) + "\n"
