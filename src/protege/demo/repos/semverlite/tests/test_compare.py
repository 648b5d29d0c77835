from semverlite.compare import compare, max_version, sort_versions


def test_sort_releases_numerically():
    assert sort_versions(["1.10.0", "1.2.0", "1.9.1"]) == ["1.2.0", "1.9.1", "1.10.0"]


def test_compare():
    assert compare("2.0.0", "1.99.99") == 1
    assert compare("1.0.0+x", "1.0.0") == 0


def test_max_version_skips_prereleases_by_default():
    assert max_version(["1.0.0", "1.1.0-beta", "0.9.0"]) == "1.0.0"


def test_max_version_of_nothing():
    assert max_version([]) is None
