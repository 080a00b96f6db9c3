from textstats.normalize import lower, strip_punctuation, strip_whitespace


def test_lower() -> None:
    assert lower("Hello WORLD") == "hello world"


def test_strip_whitespace_collapses_inner_runs() -> None:
    assert strip_whitespace("  hello \t  world \n") == "hello world"


def test_strip_punctuation_removes_punctuation() -> None:
    assert strip_punctuation("Hello, world!") == "Hello world"


def test_strip_punctuation_keeps_digits() -> None:
    assert strip_punctuation("Version 2.0, final!") == "Version 20 final"
