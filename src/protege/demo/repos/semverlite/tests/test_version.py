import pytest

from semverlite.version import Version


def test_parse_full_version():
    v = Version.parse("1.2.3-rc.1+build.7")
    assert (v.major, v.minor, v.patch, v.prerelease, v.build) == (1, 2, 3, ("rc", "1"), ("build", "7"))


def test_str_round_trip():
    assert str(Version.parse("0.9.12-beta+exp.sha.5114f85")) == "0.9.12-beta+exp.sha.5114f85"


def test_parse_rejects_leading_zero():
    with pytest.raises(ValueError, match="not a semantic version"):
        Version.parse("1.02.3")


def test_release_ordering():
    assert Version.parse("1.2.10") > Version.parse("1.2.9") > Version.parse("1.1.99")


def test_build_metadata_is_ignored_in_comparisons():
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")


def test_bump():
    assert str(Version.parse("1.4.2-rc.1").bump("minor")) == "1.5.0"
