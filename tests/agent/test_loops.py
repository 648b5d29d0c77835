"""Loop detection (METHOD §6): base-command normalisation, runs, R_loop and the loop-rate metric."""

from __future__ import annotations

import pytest

from protege.agent.loops import base_command, longest_run, loop_rates, r_loop, runs
from protege.config import LoopConfig
from protege.trajectory import Action, Trajectory


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        # The examples METHOD §6 lists, verbatim.
        ("FOO=1 python x.py", "python"),
        ("cd /testbed && python -m pytest -q", "python"),
        ("cd src; git diff HEAD", "git diff"),
        ("grep -rn foo . | head", "navigate"),
        # More of rule 1 and rule 3.
        ("git status", "git status"),
        ("git log --oneline -5", "git log"),
        ("git -C /testbed diff", "git diff"),
        ("cd a || cd b", "cd"),
        ("cd /testbed && A=1 B=2 pytest tests/", "pytest"),
        ("echo 'a && b; c' ", "echo"),
        ('python -c "import x; print(1)"', "python"),
        ("cat setup.py", "navigate"),
        ("ls -la", "navigate"),
        ("find . -name '*.py' -exec grep -l foo {} \\;", "navigate"),
        ("rg foo", "navigate"),
        ("tail -n 5 log.txt", "navigate"),
        ("/usr/bin/python3 t.py", "python3"),
        ("python t.py 2>&1 | tail -20", "python"),
        ("cd /testbed\npython reproduce.py", "python"),
        ("", "bash"),
        ("FOO=1", "bash"),
        ("echo 'unbalanced", "echo"),
    ],
)
def test_bash_base_command(command: str, expected: str) -> None:
    assert base_command("bash", {"command": command}) == expected


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("str_replace_editor", {"command": "view", "path": "a.py", "view_range": [1, 50]}, "navigate"),
        (
            "str_replace_editor",
            {"command": "create", "path": "a.py", "file_text": ""},
            "str_replace_editor create",
        ),
        ("str_replace_editor", {"command": "str_replace", "path": "a.py"}, "str_replace_editor str_replace"),
        ("str_replace_editor", {"command": "insert"}, "str_replace_editor insert"),
        ("str_replace_editor", {"command": "undo_edit"}, "str_replace_editor undo_edit"),
        ("str_replace_editor", {}, "str_replace_editor"),
        ("ask_expert", {"question": "why?"}, "ask_expert"),
        ("submit", {}, "submit"),
        ("bash", {"command": 3}, "bash"),
    ],
)
def test_other_tools_base_command(tool: str, arguments: dict, expected: str) -> None:
    assert base_command(tool, arguments) == expected


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        ([], []),
        (["a"], [1]),
        (["a", "a", "b", "a", "a", "a"], [2, 1, 3]),
        (["navigate"] * 4 + ["python"], [4, 1]),
    ],
)
def test_runs(commands: list[str], expected: list[int]) -> None:
    assert runs(commands) == expected
    assert longest_run(commands) == max(expected, default=0)


@pytest.mark.parametrize(
    ("run_lengths", "expected"),
    [
        ([20], -3.0),  # 20 - 15 + 1 = 6 steps beyond k1, times 0.5
        ([15, 8], -1.0),  # 1 beyond k1, 1 beyond k2
        ([14, 7], 0.0),  # both at their threshold minus one: free
        ([1] * 50, 0.0),  # runs of length 1 cost nothing, however many
        ([1, 9], -1.0),  # a later run is held to k2 = 8
        ([100], -10.0),  # floor
        ([15, 30, 30], -10.0),  # floor across runs
        ([], 0.0),
    ],
)
def test_r_loop(run_lengths: list[int], expected: float) -> None:
    assert r_loop(run_lengths, LoopConfig()) == expected


def test_r_loop_follows_config() -> None:
    cfg = LoopConfig(first_run_threshold=3, later_run_threshold=2, penalty_per_step=1.0, floor=-4.0)
    assert r_loop([3, 2], cfg) == -2.0  # 1 beyond k1 + 1 beyond k2
    assert r_loop([10], cfg) == -4.0


def _trajectory(commands: list[str]) -> Trajectory:
    actions = [Action(step=i + 1, tool="bash", arguments={}, base_command=c) for i, c in enumerate(commands)]
    return Trajectory(instance_id="t", actions=actions)


def test_loop_rates_counts_longest_run_strictly_above_each_length() -> None:
    trajectories = [
        _trajectory(["python"] * 11),  # > 10 only
        _trajectory(["navigate"] * 10 + ["python"]),  # exactly 10: not a loop at L=10
        _trajectory(["python"] * 41),  # > 10, 20, 40
        _trajectory([]),
    ]
    assert loop_rates(trajectories, LoopConfig()) == {10: 0.5, 20: 0.25, 40: 0.25}
    assert loop_rates([], LoopConfig()) == {10: 0.0, 20: 0.0, 40: 0.0}
