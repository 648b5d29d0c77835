import pytest

from semverlite.ranges import satisfies


def test_satisfies_range():
    assert satisfies("1.4.2", ">=1.2.0,<2.0.0")
    assert not satisfies("2.0.0", ">=1.2.0,<2.0.0")


def test_bare_version_means_equal():
    assert satisfies("1.0.0", "1.0.0")


def test_bad_constraint():
    with pytest.raises(ValueError, match="bad constraint"):
        satisfies("1.0.0", "~> 1")
