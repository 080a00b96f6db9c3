from textstats.counting import char_count, word_count


def test_word_count_splits_on_any_whitespace() -> None:
    assert word_count("the quick\tbrown\nfox") == 4


def test_word_count_of_empty_text_is_zero() -> None:
    assert word_count("") == 0
    assert word_count("   ") == 0


def test_char_count_includes_spaces_by_default() -> None:
    assert char_count("a b c") == 5


def test_char_count_without_spaces() -> None:
    assert char_count("a b\tc", include_spaces=False) == 3
