"""The published task schemas, each normalised into one `TaskInstance` row.

Rows come in three published shapes, told apart by their columns (a swebench task-repo directory holds
swebench 5.x rows):

| schema | columns that identify it | what normalising does |
|---|---|---|
| `swebench5` (swebench 5.x, SWE-bench on the hub today) | `eval_script` non-empty | nothing: the row carries its own script |
| `swebench` (classic SWE-bench, SWE-Gym, SWE-bench-extra) | `test_patch`, no `eval_script` | derives the eval script from the environment's test command and the test patch |
| `swe-smith` (SWE-smith) | `image_name`, no `test_patch` / `base_commit` | the bug branch (named like the instance) is the start, the fix is the bug patch reversed, the eval script runs the FAIL_TO_PASS files and PASS_TO_PASS keeps the tests in those files (SWE-smith's own grading) |

The eval script of a classic row is built from swebench 5.0.2's own pieces wherever it has them:
`swebench.utils.get_modified_files` (the test files to reset), `swebench.utils.generate_heredoc_delimiter`,
the `>>>>> Start/End Test Output` markers and `NON_TEST_EXTS` of `swebench.harness.constants`, and
`swebench.types.TestSpec.eval_script` to render the list (header included). swebench 5.0.0 dropped the
function that composed them (`make_eval_script_list_py` and its per-repo spec tables moved to the
swe-bench-tasks repository); the composition here keeps 4.x's order: reset the test files, apply the
test patch, run the tests between the markers, reset them again. The test command and any setup lines are
`EvalCommands`: by default `python -m pytest -rA`, whose `python` is the task environment's (the sandbox
puts that environment first on PATH).

A row that cannot be normalised raises `RowRefused(field, reason)`: the loader turns it into one line
naming the row, the instance, the field and why.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from protege.patches import PatchError, reversed_patch, touched_files

TESTBED = "/testbed"
DEFAULT_TEST_COMMAND = "python -m pytest -rA -p no:cacheprovider"
"""`-rA` prints one `PASSED path::test` / `FAILED path::test` line per test: what parse_log_pytest reads."""
DEFAULT_LOG_PARSER = "parse_log_pytest"


class RowRefused(ValueError):
    """A row that cannot become a task instance: which field, and why (one line)."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(frozen=True)
class EvalCommands:
    """What a task's environment contributes to a derived eval script."""

    test_command: str = DEFAULT_TEST_COMMAND
    """The command the test files are appended to; its output must suit `log_parser`."""
    setup: tuple[str, ...] = ()
    """Lines run in /testbed before the tests (e.g. activating a prebuilt environment)."""
    log_parser: str = DEFAULT_LOG_PARSER
    """Key of swebench's PARSER_REGISTRY for the test command's output."""


@dataclass
class Normalised:
    """A row in TaskInstance's columns, and the schema it was read as."""

    row: dict[str, Any]
    schema: str


def detect_schema(row: dict[str, Any]) -> str:
    """Which published schema `row` is in (see the module table); raises RowRefused when none fits."""
    if str(row.get("eval_script") or "").strip():
        return "swebench5"
    if "test_patch" in row or "base_commit" in row:
        return "swebench"
    if "image_name" in row:
        return "swe-smith"
    raise RowRefused(
        "(row)",
        "no eval_script, test_patch or image_name column: not a swebench 5.x, SWE-bench/SWE-Gym or SWE-smith row",
    )


def normalise_row(row: dict[str, Any], env: EvalCommands | None = None) -> Normalised:
    """`row` in TaskInstance's columns; `env` supplies the test command where a script must be derived."""
    env = env or EvalCommands()
    schema = detect_schema(row)
    if schema == "swebench5":
        return Normalised(dict(row), schema)
    if schema == "swebench":
        return Normalised(_classic(row, env), schema)
    return Normalised(_swe_smith(row, env), schema)


# --------------------------------------------------------------------------------------------------
# Classic SWE-bench / SWE-Gym
# --------------------------------------------------------------------------------------------------


def test_directives(test_patch: str) -> list[str]:
    """The test files a test patch touches, data files left out (swebench 4.x `get_test_directives`)."""
    from swebench.harness.constants import NON_TEST_EXTS

    try:
        paths = touched_files(test_patch)
    except PatchError as err:
        raise RowRefused("test_patch", str(err)) from None
    return [path for path in paths if not any(path.endswith(ext) for ext in NON_TEST_EXTS)]


def classic_eval_lines(base_commit: str, test_patch: str, env: EvalCommands) -> list[str]:
    """The eval script's commands (no header) for a classic row: reset, apply, test, reset."""
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT
    from swebench.utils import generate_heredoc_delimiter, get_modified_files

    directives = test_directives(test_patch)
    if not directives:
        raise RowRefused("test_patch", "touches no test file (only data files); nothing to run")
    existing = get_modified_files(test_patch)  # files the patch changes, not creates: restorable
    reset = [f"git checkout {base_commit} {' '.join(existing)}"] if existing else []
    body = test_patch.removesuffix("\n")
    delimiter = generate_heredoc_delimiter(body)
    return [
        f"cd {TESTBED}",
        *env.setup,
        *reset,
        f"git apply -v - <<'{delimiter}'\n{body}\n{delimiter}",
        f": '{START_TEST_OUTPUT}'",
        " ".join([env.test_command, *(shlex.quote(d) for d in directives)]),
        f": '{END_TEST_OUTPUT}'",
        *reset,
    ]


def render_eval_script(row: dict[str, Any], lines: list[str]) -> str:
    """`lines` as swebench renders an eval script (`TestSpec.eval_script`: shebang, `set -uxo pipefail`)."""
    from swebench.types import TestSpec

    spec = TestSpec(
        instance_id=str(row.get("instance_id", "")),
        image=str(row.get("image", "")),
        eval_script_list=lines,
        repo=str(row.get("repo", "")),
        version=str(row.get("version", "")),
        FAIL_TO_PASS=[],
        PASS_TO_PASS=[],
    )
    return spec.eval_script


def _required_text(row: dict[str, Any], name: str, why: str) -> str:
    value = row.get(name)
    if name not in row or value is None:
        raise RowRefused(name, "missing required field")
    if not isinstance(value, str) or not value.strip():
        raise RowRefused(name, f"is empty; {why}")
    return value


def _classic(row: dict[str, Any], env: EvalCommands) -> dict[str, Any]:
    why = "a classic SWE-bench row needs it to derive the eval script"
    base_commit = _required_text(row, "base_commit", why)
    test_patch = row.get("test_patch")
    if not isinstance(test_patch, str) or not test_patch.strip():
        state = "empty" if "eval_script" in row else "missing"
        raise RowRefused("eval_script", f"{state}, and no test_patch to derive it from")
    if "diff --git " not in test_patch:
        raise RowRefused("test_patch", "is not a git unified diff (no 'diff --git' header)")
    out = dict(row)
    out["eval_script"] = render_eval_script(row, classic_eval_lines(base_commit, test_patch, env))
    out["log_parser"] = env.log_parser
    out["eval_type"] = "pass_and_fail"
    return out


# --------------------------------------------------------------------------------------------------
# SWE-smith
# --------------------------------------------------------------------------------------------------


def _test_ids(value: Any) -> list[str]:
    import json

    tests = json.loads(value) if isinstance(value, str) else list(value or [])
    return [str(t) for t in tests]


def f2p_files(fail_to_pass: Any) -> list[str]:
    """The test files FAIL_TO_PASS names (`path::test` ids), in first-seen order (SWE-smith's test command)."""
    return list(dict.fromkeys(t.split("::", 1)[0] for t in _test_ids(fail_to_pass)))


def smith_eval_lines(fail_to_pass: Any, env: EvalCommands) -> list[str]:
    """Run the FAIL_TO_PASS files between the markers (SWE-smith applies no test patch)."""
    from swebench.harness.constants import END_TEST_OUTPUT, START_TEST_OUTPUT

    files = f2p_files(fail_to_pass)
    if not files:
        raise RowRefused("FAIL_TO_PASS", "empty; a SWE-smith row's tests are the FAIL_TO_PASS files")
    return [
        f"cd {TESTBED}",
        *env.setup,
        f": '{START_TEST_OUTPUT}'",
        " ".join([env.test_command, *(shlex.quote(f) for f in files)]),
        f": '{END_TEST_OUTPUT}'",
    ]


def _swe_smith(row: dict[str, Any], env: EvalCommands) -> dict[str, Any]:
    instance_id = _required_text(row, "instance_id", "it also names the bug branch")
    bug_patch = _required_text(row, "patch", "SWE-smith's patch introduces the bug; its reverse is the fix")
    out = dict(row)
    # SWE-smith's harness checks out the branch named like the instance (the bug applied) in its mirror
    # repository, and grades a fix by reverting the bug patch.
    out["base_commit"] = instance_id
    # The bug commit's parent is the fixed code: the agent must not be able to `git show HEAD^` it.
    out["history"] = "none"
    try:
        out["patch"] = reversed_patch(bug_patch)
    except PatchError as err:
        raise RowRefused("patch", str(err)) from None
    out["test_patch"] = ""
    out["image"] = str(row.get("image_name") or "")
    out["eval_script"] = render_eval_script(out, smith_eval_lines(row.get("FAIL_TO_PASS"), env))
    # Only the FAIL_TO_PASS files run, so PASS_TO_PASS keeps the tests in them (as SWE-smith's grading filters
    # them); a test in a file that never runs would otherwise count as broken.
    files = tuple(f + "::" for f in f2p_files(row.get("FAIL_TO_PASS")))
    out["PASS_TO_PASS"] = [t for t in _test_ids(row.get("PASS_TO_PASS")) if t.startswith(files)]
    out["log_parser"] = env.log_parser
    out["eval_type"] = "pass_and_fail"
    return out
