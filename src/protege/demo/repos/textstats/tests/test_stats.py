import pytest

from textstats.stats import mean_sentence_length, mean_word_length, top_words, word_count


def test_word_count():
    assert word_count("a b  c\nd") == 4


def test_mean_word_length():
    assert mean_word_length("ab abcd") == 3.0


def test_mean_word_length_without_words():
    assert mean_word_length("... !!") == 0.0


def test_mean_sentence_length():
    assert mean_sentence_length("One two three. Four five six seven!") == pytest.approx(3.5)


def test_top_words_ignores_case_by_default():
    assert top_words("The cat and the hat", 1) == [("the", 2)]


def test_top_words_case_sensitive():
    assert top_words("The cat and the hat", 1, ignore_case=False) == [("The", 1)]
