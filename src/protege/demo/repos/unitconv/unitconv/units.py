"""The unit table: each unit's dimension and how it relates to the dimension's base unit."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Unit:
    symbol: str
    dimension: str
    factor: float
    """value in base units = value * factor."""


_TABLE = [
    Unit("m", "length", 1.0),
    Unit("km", "length", 1000.0),
    Unit("cm", "length", 0.01),
    Unit("mm", "length", 0.001),
    Unit("in", "length", 0.0254),
    Unit("ft", "length", 0.3048),
    Unit("mi", "length", 1609.344),
    Unit("kg", "mass", 1.0),
    Unit("g", "mass", 0.001),
    Unit("lb", "mass", 0.45359237),
    Unit("oz", "mass", 0.028349523125),
    Unit("s", "time", 1.0),
    Unit("min", "time", 60.0),
    Unit("h", "time", 3600.0),
    Unit("K", "temperature", 1.0),
    Unit("degC", "temperature", 1.0),
    Unit("degF", "temperature", 5 / 9),
]
UNITS = {unit.symbol: unit for unit in _TABLE}


def lookup(symbol: str) -> Unit:
    """The unit written `symbol` (case-sensitive: 'mm' is not 'Mm')."""
    try:
        return UNITS[symbol]
    except KeyError:
        raise ValueError(f"unknown unit {symbol!r}") from None
