"""Splitting text into words and sentences."""

import re

# A word is a run of letters or digits; an apostrophe or hyphen inside it keeps it whole
# ("don't", "well-known").
_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")


def words(text: str) -> list[str]:
    """The words of `text`, in order."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """The sentences of `text`: split after '.', '!' or '?' followed by whitespace."""
    parts = _SENTENCE_BREAK.split(text.strip())
    return [part for part in parts if part]
