"""Converting values between units of the same dimension."""

from unitconv.units import lookup


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """`value` expressed in `from_unit`, converted to `to_unit`."""
    source, target = lookup(from_unit), lookup(to_unit)
    if source.dimension != target.dimension:
        raise ValueError(f"cannot convert {source.dimension} ({from_unit}) to {target.dimension} ({to_unit})")
    return value * source.factor / target.factor
