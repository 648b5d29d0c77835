"""Word and sentence statistics for plain text."""

from textstats.stats import mean_sentence_length, mean_word_length, top_words, word_count
from textstats.tokenize import sentences, words

__all__ = ["mean_sentence_length", "mean_word_length", "sentences", "top_words", "word_count", "words"]
__version__ = "1.0.0"
