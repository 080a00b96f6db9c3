"""Licences: the zero-intervention whitelist, SPDX ids, and recognising licence texts.

Pure functions. Used by the catalog rules, the gate's licence checks on external
code phases, and `catalog_scan`. Recognition works on text fingerprints: the phrases each
licence's text and its usual file header carry (an `SPDX-License-Identifier:` line wins over
them). A small hand-written table, because the whitelist is five ids and the refused ones
only need to be told apart well enough to name them in an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# docs/architecture.md, Reuse: only these are used in zero-intervention runs; everything else is refused.
ALLOWED: tuple[str, ...] = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC")

# Ids this module recognises (the refused ones so an error can name them).
KNOWN: tuple[str, ...] = (
    *ALLOWED,
    "GPL-2.0",
    "GPL-3.0",
    "LGPL-2.1",
    "LGPL-3.0",
    "AGPL-3.0",
    "MPL-2.0",
)

_ALIASES = {
    "mit license": "MIT",
    "expat": "MIT",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "bsd-2": "BSD-2-Clause",
    "bsd-3": "BSD-3-Clause",
    "simplified bsd": "BSD-2-Clause",
    "new bsd": "BSD-3-Clause",
    "gplv2": "GPL-2.0",
    "gplv3": "GPL-3.0",
    "lgplv3": "LGPL-3.0",
    "agplv3": "AGPL-3.0",
}
_SUFFIXES = ("-only", "-or-later", "+")


def normalise_id(spdx: str) -> str:
    """`GPL-3.0-or-later` -> `GPL-3.0`, `mit` -> `MIT`, `Apache 2.0` -> `Apache-2.0`; an
    unknown id comes back as given (stripped)."""
    text = spdx.strip()
    lowered = text.lower()
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    for suffix in _SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
            text = text[: -len(suffix)]
    by_lower = {k.lower(): k for k in KNOWN}
    return by_lower.get(lowered, text)


def expression_ids(expression: str) -> list[str]:
    """The ids of an SPDX expression (`MIT OR Apache-2.0`), normalised."""
    parts = re.split(r"\s+(?:OR|AND|WITH)\s+|[()]", expression.strip())
    return [normalise_id(p) for p in parts if p.strip()]


def expression_allowed(expression: str, allowed: Iterable[str] = ALLOWED) -> bool:
    """An expression is usable when one side of every OR, and every part of an AND, is allowed."""
    allowed_ids = {normalise_id(a) for a in allowed}
    text = expression.strip()
    if not text:
        return False
    alternatives = re.split(r"\s+OR\s+", text)
    for alternative in alternatives:
        ids = [normalise_id(p) for p in re.split(r"\s+AND\s+", alternative.strip("() ")) if p.strip()]
        if ids and all(i in allowed_ids for i in ids):
            return True
    return False


# --------------------------------------------------------------------------- fingerprints

_COMMENT_LEADER = re.compile(r"^\s*(?:#+|//+|/\*+|\*+/?|;+|--|<!--|-->|\"\"\"|''')\s?")
_SPDX_LINE = re.compile(r"SPDX-License-Identifier:\s*([A-Za-z0-9.+() -]+?)\s*(?:\*/|-->)?\s*$")
_COPYRIGHT = re.compile(r"\bcopyright\b\s*(?:\(c\)|©|\d{4})", re.IGNORECASE)


@dataclass(frozen=True)
class _Print:
    spdx: str
    pattern: re.Pattern[str]


def _p(spdx: str, pattern: str) -> _Print:
    return _Print(spdx, re.compile(pattern))


# Searched in order over lower-cased text with whitespace collapsed; the more specific first.
_FULL_TEXT = (
    _p("AGPL-3.0", r"gnu affero general public license"),
    _p("LGPL-3.0", r"gnu lesser general public license\W+version 3"),
    _p("LGPL-2.1", r"gnu (?:lesser|library) general public license\W+version 2"),
    _p("GPL-3.0", r"gnu general public license\W+version 3"),
    _p("GPL-2.0", r"gnu general public license\W+version 2"),
    _p("MPL-2.0", r"mozilla public license,? (?:version|v\.) 2\.0"),
    _p("Apache-2.0", r"apache license,? version 2\.0"),
    _p("ISC", r"permission to use, copy, modify, and(?:/or)? distribute this software for any purpose"),
    _p("MIT", r"permission is hereby granted, free of charge, to any person obtaining a copy"),
    _p("BSD-3-Clause", r"redistribution and use in source and binary forms.*(?:neither the name|endorse or promote)"),
    _p("BSD-2-Clause", r"redistribution and use in source and binary forms"),
)
# Headers often cut the full text short: these phrases alone name a family.
_HEADER = (
    _p("AGPL-3.0", r"gnu affero general public license|licensed under the (?:gnu )?agpl"),
    _p("LGPL-3.0", r"gnu lesser general public license.{0,200}version 3"),
    _p("LGPL-2.1", r"gnu (?:lesser|library) general public license"),
    _p("GPL-3.0", r"gnu general public license.{0,200}version 3"),
    _p("GPL-2.0", r"gnu general public license.{0,200}version 2"),
    _p("GPL-3.0", r"gnu general public license|licensed under the (?:gnu )?gpl"),
    _p("MPL-2.0", r"mozilla public license"),
    _p("Apache-2.0", r"licensed under the apache license|apache license"),
    _p("ISC", r"permission to use, copy, modify, and(?:/or)? distribute this software"),
    _p("MIT", r"permission is hereby granted, free of charge|\bmit license\b|licensed under the mit\b"),
    _p("BSD-3-Clause", r"redistribution and use in source and binary forms.*neither the name"),
    _p("BSD-2-Clause", r"redistribution and use in source and binary forms|\bbsd license\b"),
)


def _clean(line: str) -> str:
    return _COMMENT_LEADER.sub("", line).strip()


def _joined(lines: Sequence[str]) -> tuple[str, list[int]]:
    """Lower-cased text of `lines` with comment leaders and runs of whitespace collapsed, and
    for each character the index of the line it came from."""
    text: list[str] = []
    owner: list[int] = []
    for index, line in enumerate(lines):
        cleaned = " ".join(_clean(line).lower().split())
        if not cleaned:
            continue
        piece = cleaned + " "
        text.append(piece)
        owner.extend([index] * len(piece))
    return "".join(text), owner


def identify_text(text: str) -> str | None:
    """The SPDX id of a licence file's text, or None when it is not one this module knows."""
    lines = text.splitlines()
    spdx = spdx_lines(lines)
    if spdx:
        return spdx[0][1]
    joined, _ = _joined(lines)
    for fp in _FULL_TEXT:
        if fp.pattern.search(joined):
            return fp.spdx
    return None


def spdx_lines(lines: Sequence[str]) -> list[tuple[int, str]]:
    """(line index, normalised expression) of every `SPDX-License-Identifier:` line."""
    found = []
    for index, line in enumerate(lines):
        match = _SPDX_LINE.search(line)
        if match:
            ids = expression_ids(match.group(1))
            found.append((index, " OR ".join(ids) if " OR " in match.group(1) else " AND ".join(ids)))
    return found


@dataclass(frozen=True)
class LicenceHit:
    line: int  # 0-based index into the lines searched
    spdx: str
    marker: str  # the text that gave it away


def find_licences(lines: Sequence[str]) -> list[LicenceHit]:
    """Every licence a piece of code or text declares: SPDX lines, then header phrases.

    One hit per id (the first place it shows), in line order.
    """
    hits: dict[str, LicenceHit] = {}
    for index, expression in spdx_lines(lines):
        for spdx in expression_ids(expression):
            hits.setdefault(spdx, LicenceHit(index, spdx, lines[index].strip()))
    joined, owner = _joined(lines)
    claimed: list[tuple[int, int]] = []
    for fp in _HEADER:
        for match in fp.pattern.finditer(joined):
            span = (match.start(), match.end())
            if any(s < span[1] and span[0] < e for s, e in claimed):
                continue  # a more specific print already read this text
            claimed.append(span)
            index = owner[match.start()] if owner else 0
            hits.setdefault(fp.spdx, LicenceHit(index, fp.spdx, _clean(lines[index])[:100]))
    return sorted(hits.values(), key=lambda h: (h.line, h.spdx))


def header_lines(lines: Sequence[str]) -> list[int]:
    """Indexes of lines that are part of a licence header: SPDX, copyright, licence phrases."""
    found = {i for i, _ in spdx_lines(lines)}
    found |= {i for i, line in enumerate(lines) if _COPYRIGHT.search(line)}
    found |= {hit.line for hit in find_licences(lines)}
    return sorted(found)


def has_header(lines: Sequence[str], within: int = 40) -> bool:
    """True when the first `within` lines carry a licence header (SPDX, copyright or text)."""
    return bool(header_lines(list(lines[:within])))


def normalised_line(line: str) -> str:
    """A line as compared when deciding whether a header line was kept."""
    return " ".join(_clean(line).lower().split())


# Task categories whose patches bring in external code: the gate checks their licences and
# attribution, and their issues carry the external_* categories (docs/architecture.md, Reuse).
EXTERNAL_CODE_CATEGORIES = frozenset({"external_feature_reuse", "external_code_intake"})
