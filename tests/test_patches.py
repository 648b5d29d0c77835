"""protege.patches: diffs read through unidiff, hand-written hunk counts recounted, files dropped."""

from __future__ import annotations

import pytest

from protege import patches

TWO_FILES = (
    "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x = 1\n--- y = 2\n+y = 3\n"
    "diff --git a/t.py b/t.py\nnew file mode 100644\n--- /dev/null\n+++ b/t.py\n@@ -0,0 +1 @@\n+z = 0\n"
)
WRONG_COUNTS = (
    "--- a/m.py\n+++ b/m.py\n@@ -1,3 +1,6 @@\n def f():\n-    return 1\n+    x = 1\n+    return x\n"
)


def test_a_removed_line_that_looks_like_a_header_stays_a_removed_line():
    [first, created] = patches.parse(TWO_FILES)
    assert patches.changed_lines(first) == [("-", "-- y = 2"), ("+", "y = 3")]
    assert patches.touched_files(TWO_FILES) == ["a.py", "t.py"]
    assert patches.added_files(TWO_FILES) == {"t.py"} and patches.modified_files(TWO_FILES) == ["a.py"]


def test_hand_written_hunk_counts_are_recounted_like_git_apply_recount():
    assert patches.recount(WRONG_COUNTS).splitlines()[2] == "@@ -1,2 +1,3 @@"
    assert patches.added_runs(WRONG_COUNTS) == [["    x = 1", "    return x"]]


def test_dropping_files_keeps_the_rest_and_no_drop_is_byte_identical():
    assert patches.touched_files(patches.without_files(TWO_FILES, {"t.py"})) == ["a.py"]
    assert patches.without_files(TWO_FILES, {"elsewhere.py"}) is TWO_FILES


def test_text_that_is_no_diff_is_a_one_line_patch_error():
    with pytest.raises(patches.PatchError, match="not a readable unified diff"):
        patches.parse("@@ -1 +1 @@\n-x\n+y\n")  # a hunk of no file


def _first_hunk(body: str, header: str = "def sort_by(table, name):"):
    diff = f"diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -20,5 +20,5 @@ {header}\n{body}"
    return next(iter(next(iter(patches.parse(diff)))))


def test_hunk_scope_skips_a_nested_def_whose_body_ends_before_the_change():
    body = (
        "     def key(row):\n"
        "         return row[index]\n"
        " \n"
        "-    return Table(sorted(rows, key=key), header)\n"
        "+    return Table(header, sorted(rows, key=key))\n"
    )
    assert patches.hunk_scope(_first_hunk(body)) == "sort_by"


def test_hunk_scope_takes_the_closest_enclosing_def_in_the_context():
    body = (
        "     def key(row):\n"
        "         value = row[index]\n"
        "-        return value\n"
        "+        return float(value)\n"
        " \n"
    )
    assert patches.hunk_scope(_first_hunk(body)) == "key"
    assert patches.hunk_scope(_first_hunk(body.replace("def key", "x = key"), header="")) == ""
