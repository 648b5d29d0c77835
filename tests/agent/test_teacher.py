"""The oracle teacher: patch parsing, and whole episodes in a real local sandbox with the oracle expert."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from protege.agent.agent import Agent
from protege.agent.expert import ExpertService
from protege.agent.sandbox import open_sandbox
from protege.agent.teacher import (
    ASK_FIRST_QUESTION,
    NAME,
    OracleTeacher,
    parse_patch,
    pytest_counts,
    repro_script,
    search_symbol,
)
from protege.config import AgentConfig, ExpertConfig
from protege.tasks import TaskInstance

AREA = '''"""Areas of shapes."""


def rect_area(w, h):
    """Area of a w x h rectangle; negative sizes are rejected."""
    if w < 0 or h < 0:
        raise ValueError("negative size")
    return w + h


def square_area(side):
    return rect_area(side, side)
'''
TESTS = """from shapes.area import rect_area


def test_negative_rejected():
    import pytest

    with pytest.raises(ValueError):
        rect_area(-1, 2)
"""


def _diff(text: str) -> str:
    """A diff written with `|` for its blank context lines (a line holding one space)."""
    return "\n".join(" " if line == "|" else line for line in text.split("\n"))


GOLD = _diff("""diff --git a/shapes/area.py b/shapes/area.py
--- a/shapes/area.py
+++ b/shapes/area.py
@@ -5,7 +5,7 @@ def rect_area(w, h):
     \"\"\"Area of a w x h rectangle; negative sizes are rejected.\"\"\"
     if w < 0 or h < 0:
         raise ValueError("negative size")
-    return w + h
+    return w * h
|
|
 def square_area(side):
diff --git a/shapes/units.py b/shapes/units.py
new file mode 100644
--- /dev/null
+++ b/shapes/units.py
@@ -0,0 +1,2 @@
+def to_cm2(mm2):
+    return mm2 / 100
""")
TEST_PATCH = _diff("""diff --git a/tests/test_area.py b/tests/test_area.py
--- a/tests/test_area.py
+++ b/tests/test_area.py
@@ -6,3 +6,7 @@ def test_negative_rejected():
|
     with pytest.raises(ValueError):
         rect_area(-1, 2)
+
+
+def test_area_multiplies():
+    assert rect_area(2, 3) == 6
""")
ISSUE = """# `rect_area` adds the sides instead of multiplying them

>>> from shapes.area import rect_area
>>> rect_area(2, 3)
5

Expected 6. We also need a `to_cm2` helper in a new `shapes/units.py`.
"""


def make_repo(repos: Path, area: str = AREA) -> str:
    """A git repository `acme__shapes` under `repos`; returns its HEAD commit."""
    root = repos / "acme__shapes"
    (root / "shapes").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "shapes" / "__init__.py").write_text("")
    (root / "shapes" / "area.py").write_text(area)
    (root / "tests" / "test_area.py").write_text(TESTS)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run([*git, "-C", str(root), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(root), "commit", "-qm", "init"], check=True)
    return subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def make_task(base_commit: str) -> TaskInstance:
    return TaskInstance(
        instance_id="acme__shapes-1",
        repo="acme/shapes",
        base_commit=base_commit,
        problem_statement=ISSUE,
        patch=GOLD,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=["tests/test_area.py::test_area_multiplies"],
        PASS_TO_PASS=["tests/test_area.py::test_negative_rejected"],
    )


def run_episode(
    tmp_path: Path, area: str = AREA, attempt: int = 0, reasoning: bool = True, plan: str = "explore"
) -> tuple:
    """One teacher episode; returns (trajectory, final area.py, units.py exists)."""
    repos = tmp_path / f"repos-{attempt}"
    task = make_task(make_repo(repos, area))
    cfg = AgentConfig(step_limit=30)
    expert = ExpertService(
        ExpertConfig(backend="oracle", allow_oracle=True, model="oracle", gold_patch=True, cache_mode="off")
    )
    with open_sandbox(cfg.sandbox, task, repos) as sandbox:
        agent = Agent(
            cfg,
            OracleTeacher(task, attempt, reasoning=reasoning, plan=plan),
            sandbox,
            task,
            expert.session(6, 2.0),
            phase="synth",
        )
        trajectory = agent.run()
        return trajectory, sandbox.read_file("shapes/area.py"), sandbox.read_file("shapes/units.py")


def test_parse_patch_reads_modified_created_and_deleted_files():
    deleted = "diff --git a/old.py b/old.py\ndeleted file mode 100644\n--- a/old.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x = 1\n"
    files = parse_patch(GOLD + deleted)
    assert [(f.path, f.kind) for f in files] == [
        ("shapes/area.py", "modify"),
        ("shapes/units.py", "create"),
        ("old.py", "delete"),
    ]
    hunk = files[0].hunks[0]
    assert (hunk.old_start, hunk.old_count, hunk.scope) == (5, 7, "rect_area")
    assert hunk.removed == ["    return w + h"] and hunk.added == ["    return w * h"]
    assert hunk.side("-", 0) == "    return w + h"
    assert hunk.side(" -", 1) == '        raise ValueError("negative size")\n    return w + h\n'
    assert files[1].hunks[0].added == ["def to_cm2(mm2):", "    return mm2 / 100"]


def test_task_reading_helpers():
    task = make_task("0" * 40)
    assert search_symbol(task, parse_patch(GOLD)) == "rect_area"
    assert repro_script(ISSUE) == "from shapes.area import rect_area\nprint(repr(rect_area(2, 3)))"
    assert pytest_counts(".F.                [100%]\nFAILED x") == (2, 1)
    assert pytest_counts("...   [100%]") == (3, 0)
    assert pytest_counts("no tests ran in 0.01s\n[exit code 4]\nERROR: file not found") == (0, 1)
    assert pytest_counts("warnings summary\nPytestConfigWarning: No files were found\n[exit code 5]") == (
        0,
        0,
    )


def test_episode_fixes_the_task_through_the_tools_and_asks_once(tmp_path):
    trajectory, area, units = run_episode(tmp_path)
    assert trajectory.status == "submitted"
    assert trajectory.policy_backend == NAME
    assert "return w * h" in area and "return w + h" not in area
    assert units == "def to_cm2(mm2):\n    return mm2 / 100\n"
    assert "+    return w * h" in trajectory.patch and "shapes/units.py" in trajectory.patch
    tools = [(a.tool, a.arguments.get("command", "")) for a in trajectory.actions]
    names = [t for t, _ in tools]
    assert names.count("ask_expert") == 1 and len(trajectory.expert_calls) == 1
    assert trajectory.expert_calls[0].status == "ok"
    # located before asking, edited after it, tests run before and after, submit last
    ask = names.index("ask_expert")
    assert ("bash", "git grep -n rect_area") in tools[:ask]
    assert any(t == "str_replace_editor" and c == "view" for t, c in tools[:ask])
    assert any(c.startswith("python -m pytest") for _, c in tools[:ask])
    assert [c for t, c in tools[ask:] if t == "str_replace_editor"][:2] == ["str_replace", "create"]
    assert any(c.startswith("python -m pytest") for _, c in tools[ask:])
    assert names[-1] == "submit"
    # every turn carries reasoning text that names the task's own things, no action failed
    thoughts = [m.content for m in trajectory.messages if m.provenance == "policy"]
    assert all(thoughts) and any("rect_area" in t for t in thoughts)
    assert not [a.error for a in trajectory.actions if a.error]
    # the test run after the edit passes (the reproduction shows 6)
    observations = [m.content for m in trajectory.messages if m.role == "tool"]
    assert any(o.strip() == "6" for o in observations)


def test_episode_is_deterministic_and_attempts_vary(tmp_path):
    first, _, _ = run_episode(tmp_path / "a")
    again, _, _ = run_episode(tmp_path / "b")
    other, _, _ = run_episode(tmp_path / "c", attempt=3)
    dump = [(m.role, m.content, [c.model_dump() for c in m.tool_calls]) for m in first.messages]
    assert dump == [(m.role, m.content, [c.model_dump() for c in m.tool_calls]) for m in again.messages]
    texts = lambda t: [m.content for m in t.messages if m.provenance == "policy"]  # noqa: E731
    assert texts(first) != texts(other)


def test_failed_replacement_is_followed_by_a_look_and_a_wider_retry(tmp_path):
    # The changed line also appears elsewhere in the file: the changed line alone is not a unique snippet.
    twice = AREA + "\n\ndef perimeter(w, h):\n    return w + h\n"
    trajectory, area, _ = run_episode(tmp_path, area=twice)
    assert trajectory.status == "submitted"
    assert "return w * h" in area
    edits = [
        a for a in trajectory.actions if a.tool == "str_replace_editor" and a.arguments["command"] != "create"
    ]
    commands = [(a.arguments["command"], bool(a.error)) for a in edits]
    failed = commands.index(("str_replace", True))
    assert commands[failed + 1] == ("view", False)
    assert ("str_replace", False) in commands[failed + 2 :]
    retry = next(a for a in edits[failed + 2 :] if a.arguments["command"] == "str_replace" and not a.error)
    assert retry.arguments["old_str"].count("\n") > edits[failed].arguments["old_str"].count("\n")
    assert area.count("return w + h") == 1


@pytest.mark.parametrize("attempt", [0, 1])
def test_teacher_raises_policy_error_after_submitting(tmp_path, attempt):
    from protege.agent.policies import PolicyError

    teacher = OracleTeacher(make_task("0" * 40), attempt)
    turn = teacher.generate([], [])
    assert turn.tool_calls[0].id == "call_1" and turn.text
    teacher._script.close()
    with pytest.raises(PolicyError, match="nothing left"):
        teacher.generate([], [])


def test_teacher_without_reasoning_makes_the_same_calls_with_no_text(tmp_path):
    reasoned, _, _ = run_episode(tmp_path / "a")
    bare, _, _ = run_episode(tmp_path / "b", reasoning=False)
    turns = lambda t: [m for m in t.messages if m.provenance == "policy"]  # noqa: E731
    calls = lambda t: [[(c.name, c.arguments) for c in m.tool_calls] for m in turns(t)]  # noqa: E731
    assert bare.status == "submitted"
    assert calls(bare) == calls(reasoned)
    assert all(m.content for m in turns(reasoned))
    assert not any(m.content for m in turns(bare))


def test_ask_first_plan_asks_at_once_then_edits_what_the_reply_names_and_submits(tmp_path):
    trajectory, area, units = run_episode(tmp_path, plan="ask_first", reasoning=False)
    assert trajectory.status == "submitted" and len(trajectory.expert_calls) == 1
    calls = [(a.tool, a.arguments) for a in trajectory.actions]
    assert calls == [
        ("ask_expert", {"question": ASK_FIRST_QUESTION}),
        (
            "str_replace_editor",
            {
                "command": "str_replace",
                "path": "shapes/area.py",
                "old_str": "    return w + h",
                "new_str": "    return w * h",
            },
        ),
        # the file the reply is not about is new: nothing to read before creating it
        (
            "str_replace_editor",
            {
                "command": "create",
                "path": "shapes/units.py",
                "file_text": "def to_cm2(mm2):\n    return mm2 / 100\n",
            },
        ),
        ("submit", {}),
    ]
    assert "return w * h" in area and units == "def to_cm2(mm2):\n    return mm2 / 100\n"
    assert not [a.error for a in trajectory.actions if a.error]
