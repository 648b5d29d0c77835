"""Exact money amounts with a currency."""

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from moneyfmt.currency import Currency, get_currency

CENT = Decimal("0.01")


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: Currency

    @classmethod
    def of(cls, amount: str | int | Decimal, code: str) -> "Money":
        """Money from a str, int or Decimal amount (floats are refused: they are not exact)."""
        if isinstance(amount, float):
            raise TypeError("use a str or Decimal for money amounts, not float")
        return cls(Decimal(amount), get_currency(code))

    def __add__(self, other: "Money") -> "Money":
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency.code} to {self.currency.code}")
        return Money(self.amount + other.amount, self.currency)

    def rounded(self) -> "Money":
        """The amount rounded half-up to the currency's smallest unit."""
        return Money(self.amount.quantize(CENT, rounding=ROUND_HALF_UP), self.currency)

    def allocate(self, ratios: list[int]) -> list["Money"]:
        """Split into parts proportional to `ratios` in whole smallest units, losing nothing.

        Units left over after the proportional split go to the first parts, one each.
        """
        if not ratios or any(r < 0 for r in ratios) or sum(ratios) == 0:
            raise ValueError(f"ratios must be non-negative with a positive sum, got {ratios}")
        total_units = int(self.rounded().amount / CENT)
        units = [total_units * ratio // sum(ratios) for ratio in ratios]
        for index in range(total_units - sum(units)):
            units[index] += 1
        return [Money(count * CENT, self.currency) for count in units]
