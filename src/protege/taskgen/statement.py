"""Problem statements written from a failing test run, with no text of the gold patch in them.

The statement is what a user would file after running the tests: which test fails, the error pytest
printed for it (its `E` lines, else its short-summary line) and the test's own source. Nothing of the
code under test is quoted, and any line that still contains a changed line of the gold patch (an
exception message can echo code) is dropped, so the fix is never in the text.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

MAX_ERROR_LINES = 12
MAX_TEST_LINES = 40
MAX_OTHERS = 5
_SECTION = re.compile(r"^_{3,} (?P<name>\S+) _{3,}$", re.M)
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")  # object reprs: the same failure reads the same every run
# pytest shortens a long repr in the middle ("<object obje...7f00f3d4d790>"), which can cut the 0x off: the
# hex tail after the ellipsis is the address all the same.
_CUT_ADDRESS = re.compile(r"\.\.\.[0-9a-fA-F]{8,}\b")
_END = re.compile(r"^(={3,} .* ={3,}|-{3,} .* -{3,})$", re.M)


def changed_lines(patch: str) -> list[str]:
    """The stripped text of every added or removed line of a unified diff (headers excluded)."""
    lines = []
    for line in patch.splitlines():
        if line.startswith(("+++", "---")) or not line.startswith(("+", "-")):
            continue
        text = line[1:].strip()
        if text:
            lines.append(text)
    return lines


def _unaddressed(line: str) -> str:
    """`line` with object addresses masked, so the same failure reads the same on every run."""
    return _CUT_ADDRESS.sub("...", _ADDRESS.sub("0x...", line))


def error_lines(output: str, test: str) -> list[str]:
    """pytest's `E` lines for `test` (a node id) from a `-rA` run's failure section, else its summary."""
    name = test.split("::", 1)[1].replace("::", ".") if "::" in test else test
    for match in _SECTION.finditer(output):
        if match.group("name") != name:
            continue
        rest = output[match.end() :]
        end = min((m.start() for m in (_SECTION.search(rest), _END.search(rest)) if m), default=len(rest))
        lines = [_unaddressed(line) for line in rest[:end].splitlines() if line.startswith("E ")]
        if lines:
            return lines[:MAX_ERROR_LINES]
    summary = [
        line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR ")) and test in line
    ]
    return summary[:1]


def test_source(tree: Path, test: str) -> str:
    """The source of the test function `test` names (path::[Class::]function), or '' if not found."""
    path, _, qualname = test.partition("::")
    try:
        source = (tree / path).read_text(encoding="utf-8")
        module = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return ""
    node: ast.AST = module
    for part in re.sub(r"\[.*\]$", "", qualname).split("::"):
        node = next(
            (
                c
                for c in ast.iter_child_nodes(node)
                if getattr(c, "name", None) == part and hasattr(c, "body")
            ),
            None,
        )
        if node is None:
            return ""
    lines = ast.get_source_segment(source, node, padded=True) or ""
    return "\n".join(lines.splitlines()[:MAX_TEST_LINES])


def problem_statement(failing: list[str], output: str, tree: Path, gold_patch: str) -> str:
    """An issue text for a task whose FAIL_TO_PASS tests are `failing`, from the output of the run
    where they failed and the test files in `tree`; lines echoing the gold patch are dropped."""
    first = failing[0]
    parts = [
        f"`{first}` fails." if len(failing) == 1 else f"{len(failing)} tests fail, among them `{first}`."
    ]
    errors = error_lines(output, first)
    if errors:
        parts.append("pytest says:\n\n```\n" + "\n".join(errors) + "\n```")
    source = test_source(tree, first)
    if source:
        parts.append(f"The failing test (not in the repository yet):\n\n```python\n{source}\n```")
    others = failing[1 : 1 + MAX_OTHERS]
    if others:
        more = len(failing) - 1 - len(others)
        listed = "\n".join(f"- `{test}`" for test in others) + (f"\n- and {more} more" if more > 0 else "")
        parts.append(f"Also failing:\n{listed}")
    parts.append(
        "The behaviour the tests describe is the intended one; the code should be fixed, not the tests."
    )
    return redact("\n\n".join(parts) + "\n", gold_patch)


def redact(text: str, gold_patch: str) -> str:
    """`text` without any line containing a changed line of `gold_patch`."""
    gold = [line for line in changed_lines(gold_patch) if len(line) >= 4]
    return "\n".join(line for line in text.split("\n") if not any(g in line for g in gold))
