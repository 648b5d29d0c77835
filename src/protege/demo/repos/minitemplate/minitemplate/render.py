"""Rendering templates against a context."""

import html
from collections.abc import Mapping
from typing import Any

from minitemplate.filters import FILTERS
from minitemplate.lexer import TemplateSyntaxError, tokenize


class UndefinedVariable(KeyError):
    """A placeholder names a variable the context does not have."""


def _lookup(name: str, context: Mapping[str, Any]) -> Any:
    value: Any = context
    for part in name.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif not part.startswith("_") and hasattr(value, part):
            value = getattr(value, part)
        else:
            raise UndefinedVariable(name)
    return value


def _evaluate(expression: str, context: Mapping[str, Any]) -> Any:
    name, *filter_names = (part.strip() for part in expression.split("|"))
    value = _lookup(name, context)
    for filter_name in filter_names:
        if filter_name not in FILTERS:
            raise TemplateSyntaxError(f"unknown filter {filter_name!r} in {{{{ {expression} }}}}")
        value = FILTERS[filter_name](value)
    return value


def render(
    template: str, context: Mapping[str, Any] | None = None, *, autoescape: bool = True, **values: Any
) -> str:
    """`template` with each placeholder replaced by its value (HTML-escaped when `autoescape`)."""
    scope = {**(context or {}), **values}
    out = []
    for token in tokenize(template):
        if token.kind == "text":
            out.append(token.value)
            continue
        text = str(_evaluate(token.value, scope))
        out.append(html.escape(text) if autoescape else text)
    return "".join(out)
