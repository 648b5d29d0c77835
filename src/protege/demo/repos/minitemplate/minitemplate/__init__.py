"""A tiny text template engine."""

from minitemplate.lexer import TemplateSyntaxError, tokenize
from minitemplate.render import UndefinedVariable, render

__all__ = ["TemplateSyntaxError", "UndefinedVariable", "render", "tokenize"]
__version__ = "1.0.0"
