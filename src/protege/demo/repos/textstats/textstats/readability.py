"""Reading-time estimates."""

from textstats.stats import word_count

DEFAULT_WORDS_PER_MINUTE = 200


def reading_time_minutes(text: str, words_per_minute: int = DEFAULT_WORDS_PER_MINUTE) -> float:
    """Minutes an average reader needs for `text`."""
    if words_per_minute <= 0:
        raise ValueError(f"words_per_minute must be positive, got {words_per_minute}")
    return word_count(text) / words_per_minute
