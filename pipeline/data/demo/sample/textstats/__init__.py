"""textstats: small helpers to count and normalise text."""

from textstats.counting import char_count, word_count
from textstats.normalize import lower, strip_punctuation, strip_whitespace

__all__ = ["char_count", "lower", "strip_punctuation", "strip_whitespace", "word_count"]
