from textstats.tokenize import sentences, words


def test_words_basic():
    assert words("The cat sat.") == ["The", "cat", "sat"]


def test_words_keep_contractions_and_hyphens():
    assert words("Don't over-think it") == ["Don't", "over-think", "it"]


def test_sentences_split_on_terminators():
    assert sentences("One. Two! Three? Four") == ["One.", "Two!", "Three?", "Four"]


def test_sentences_of_empty_text():
    assert sentences("") == []
