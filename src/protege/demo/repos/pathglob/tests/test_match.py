from pathglob.match import filter_paths, match, match_any


def test_literal_path():
    assert match("README.md", "README.md")
    assert not match("README.md", "readme.md")


def test_star_matches_within_a_segment():
    assert match("setup.py", "*.py")
    assert match("src/app.py", "src/*.py")


def test_question_mark_is_one_character():
    assert match("a1.txt", "a?.txt")
    assert not match("a/.txt", "a?.txt")


def test_globstar_matches_zero_or_more_directories():
    assert match("src/x.py", "src/**/x.py")
    assert match("src/a/b/x.py", "src/**/x.py")


def test_trailing_globstar_matches_everything_below():
    assert match("build/lib/a.so", "build/**")


def test_character_classes():
    assert match("file1", "file[0-9]")
    assert not match("filex", "file[0-9]")
    assert match("filex", "file[!0-9]")


def test_normalizes_separators_and_dot_prefix():
    assert match(".\\docs\\index.md", "docs/*.md")


def test_filter_and_match_any():
    assert filter_paths(["a.py", "b.txt", "c.py"], "*.py") == ["a.py", "c.py"]
    assert match_any("b.txt", ["*.py", "*.txt"])
