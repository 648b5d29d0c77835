"""Parsing quantities written as text, such as '5 km' or '-3.5degC'."""

import re

from unitconv.convert import convert

_QUANTITY = re.compile(r"^\s*(?P<value>[-+]?\d+(?:\.\d+)?)\s*(?P<unit>[A-Za-z]+)\s*$")


def parse_quantity(text: str) -> tuple[float, str]:
    """(value, unit symbol) from text like '5 km'."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return float(match["value"]), match["unit"]


def convert_text(text: str, to_unit: str) -> float:
    """Convert a quantity written as text, e.g. convert_text('5 km', 'm') == 5000.0."""
    value, unit = parse_quantity(text)
    return convert(value, unit, to_unit)
