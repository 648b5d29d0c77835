"""Matching versions against comma-separated constraints such as '>=1.2.0,<2.0.0'."""

import re

from semverlite.compare import compare

_CONSTRAINT = re.compile(r"^(?P<op>>=|<=|==|!=|>|<)?\s*(?P<version>\S+)$")
_OPERATORS = {
    ">=": lambda c: c >= 0,
    "<=": lambda c: c <= 0,
    ">": lambda c: c > 0,
    "<": lambda c: c < 0,
    "==": lambda c: c == 0,
    "!=": lambda c: c != 0,
}


def satisfies(version: str, spec: str) -> bool:
    """True when `version` meets every constraint of `spec` (no operator means '==')."""
    for part in spec.split(","):
        match = _CONSTRAINT.match(part.strip())
        if not match:
            raise ValueError(f"bad constraint {part!r} in {spec!r}")
        if not _OPERATORS[match["op"] or "=="](compare(version, match["version"])):
            return False
    return True
