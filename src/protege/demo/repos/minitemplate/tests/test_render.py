import pytest

from minitemplate.lexer import TemplateSyntaxError
from minitemplate.render import UndefinedVariable, render


class User:
    def __init__(self, name):
        self.name = name


def test_render_variable():
    assert render("Hello {{ name }}", name="Ann") == "Hello Ann"


def test_dotted_lookup_in_dicts_and_objects():
    assert render("{{ a.b }}-{{ u.name }}", a={"b": 1}, u=User("Bo")) == "1-Bo"


def test_filters_apply_left_to_right():
    assert render("{{ name|trim|title }}", name="  ann lee ") == "Ann Lee"


def test_autoescape():
    assert render("{{ x }}", x="<b>") == "&lt;b&gt;"
    assert render("{{ x }}", x="<b>", autoescape=False) == "<b>"


def test_undefined_variable():
    with pytest.raises(UndefinedVariable):
        render("{{ missing }}")


def test_unknown_filter():
    with pytest.raises(TemplateSyntaxError, match="unknown filter 'shout'"):
        render("{{ name|shout }}", name="x")
