"""Problem statements come from the failing run's output and never carry the gold patch's text."""

from __future__ import annotations

from pathlib import Path

from protege.taskgen.statement import changed_lines, error_lines, problem_statement

GOLD = """diff --git a/calc.py b/calc.py
--- a/calc.py
+++ b/calc.py
@@ -1,2 +1,2 @@
 def clamp(x, hi):
-    return x if x <= hi else hi
+    return x if x < hi else hi
"""
OUTPUT = """\
=================================== FAILURES ===================================
_________________________________ test_clamp __________________________________

    def test_clamp():
>       assert clamp(5, 3) == 3
E       assert 5 == 3
E        +  where 5 = clamp(5, 3)
E        +  where clamp = <calc.Clamp object at 0x7fc0f040f990>.clamp
E        +  and   memo = <tools.Memo object at 0x7f...obje...7f00f3d4d790>
E       leaked:     return x if x <= hi else hi

tests/test_calc.py:4: AssertionError
_________________________________ test_other __________________________________
E       assert 0 == 1
=========================== short test summary info ============================
FAILED tests/test_calc.py::test_clamp - assert 5 == 3
FAILED tests/test_calc.py::test_other - assert 0 == 1
PASSED tests/test_calc.py::test_fine
"""
TEST_FILE = "from calc import clamp\n\n\ndef test_clamp():\n    assert clamp(5, 3) == 3\n\n\ndef test_other():\n    assert 0 == 1\n"


def test_error_lines_are_the_failing_tests_own() -> None:
    lines = error_lines(OUTPUT, "tests/test_calc.py::test_clamp")
    assert lines[:3] == [
        "E       assert 5 == 3",
        "E        +  where 5 = clamp(5, 3)",
        "E        +  where clamp = <calc.Clamp object at 0x...>.clamp",  # the same text on every run
    ]
    # pytest's shortened repr cut the 0x off the second address: its hex tail is dropped all the same
    assert lines[3] == "E        +  and   memo = <tools.Memo object at 0x7f...obje...>"
    assert error_lines(OUTPUT, "tests/test_calc.py::test_other") == ["E       assert 0 == 1"]
    # no failure section: the short-summary line stands in
    assert error_lines("FAILED tests/t.py::test_x - boom\n", "tests/t.py::test_x") == [
        "FAILED tests/t.py::test_x - boom"
    ]


def test_statement_names_the_test_shows_its_error_and_source_and_no_gold_line(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_calc.py").write_text(TEST_FILE)
    failing = ["tests/test_calc.py::test_clamp", "tests/test_calc.py::test_other"]
    text = problem_statement(failing, OUTPUT, tmp_path, GOLD)
    assert "`tests/test_calc.py::test_clamp`" in text and "`tests/test_calc.py::test_other`" in text
    assert "E       assert 5 == 3" in text
    assert "def test_clamp():\n    assert clamp(5, 3) == 3" in text
    for line in changed_lines(GOLD):
        assert line not in text, f"gold text in the statement: {line!r}"
    assert "leaked" not in text


def test_changed_lines_skip_headers_and_context() -> None:
    assert changed_lines(GOLD) == ["return x if x <= hi else hi", "return x if x < hi else hi"]
