"""Splitting a template into literal text and `{{ expression }}` placeholders."""

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")


class TemplateSyntaxError(ValueError):
    """The template is malformed."""


@dataclass(frozen=True)
class Token:
    kind: str
    """"text" for literal text, "var" for a placeholder."""
    value: str
    """The literal text, or the placeholder's expression without braces and outer spaces."""


def tokenize(template: str) -> list[Token]:
    """The tokens of `template` in order; together they cover the whole template.

    No empty text tokens are produced (e.g. between two adjacent placeholders).
    """
    tokens = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > position:
            tokens.append(Token("text", template[position : match.start()]))
        if not match.group(1):
            raise TemplateSyntaxError(f"empty placeholder at offset {match.start()}")
        tokens.append(Token("var", match.group(1)))
        position = match.end()
    return tokens
