import pytest

from unitconv.convert import convert


def test_length():
    assert convert(5, "km", "m") == 5000.0
    assert convert(1, "mi", "km") == pytest.approx(1.609344)


def test_mass():
    assert convert(1, "lb", "oz") == pytest.approx(16.0)


def test_time():
    assert convert(90, "min", "h") == 1.5


def test_same_unit_is_identity():
    assert convert(37.5, "degC", "degC") == pytest.approx(37.5)


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="cannot convert length"):
        convert(1, "m", "kg")


def test_unknown_unit():
    with pytest.raises(ValueError, match="unknown unit 'parsec'"):
        convert(1, "parsec", "m")
