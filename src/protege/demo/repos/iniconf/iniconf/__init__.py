"""A small INI parser with typed accessors."""

from iniconf.config import Config
from iniconf.errors import ParseError
from iniconf.parser import parse

__all__ = ["Config", "ParseError", "parse"]
__version__ = "1.0.0"
