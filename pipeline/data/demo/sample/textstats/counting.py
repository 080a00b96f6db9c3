"""Counting words and characters."""

from __future__ import annotations


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def char_count(text: str, *, include_spaces: bool = True) -> int:
    """Number of characters, optionally leaving whitespace out."""
    if include_spaces:
        return len(text)
    return sum(1 for ch in text if not ch.isspace())
