from moneyfmt.format import format_money
from moneyfmt.money import Money


def test_format_with_symbol_and_thousands():
    assert format_money(Money.of("1234567.5", "USD")) == "$1,234,567.50"


def test_format_negative():
    assert format_money(Money.of("-3.2", "EUR")) == "-€3.20"


def test_format_with_code_and_custom_separator():
    assert format_money(Money.of("1234.5", "GBP"), symbol=False, thousands=" ") == "1 234.50 GBP"
