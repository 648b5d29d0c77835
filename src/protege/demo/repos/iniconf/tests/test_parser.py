import pytest

from iniconf.errors import ParseError
from iniconf.parser import parse


def test_sections_and_keys():
    text = "[server]\nhost = example.org\nport=8080\n"
    assert parse(text)["server"] == {"host": "example.org", "port": "8080"}


def test_keys_before_first_section_go_to_default():
    assert parse("name = demo\n[a]\nx = 1\n")["DEFAULT"] == {"name": "demo"}


def test_comments_and_blank_lines_are_ignored():
    text = "# comment\n\n; another\n[a]\nx = 1\n"
    assert parse(text) == {"DEFAULT": {}, "a": {"x": "1"}}


def test_keys_are_lower_cased():
    assert parse("[a]\nUser = Ann\n")["a"] == {"user": "Ann"}


def test_line_without_equals_sign_is_an_error():
    with pytest.raises(ParseError, match="line 2"):
        parse("[a]\njust some words\n")


def test_unterminated_section_header_is_an_error():
    with pytest.raises(ParseError, match="unterminated"):
        parse("[a\nx = 1\n")
