"""Currencies and their minor units (ISO 4217)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Currency:
    code: str
    symbol: str
    minor_units: int
    """Digits after the decimal point in the currency's smallest unit (cents: 2, yen: 0)."""


CURRENCIES = {
    currency.code: currency
    for currency in (
        Currency("USD", "$", 2),
        Currency("EUR", "€", 2),
        Currency("GBP", "£", 2),
        Currency("JPY", "¥", 0),
        Currency("KWD", "KD ", 3),
    )
}


def get_currency(code: str) -> Currency:
    """The currency with ISO code `code` (case-insensitive)."""
    try:
        return CURRENCIES[code.upper()]
    except KeyError:
        raise ValueError(f"unknown currency {code!r}") from None
