"""Files an agent CLI writes for itself (its caches, settings, chat history) never reach a
patch (layer L3, pure): the sections of a patch whose path matches a preset's
`owned_files` are dropped, and the dropped paths are recorded as excluded.

A pattern is matched against every path of a section (old and new name): `dir/` matches
that directory anywhere at the top of the tree (`.gemini/settings.json`), any other pattern
is an fnmatch pattern for the first path component (`.aider*` matches
`.aider.tags.cache.v4/cache.db` and `.aider.chat.history.md`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

_HEADER = re.compile(r'^diff --git (?:"?a/(?P<a>.+?)"? "?b/(?P<b>.+?)"?)$')


def owned(path: str, patterns: Sequence[str]) -> bool:
    first = path.split("/", 1)[0]
    for pattern in patterns:
        if pattern.endswith("/"):
            if path.startswith(pattern) or first == pattern.rstrip("/"):
                return True
        elif fnmatch.fnmatchcase(first, pattern) or fnmatch.fnmatchcase(path, pattern):
            return True
    return False


def _sections(patch: str) -> list[str]:
    parts: list[str] = []
    for line in patch.splitlines(keepends=True):
        if line.startswith("diff --git ") or not parts:
            parts.append(line)
        else:
            parts[-1] += line
    return parts


def drop_owned(patch: str, patterns: Sequence[str]) -> tuple[str, list[str]]:
    """(the patch without the sections of owned files, the sorted paths dropped)."""
    if not patterns or not patch:
        return patch, []
    kept: list[str] = []
    dropped: set[str] = set()
    for section in _sections(patch):
        match = _HEADER.match(section.split("\n", 1)[0])
        paths = [p for p in (match.group("a"), match.group("b"))] if match else []
        if paths and any(owned(p, patterns) for p in paths):
            dropped.update(paths)
            continue
        kept.append(section)
    return "".join(kept), sorted(dropped)
