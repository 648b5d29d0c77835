from decimal import Decimal

import pytest

from moneyfmt.money import Money


def test_of_refuses_floats():
    with pytest.raises(TypeError, match="float"):
        Money.of(0.1, "USD")


def test_unknown_currency():
    with pytest.raises(ValueError, match="XYZ"):
        Money.of("1", "XYZ")


def test_add_same_currency():
    assert (Money.of("0.10", "EUR") + Money.of("0.20", "EUR")).amount == Decimal("0.30")


def test_add_different_currencies_is_an_error():
    with pytest.raises(ValueError, match="cannot add"):
        Money.of("1", "EUR") + Money.of("1", "USD")


def test_rounded_half_up():
    assert Money.of("2.675", "USD").rounded().amount == Decimal("2.68")


def test_allocate_loses_nothing():
    parts = Money.of("100", "USD").allocate([1, 1, 1])
    assert [p.amount for p in parts] == [Decimal("33.34"), Decimal("33.33"), Decimal("33.33")]
