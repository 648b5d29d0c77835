import pytest

from minitemplate.lexer import TemplateSyntaxError, Token, tokenize


def test_text_then_placeholder():
    assert tokenize("Hello {{ name }}") == [Token("text", "Hello "), Token("var", "name")]


def test_adjacent_placeholders_have_no_empty_text():
    assert tokenize("{{a}}{{ b }}") == [Token("var", "a"), Token("var", "b")]


def test_filters_stay_in_the_expression():
    assert tokenize("{{ name|upper }}") == [Token("var", "name|upper")]


def test_empty_placeholder_is_an_error():
    with pytest.raises(TemplateSyntaxError, match="offset 3"):
        tokenize("Hi {{ }}")
