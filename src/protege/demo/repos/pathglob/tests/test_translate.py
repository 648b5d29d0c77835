from pathglob.translate import translate


def test_regex_is_anchored_at_the_end():
    assert translate("*.py").match("a.pyc") is None


def test_special_characters_are_escaped():
    assert translate("a+b(1).txt").match("a+b(1).txt")


def test_negated_class_never_matches_slash():
    assert translate("a[!x]b").match("a/b") is None
