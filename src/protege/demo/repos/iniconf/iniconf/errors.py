"""Errors raised by iniconf."""


class ParseError(ValueError):
    """A line of an INI document could not be parsed; `lineno` is 1-based."""

    def __init__(self, lineno: int, message: str):
        super().__init__(f"line {lineno}: {message}")
        self.lineno = lineno
