"""Path checks of the gate: paths stay inside the worktree, protected paths, scope globs, size.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.gate.evidence import gate_check
from pipeline.gate.gitfeatures import filter_problems, submodule_problems
from pipeline.gate.patch import SYMLINK_MODE, FileChange, ParsedPatch
from pipeline.models.reports import GateCheck

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    from pathspec import GitIgnoreSpec




def check_paths_safe(patch: ParsedPatch, worktree: Path, allows: Collection[str] = ()) -> GateCheck:
    """No path or symlink that leads outside the worktree or into git's own files; no
    submodule or filter attribute the phase does not declare in `allows`."""
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
        problems.extend(submodule_problems(fc, allows))
        problems.extend(filter_problems(fc, allows))
    if problems:
        return gate_check("paths_safe", False, "the patch writes outside the worktree", problems)
    return gate_check("paths_safe", True, "every path stays inside the worktree")


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
        return gate_check("protected_paths", False, "the patch touches protected paths", hits)
    return gate_check("protected_paths", True, "no protected path touched")


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
        return gate_check("scope", False, f"the patch touches paths outside the scope ({scope})", out)
    return gate_check("scope", True, "every path is in scope")


# Byte limits no plan can lift: a patch is read whole by the gate, git and the reviewer, and
# a line this long is generated or minified content, never a reviewable change.
MAX_PATCH_BYTES = 16 * 1024 * 1024
MAX_LINE_CHARS = 20_000


def check_patch_bytes(size: int) -> GateCheck | None:
    """A failed size check for a patch over MAX_PATCH_BYTES (checked before it is parsed)."""
    if size <= MAX_PATCH_BYTES:
        return None
    return gate_check(
        "size", False, f"the patch is too large: {size} bytes, at most {MAX_PATCH_BYTES} allowed", []
    )


def check_size(patch: ParsedPatch, max_files: int | None, max_lines: int | None) -> GateCheck:
    files, lines = len(patch.files), patch.changed_lines
    over: list[str] = []
    long_lines = [
        f"{fc.path}:{line.number}: {len(line.text)} characters"
        for fc in patch.files
        for line in fc.added_lines
        if len(line.text) > MAX_LINE_CHARS
    ]
    if long_lines:
        over.append(f"{len(long_lines)} added line(s) longer than {MAX_LINE_CHARS} characters")
    if max_files is not None and files > max_files:
        over.append(f"{files} files changed, at most {max_files} allowed")
    if max_lines is not None and lines > max_lines:
        over.append(f"{lines} lines added+removed, at most {max_lines} allowed")
    if over:
        per_file = long_lines or [f"{fc.path}: {fc.changed_lines} line(s)" for fc in patch.files]
        return gate_check("size", False, "the patch is too large: " + "; ".join(over), per_file)
    return gate_check("size", True, f"{files} file(s), {lines} line(s) within limits")
