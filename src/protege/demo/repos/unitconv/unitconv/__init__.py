"""Convert between units of length, mass, time and temperature."""

from unitconv.convert import convert

__all__ = ["convert"]
__version__ = "1.0.0"
