"""Human-readable money strings."""

from moneyfmt.money import Money


def format_money(money: Money, *, symbol: bool = True, thousands: str = ",") -> str:
    """E.g. '$1,234.50' or '1,234.50 USD'; rounded to the currency's smallest unit.

    Negative amounts get a leading '-'. `thousands` replaces the ',' group separator.
    """
    value = money.rounded().amount
    sign = "-" if value < 0 else ""
    digits = f"{abs(value):,.2f}".replace(",", thousands)
    if symbol:
        return f"{sign}{money.currency.symbol}{digits}"
    return f"{sign}{digits} {money.currency.code}"
