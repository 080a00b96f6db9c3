"""Normalising text before it is counted."""

from __future__ import annotations

import string


def lower(text: str) -> str:
    """`text` in lower case."""
    return text.lower()


def strip_whitespace(text: str) -> str:
    """`text` without leading/trailing whitespace, inner runs collapsed to one space."""
    return " ".join(text.split())


def strip_punctuation(text: str) -> str:
    """`text` without ASCII punctuation; letters, digits and whitespace are kept."""
    return "".join(ch for ch in text if ch not in string.punctuation)
