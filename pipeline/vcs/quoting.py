"""git's C-style quoting of path names, decoded in one place for the gate and the adapter.

git quotes a path that holds a double quote, a backslash, a control character or (with the
default core.quotePath) any byte outside printable ASCII: the name goes between double
quotes, with `\\a \\b \\t \\n \\v \\f \\r \\" \\\\` and a three-digit octal escape for every other
byte. Anything else after a backslash is not git's output, so it is refused, not guessed.
"""

from __future__ import annotations

import re

_ESCAPES = {ord(k): v for k, v in zip("abtnvfr\"\\", (7, 8, 9, 10, 11, 12, 13, 34, 92), strict=True)}
_OCTAL = re.compile(rb"[0-7]{3}")


def take_quoted(data: bytes) -> tuple[bytes, bytes] | None:
    """The name quoted at the start of `data` (which begins with `"`), decoded, and the bytes
    after its closing quote; None when the quoting is malformed or never closed."""
    out = bytearray()
    i = 1
    while i < len(data):
        ch = data[i]
        if ch == 0x22:  # the closing quote
            return bytes(out), data[i + 1 :]
        if ch != 0x5C:  # not a backslash
            out.append(ch)
            i += 1
        elif data[i + 1 : i + 2] and data[i + 1] in _ESCAPES:
            out.append(_ESCAPES[data[i + 1]])
            i += 2
        elif _OCTAL.fullmatch(data[i + 1 : i + 4]):
            out.append(int(data[i + 1 : i + 4], 8) & 0xFF)
            i += 4
        else:
            return None
    return None
