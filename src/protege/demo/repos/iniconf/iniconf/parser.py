"""Parse INI text into nested dicts: {section: {key: value}}."""

from iniconf.errors import ParseError

COMMENT_PREFIXES = ("#", ";")
DEFAULT_SECTION = "DEFAULT"


def parse(text: str) -> dict[str, dict[str, str]]:
    """Parse INI `text`.

    Keys before any section header go to DEFAULT_SECTION. Keys are lower-cased; values keep
    their case and lose surrounding whitespace. A repeated key overrides the earlier one.
    """
    sections: dict[str, dict[str, str]] = {DEFAULT_SECTION: {}}
    current = DEFAULT_SECTION
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(COMMENT_PREFIXES):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ParseError(lineno, f"unterminated section header {line!r}")
            current = line[1:-1].strip()
            if not current:
                raise ParseError(lineno, "empty section name")
            sections.setdefault(current, {})
            continue
        parts = line.split("=")
        if len(parts) != 2:
            raise ParseError(lineno, f"expected 'key = value', got {line!r}")
        key, value = parts[0].strip(), parts[1].strip()
        if not key:
            raise ParseError(lineno, "empty key")
        sections[current][key.lower()] = value
    return sections
