"""Typed read access to a parsed INI document."""

from iniconf.parser import DEFAULT_SECTION, parse

TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "no", "false", "off"})


class Config:
    """Sections of an INI document; DEFAULT values are visible from every section."""

    def __init__(self, sections: dict[str, dict[str, str]]):
        self._sections = sections

    @classmethod
    def from_string(cls, text: str) -> "Config":
        return cls(parse(text))

    def sections(self) -> list[str]:
        """Section names in document order, DEFAULT excluded."""
        return [name for name in self._sections if name != DEFAULT_SECTION]

    def get(self, section: str, key: str, fallback: str | None = None) -> str | None:
        """The value of `key` in `section`, else in DEFAULT, else `fallback`."""
        key = key.lower()
        for name in (section, DEFAULT_SECTION):
            values = self._sections.get(name, {})
            if key in values:
                return values[key]
        return fallback

    def getint(self, section: str, key: str, fallback: int | None = None) -> int | None:
        value = self.get(section, key)
        return fallback if value is None else int(value)

    def getbool(self, section: str, key: str, fallback: bool | None = None) -> bool | None:
        value = self.get(section, key)
        if value is None:
            return fallback
        word = value.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(f"[{section}] {key}: not a boolean: {value!r}")
