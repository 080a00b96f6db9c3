"""Parsing a builder's patch into the files it touches, exactly as `git apply` would see them.

The patch is parsed here rather than trusted to git because every policy check (paths,
scope, secrets) must see exactly the files `git apply` would write, including the ones a
naive parser misses: binary patches, mode-only changes, symlinks, and traditional diffs
hidden before or between git sections (git applies those too).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pipeline.core.errors import InvalidInput
from pipeline.vcs.quoting import take_quoted

if TYPE_CHECKING:  # both cost tens of ms to import; a task that never gates skips them
    from unidiff.patch import PatchedFile


SYMLINK_MODE = "120000"




FileStatus = Literal["added", "modified", "deleted", "renamed"]




class PatchParseError(InvalidInput):
    """A patch that is not a unified or git diff, or is truncated or inconsistent."""


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


_GIT_HEADER = "diff --git "


_DEV_NULL = "/dev/null"




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
    taken = take_quoted(text.encode("utf-8", errors="surrogateescape"))
    if taken is None:
        raise PatchParseError(
            f"line {line_no}: malformed quoted file name {text!r}",
            fix="regenerate the patch with `git diff`",
        )
    name, rest = taken
    return name.decode("utf-8", errors="surrogateescape"), rest.decode("utf-8", errors="surrogateescape")


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
