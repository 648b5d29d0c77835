import pytest

from unitconv.parse import convert_text, parse_quantity


def test_parse_quantity():
    assert parse_quantity(" -3.5 ft") == (-3.5, "ft")


def test_convert_text():
    assert convert_text("2 h", "min") == 120.0


def test_not_a_quantity():
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("five km")
