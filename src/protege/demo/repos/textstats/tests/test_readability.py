import pytest

from textstats.readability import reading_time_minutes


def test_reading_time():
    assert reading_time_minutes("word " * 400) == 2.0


def test_reading_time_rejects_zero_speed():
    with pytest.raises(ValueError, match="words_per_minute"):
        reading_time_minutes("hello", words_per_minute=0)
