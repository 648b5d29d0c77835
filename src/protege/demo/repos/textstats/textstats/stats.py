"""Statistics over the words and sentences of a text."""

from collections import Counter

from textstats.tokenize import sentences, words


def word_count(text: str) -> int:
    """Number of words in `text`."""
    return len(words(text))


def mean_word_length(text: str) -> float:
    """Average number of characters per word; 0.0 for a text without words."""
    tokens = words(text)
    if not tokens:
        return 0.0
    return sum(len(token) for token in tokens) / len(tokens)


def mean_sentence_length(text: str) -> float:
    """Average number of words per sentence."""
    parts = sentences(text)
    return sum(len(words(part)) for part in parts) / len(parts)


def top_words(text: str, n: int = 3, *, ignore_case: bool = True) -> list[tuple[str, int]]:
    """The `n` most frequent words and their counts, most frequent first (ties: first seen first)."""
    tokens = words(text)
    if ignore_case:
        tokens = [token.lower() for token in tokens]
    return Counter(tokens).most_common(n)
