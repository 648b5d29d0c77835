"""Tools (METHOD §1): every tool's semantics and every misuse as a readable observation, never a crash."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from protege.agent.expert import ExpertService, ExpertSession
from protege.agent.protocols import Sandbox
from protege.agent.sandbox import open_sandbox
from protege.agent.tools import TOOL_SCHEMAS, ToolBox, ToolError, added_files, drop_files, resolve_path
from protege.config import ExpertConfig, SandboxConfig
from protege.tasks import TaskInstance
from protege.trajectory import ToolCall

A_PY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
FILES = {
    "a.py": A_PY,
    "pkg/__init__.py": "",
    "pkg/sub/deep/x.py": "X = 1\n",
    ".hidden/secret.txt": "hidden\n",
    "tests/test_a.py": "from a import add\n",
}
TEST_PATCH = """\
diff --git a/tests/test_new.py b/tests/test_new.py
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/tests/test_new.py
@@ -0,0 +1 @@
+def test_new(): pass
"""
GOLD_PATCH = """\
diff --git a/a.py b/a.py
--- a/a.py
+++ b/a.py
@@ -1,2 +1,2 @@
 def add(a, b):
-    return a - b
+    return a + b
"""


def _git(cwd: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**env, "PATH": "/usr/bin:/bin"},
    ).stdout


def make_repo(root: Path) -> str:
    """A tiny git repo with FILES committed; returns the commit id."""
    root.mkdir(parents=True)
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "base")
    return _git(root, "rev-parse", "HEAD").strip()


def make_task(commit: str) -> TaskInstance:
    return TaskInstance(
        instance_id="toy__calc-1",
        repo="toy/calc",
        base_commit=commit,
        problem_statement="add() subtracts",
        patch=GOLD_PATCH,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=["tests/test_new.py::test_new"],
    )


@contextmanager
def open_toy(tmp_path: Path) -> Iterator[tuple[Sandbox, TaskInstance]]:
    """The toy repository in a real local (bubblewrap) sandbox, and its task."""
    repos = tmp_path / "repos"
    task = make_task(make_repo(repos / "toy__calc"))
    sandbox = open_sandbox(SandboxConfig(command_timeout_s=30), task, repos)
    try:
        yield sandbox, task
    finally:
        sandbox.close()


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[tuple[Sandbox, TaskInstance]]:
    with open_toy(tmp_path) as pair:
        yield pair


def oracle(tmp_path: Path, quota: int = 6) -> ExpertSession:
    """The real expert service with the offline oracle backend (free, deterministic), one episode's session."""
    cfg = ExpertConfig(backend="oracle", allow_oracle=True, model="oracle", cache_dir=str(tmp_path / "cache"))
    return ExpertService(cfg).session(quota=quota, cost_limit_usd=2.0)


def call(box: ToolBox, name: str, **arguments: Any) -> Any:
    return box.execute(ToolCall(id="c1", name=name, arguments=arguments), [], step=1)


def read(sandbox: Any, name: str) -> str:
    return sandbox.read_file(f"{sandbox.workdir}/{name}")


# --------------------------------------------------------------------------------------------------
# Schemas and helpers
# --------------------------------------------------------------------------------------------------


def test_schemas_are_openai_functions_for_the_four_tools() -> None:
    names = [s["function"]["name"] for s in TOOL_SCHEMAS]
    assert names == ["bash", "str_replace_editor", "submit", "ask_expert"]
    for schema in TOOL_SCHEMAS:
        assert schema["type"] == "function"
        assert schema["function"]["parameters"]["type"] == "object"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.py", "/testbed/a.py"),
        ("/testbed/pkg/../a.py", "/testbed/a.py"),
        ("./pkg", "/testbed/pkg"),
        ("/testbed", "/testbed"),
    ],
)
def test_resolve_path_inside(path: str, expected: str) -> None:
    assert resolve_path(path, "/testbed") == expected


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.py", "/testbed/../etc", "/testbedx/a.py", " "])
def test_resolve_path_refuses_outside(path: str) -> None:
    with pytest.raises(ToolError):
        resolve_path(path, "/testbed")


def test_added_files_and_drop_files() -> None:
    assert added_files(TEST_PATCH) == {"tests/test_new.py"}
    combined = GOLD_PATCH + TEST_PATCH
    assert drop_files(combined, {"tests/test_new.py"}) == GOLD_PATCH
    assert drop_files(combined, set()) == combined


# --------------------------------------------------------------------------------------------------
# bash
# --------------------------------------------------------------------------------------------------


def test_bash_runs_in_the_workdir_and_reports_exit_codes(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    ok = call(box, "bash", command="cat a.py | head -1; echo done")
    assert ok.observation.startswith("def add(a, b):") and "done" in ok.observation
    assert ok.exit_code == 0 and ok.error == ""
    failed = call(box, "bash", command="echo oops >&2; exit 3")
    assert failed.exit_code == 3
    assert "oops" in failed.observation and "[exit code 3]" in failed.observation
    silent = call(box, "bash", command="true")
    assert silent.observation == "(no output)"


# --------------------------------------------------------------------------------------------------
# str_replace_editor: the happy paths
# --------------------------------------------------------------------------------------------------


def test_view_file_whole_and_ranges(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    whole = call(box, "str_replace_editor", command="view", path="a.py").observation
    assert whole.splitlines()[1:] == [f"{i:6}\t{line}" for i, line in enumerate(A_PY.splitlines(), 1)]
    part = call(box, "str_replace_editor", command="view", path=f"{sandbox.workdir}/a.py", view_range=[2, 3])
    assert part.observation.splitlines()[1:] == ["     2\t    return a - b", "     3\t"]
    tail = call(box, "str_replace_editor", command="view", path="a.py", view_range=[5, -1]).observation
    assert tail.splitlines()[1:] == ["     5\tdef sub(a, b):", "     6\t    return a - b"]


def test_view_directory_two_levels_without_hidden(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    listing = call(box, "str_replace_editor", command="view", path=".").observation
    root = sandbox.workdir
    shown = set(listing.splitlines()[1:])
    assert {f"{root}/a.py", f"{root}/pkg", f"{root}/pkg/sub", f"{root}/tests/test_a.py"} <= shown
    assert f"{root}/pkg/sub/deep" not in shown  # level 3
    assert not any("/." in line for line in shown)  # hidden items (.git, .hidden) skipped


def test_create_then_view_then_undo_removes(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    created = call(box, "str_replace_editor", command="create", path="new/dir/b.py", file_text="B = 2\n")
    assert created.error == "" and "created" in created.observation
    assert read(sandbox, "new/dir/b.py") == "B = 2\n"
    undone = call(box, "str_replace_editor", command="undo_edit", path="new/dir/b.py")
    assert undone.error == ""
    assert "does not exist" in call(box, "str_replace_editor", command="view", path="new/dir/b.py").error


def test_str_replace_edits_once_shows_snippet_and_undoes(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    out = call(
        box,
        "str_replace_editor",
        command="str_replace",
        path="a.py",
        old_str="def add(a, b):\n    return a - b",
        new_str="def add(a, b):\n    return a + b",
    )
    assert out.error == ""
    assert "     2\t    return a + b" in out.observation  # the snippet, cat -n style
    assert read(sandbox, "a.py") == A_PY.replace("a - b", "a + b", 1)
    second = call(
        box, "str_replace_editor", command="str_replace", path="a.py", old_str="def sub", new_str="def minus"
    )
    assert second.error == ""
    call(box, "str_replace_editor", command="undo_edit", path="a.py")
    assert read(sandbox, "a.py") == A_PY.replace("a - b", "a + b", 1)  # per-file history: one step back
    call(box, "str_replace_editor", command="undo_edit", path="a.py")
    assert read(sandbox, "a.py") == A_PY


def test_str_replace_without_new_str_deletes(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    assert (
        call(box, "str_replace_editor", command="str_replace", path="a.py", old_str="\n\n\ndef sub").error
        == ""
    )
    assert "def sub" not in read(sandbox, "a.py")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (0, "# top\n" + A_PY),
        (2, "def add(a, b):\n    return a - b\n# top\n\n\ndef sub(a, b):\n    return a - b\n"),
        (6, A_PY + "# top\n"),
    ],
)
def test_insert(toy: tuple[Any, TaskInstance], line: int, expected: str) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    out = call(box, "str_replace_editor", command="insert", path="a.py", insert_line=line, new_str="# top")
    assert out.error == "" and "has been edited" in out.observation
    assert read(sandbox, "a.py") == expected


# --------------------------------------------------------------------------------------------------
# Every misuse is an observation
# --------------------------------------------------------------------------------------------------

MISUSES = [
    # (tool, arguments, a phrase the observation must contain)
    ("grep", {"pattern": "x"}, "unknown tool `grep`"),
    ("bash", {}, "missing required argument(s) command"),
    ("bash", {"command": "ls", "timeout": 5}, "unexpected argument(s) timeout"),
    ("bash", {"command": ["ls"]}, "`command` must be a string"),
    ("bash", {"command": "  "}, "`command` is empty"),
    ("str_replace_editor", {"path": "a.py"}, "missing required argument(s) command"),
    ("str_replace_editor", {"command": "delete", "path": "a.py"}, "unknown command `delete`"),
    ("str_replace_editor", {"command": "view", "path": "/etc/passwd"}, "outside the repository"),
    ("str_replace_editor", {"command": "view", "path": "../../etc/passwd"}, "outside the repository"),
    ("str_replace_editor", {"command": "view", "path": "nope.py"}, "does not exist"),
    (
        "str_replace_editor",
        {"command": "view", "path": "a.py", "view_range": [0, 2]},
        "start 0 must be within",
    ),
    ("str_replace_editor", {"command": "view", "path": "a.py", "view_range": [3, 99]}, "end 99 must be -1"),
    ("str_replace_editor", {"command": "view", "path": "a.py", "view_range": [1]}, "two integers"),
    (
        "str_replace_editor",
        {"command": "view", "path": "a.py", "view_range": ["1", "2"]},
        "array of integers",
    ),
    (
        "str_replace_editor",
        {"command": "view", "path": "pkg", "view_range": [1, 2]},
        "not allowed when `path` is a directory",
    ),
    ("str_replace_editor", {"command": "view", "path": "a.py", "file_text": "x"}, "not used by `view`"),
    ("str_replace_editor", {"command": "create", "path": "a.py", "file_text": "x"}, "already exists"),
    ("str_replace_editor", {"command": "create", "path": "c.py"}, "missing required argument(s) file_text"),
    (
        "str_replace_editor",
        {"command": "str_replace", "path": "a.py", "old_str": "zzz", "new_str": "y"},
        "old_str `zzz` did not appear verbatim",
    ),
    (
        "str_replace_editor",
        {"command": "str_replace", "path": "a.py", "old_str": "return a - b", "new_str": "y"},
        "Multiple occurrences of old_str `return a - b` in lines [2, 6]",
    ),
    (
        "str_replace_editor",
        {"command": "str_replace", "path": "a.py", "old_str": "", "new_str": "y"},
        "`old_str` is empty",
    ),
    ("str_replace_editor", {"command": "str_replace", "path": "pkg", "old_str": "a"}, "is a directory"),
    (
        "str_replace_editor",
        {"command": "insert", "path": "a.py", "insert_line": 7, "new_str": "x"},
        "within the file's lines [0, 6]",
    ),
    (
        "str_replace_editor",
        {"command": "insert", "path": "a.py", "insert_line": -1, "new_str": "x"},
        "invalid `insert_line` -1",
    ),
    (
        "str_replace_editor",
        {"command": "insert", "path": "a.py", "insert_line": "2", "new_str": "x"},
        "`insert_line` must be a integer",
    ),
    (
        "str_replace_editor",
        {"command": "insert", "path": "a.py", "new_str": "x"},
        "missing required argument(s) insert_line",
    ),
    ("str_replace_editor", {"command": "undo_edit", "path": "a.py"}, "no edit history for"),
    ("submit", {"patch": "x"}, "unexpected argument(s) patch"),
    ("ask_expert", {}, "missing required argument(s) question"),
    ("ask_expert", {"question": 3}, "`question` must be a string"),
    ("ask_expert", {"question": "why?"}, "no expert is available"),
]


@pytest.mark.parametrize(
    ("tool", "arguments", "phrase"), MISUSES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISUSES)]
)
def test_misuse_is_an_observation(
    toy: tuple[Any, TaskInstance], tool: str, arguments: dict, phrase: str
) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    outcome = call(box, tool, **arguments)
    assert phrase in outcome.observation
    assert outcome.error == outcome.observation
    assert not outcome.submitted
    assert read(sandbox, "a.py") == A_PY  # a rejected call changes nothing


# --------------------------------------------------------------------------------------------------
# submit and ask_expert
# --------------------------------------------------------------------------------------------------


def test_submit_returns_the_diff_without_files_the_test_patch_adds(toy: tuple[Any, TaskInstance]) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, None)
    call(
        box,
        "str_replace_editor",
        command="str_replace",
        path="a.py",
        old_str="    return a - b\n\n",
        new_str="    return a + b\n\n",
    )
    call(
        box,
        "str_replace_editor",
        command="create",
        path="tests/test_new.py",
        file_text="def test_new(): pass\n",
    )
    call(box, "str_replace_editor", command="create", path="notes.txt", file_text="mine\n")
    out = call(box, "submit")
    assert out.submitted
    assert "+    return a + b" in out.patch
    assert "b/notes.txt" in out.patch  # an added file of the agent's own stays
    assert "tests/test_new.py" not in out.patch  # the task's own test file is excluded


def test_ask_expert_wraps_guidance_and_refusals_are_plain_tool_observations(
    toy: tuple[Sandbox, TaskInstance], tmp_path: Path
) -> None:
    sandbox, task = toy
    box = ToolBox(sandbox, task, oracle(tmp_path, quota=1))
    answered = call(box, "ask_expert", question="where is the bug?")
    assert answered.provenance == "expert" and answered.error == ""
    assert answered.observation.startswith("<expert_llm_guidance>\n")
    assert answered.observation.endswith("\n</expert_llm_guidance>")
    assert "`a.py`" in answered.observation and "`add`" in answered.observation
    assert answered.expert_call is not None and answered.expert_call.question == "where is the bug?"
    refused = call(box, "ask_expert", question="again?")  # over the quota of 1
    assert refused.provenance == "tool"
    assert "quota_exceeded" in refused.observation and "quota of 1" in refused.error
    assert refused.expert_call is not None and refused.expert_call.status == "quota_exceeded"
