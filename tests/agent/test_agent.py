"""The agent loop: history processing, limits and terminal statuses, full episodes in a real sandbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protege.agent.agent import Agent, process_history, truncate_observation
from protege.agent.policies import ScriptedPolicy
from protege.agent.protocols import PolicyTurn, Sandbox
from protege.config import AgentConfig
from protege.tasks import TaskInstance
from protege.trajectory import Message, append_trajectory, read_trajectories
from tests.agent.test_tools import open_toy, oracle

FIX = {
    "tool": "str_replace_editor",
    "arguments": {
        "command": "str_replace",
        "path": "a.py",
        "old_str": "    return a - b\n\n",
        "new_str": "    return a + b\n\n",
    },
}


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[tuple[Sandbox, TaskInstance]]:
    with open_toy(tmp_path) as pair:
        yield pair


class SeeingPolicy(ScriptedPolicy):
    """A scripted policy that also keeps every view of the history it was given."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        super().__init__(turns)
        self.views: list[list[Message]] = []

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        self.views.append(list(messages))
        return super().generate(messages, tools)


def bash(command: str, **extra: Any) -> dict[str, Any]:
    return {"tool": "bash", "arguments": {"command": command}, **extra}


# --------------------------------------------------------------------------------------------------
# History processor and truncation
# --------------------------------------------------------------------------------------------------


def _history() -> list[Message]:
    messages = [
        Message(role="system", provenance="system", content="sys"),
        Message(role="user", provenance="task", content="task"),
    ]
    for i in range(6):
        messages.append(Message(role="assistant", provenance="policy", content=f"thought {i}"))
        provenance = "expert" if i == 1 else "tool"
        messages.append(
            Message(
                role="tool",
                provenance=provenance,
                content=f"out {i}\nline 2",
                tool_call_id=f"c{i}",
                name="bash",
            )
        )
    return messages


@pytest.mark.parametrize("keep", [0, 2, 5, 10])
def test_history_keeps_last_n_observations_and_never_collapses_expert(keep: int) -> None:
    messages = _history()
    view = process_history(messages, keep)
    tool_indices = [i for i, m in enumerate(messages) if m.provenance == "tool"]  # 5 tool observations
    kept = set(tool_indices[-keep:]) if keep else set()
    for index, (before, after) in enumerate(zip(messages, view, strict=True)):
        if index in tool_indices and index not in kept:
            assert after.content == "Old environment output: (2 lines omitted)"
            assert after.tool_call_id == before.tool_call_id  # the chat stays well-formed
        else:
            assert after == before
    assert view[5].provenance == "expert" and view[5].content == "out 1\nline 2"
    assert messages[3].content == "out 0\nline 2"  # the full record is untouched


def test_truncation_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    text = "H" * 300 + "T" * 300
    cut = truncate_observation(text, 200)
    assert cut.startswith("H" * 100) and cut.endswith("T" * 100)
    assert "<observation truncated: 400 of 600 characters omitted>" in cut
    assert truncate_observation("short", 200) == "short"


# --------------------------------------------------------------------------------------------------
# Episodes
# --------------------------------------------------------------------------------------------------


def test_episode_asks_the_oracle_fixes_and_submits(toy: tuple[Sandbox, TaskInstance], tmp_path: Path) -> None:
    sandbox, task = toy
    policy = SeeingPolicy(
        [
            {
                "tool": "str_replace_editor",
                "arguments": {"command": "view", "path": "a.py"},
                "thought": "Look first.",
            },
            bash("grep -n return a.py"),
            {"tool": "ask_expert", "arguments": {"question": "Which function is wrong?"}},
            FIX,
            bash("cd /testbed && python -c 'import a; print(a.add(2, 3))'"),
            {"tool": "submit", "arguments": {}},
        ]
    )
    cfg = AgentConfig(history_view="collapsed", keep_last_observations=1)
    trajectory = Agent(cfg, policy, sandbox, task, oracle(tmp_path), phase="agent").run()

    assert trajectory.status == "submitted"
    assert "+    return a + b" in trajectory.patch
    assert [a.base_command for a in trajectory.actions] == [
        "navigate",
        "navigate",
        "ask_expert",
        "str_replace_editor str_replace",
        "python",
        "submit",
    ]
    assert trajectory.actions[4].exit_code == 0
    assert [m.provenance for m in trajectory.messages[:2]] == ["system", "task"]
    assert task.problem_statement in trajectory.messages[1].content
    expert_messages = [m for m in trajectory.messages if m.provenance == "expert"]
    assert len(expert_messages) == 1 and expert_messages[0].content.startswith("<expert_llm_guidance>")
    assert len(trajectory.expert_calls) == 1 and trajectory.expert_calls[0].step == 3
    assert trajectory.expert_backend == "oracle" and trajectory.policy_backend == "scripted"
    assert trajectory.messages[2].content == "Look first."  # the thought, without the tool-call block
    # The policy's last view: all tool observations but the last collapsed, the expert's guidance whole.
    last_view = policy.views[-1]
    observations = [m for m in last_view if m.role == "tool"]
    assert [m.provenance for m in observations] == ["tool", "tool", "expert", "tool", "tool"]
    assert all(m.content.startswith("Old environment output") for m in observations[:2] + observations[3:4])
    assert observations[2].content == expert_messages[0].content
    assert observations[4].content.strip() == "5"
    # The record survives the JSONL round trip.
    append_trajectory(tmp_path / "t.jsonl", trajectory)
    (again,) = read_trajectories(tmp_path / "t.jsonl")
    assert again == trajectory


def test_step_limit(toy: tuple[Sandbox, TaskInstance]) -> None:
    sandbox, task = toy
    policy = ScriptedPolicy([bash(f"echo {i}") for i in range(5)])
    trajectory = Agent(AgentConfig(step_limit=3), policy, sandbox, task).run()
    assert trajectory.status == "step_limit"
    assert len(trajectory.actions) == 3 and trajectory.patch == ""


def test_consecutive_format_errors_end_the_episode_and_a_valid_call_resets_the_count(
    toy: tuple[Sandbox, TaskInstance],
) -> None:
    sandbox, task = toy
    bad = {"text": "I will just think out loud."}
    two_calls = {"text": '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>' * 2}
    broken = {"text": "<tool_call>\n{not json}\n</tool_call>"}
    policy = ScriptedPolicy([bad, two_calls, bash("ls"), bad, two_calls, broken])
    trajectory = Agent(AgentConfig(max_format_errors=3), policy, sandbox, task).run()
    assert trajectory.status == "format_errors"
    assert len(trajectory.actions) == 1
    assert trajectory.extra["format_errors"] == 5
    errors = [m for m in trajectory.messages if m.content.startswith("Format error")]
    assert len(errors) == 5 and all(m.provenance == "tool" and m.role == "user" for m in errors)
    assert "no tool call" in errors[0].content and "2 tool calls" in errors[1].content
    assert "not valid JSON" in errors[4].content


def test_cost_cap_counts_policy_dollars(toy: tuple[Sandbox, TaskInstance]) -> None:
    sandbox, task = toy
    policy = ScriptedPolicy([bash("true", cost_usd=0.6) for _ in range(4)])
    trajectory = Agent(AgentConfig(cost_limit_usd=1.0), policy, sandbox, task).run()
    assert trajectory.status == "cost_limit"
    assert len(trajectory.actions) == 2 and trajectory.policy_cost_usd == pytest.approx(1.2)


def test_wall_time_limit(toy: tuple[Sandbox, TaskInstance]) -> None:
    sandbox, task = toy
    policy = ScriptedPolicy([bash("sleep 0.3"), bash("echo never")])
    trajectory = Agent(AgentConfig(wall_time_s=0.2), policy, sandbox, task).run()
    assert trajectory.status == "timeout"
    assert len(trajectory.actions) == 1


def test_exhausted_script_is_a_policy_error(toy: tuple[Sandbox, TaskInstance]) -> None:
    sandbox, task = toy
    trajectory = Agent(AgentConfig(), ScriptedPolicy([bash("ls")]), sandbox, task).run()
    assert trajectory.status == "policy_error" and "exhausted after 1 turn" in trajectory.status_detail


def test_observations_are_truncated_at_insertion(toy: tuple[Sandbox, TaskInstance]) -> None:
    sandbox, task = toy
    policy = ScriptedPolicy([bash("python3 -c \"print('x' * 1000)\""), {"tool": "submit", "arguments": {}}])
    trajectory = Agent(AgentConfig(observation_max_chars=200), policy, sandbox, task).run()
    observation = trajectory.messages[3].content
    assert "<observation truncated: 801 of 1001 characters omitted>" in observation
    assert trajectory.status == "submitted" and trajectory.patch == ""


def test_quota_refusal_is_an_observation_and_the_episode_goes_on(
    toy: tuple[Sandbox, TaskInstance], tmp_path: Path
) -> None:
    sandbox, task = toy
    ask = {"tool": "ask_expert", "arguments": {"question": "help?"}}
    policy = ScriptedPolicy([ask, ask, {"tool": "submit", "arguments": {}}])
    trajectory = Agent(AgentConfig(), policy, sandbox, task, oracle(tmp_path, quota=1)).run()
    assert trajectory.status == "submitted"
    assert [c.status for c in trajectory.expert_calls] == ["ok", "quota_exceeded"]
    tool_messages = [m for m in trajectory.messages if m.role == "tool"]
    assert [m.provenance for m in tool_messages] == ["expert", "tool", "tool"]


# --------------------------------------------------------------------------------------------------
# A bundled demo task, end to end: ask the oracle, apply the fix, run the tests, submit
# --------------------------------------------------------------------------------------------------


def edits_from_patch(patch: str) -> list[dict[str, Any]]:
    """str_replace turns that apply a unified diff hunk by hunk (context + removed -> context + added)."""
    turns: list[dict[str, Any]] = []
    path, old, new = "", [], []

    def flush() -> None:
        if old or new:
            arguments = {
                "command": "str_replace",
                "path": path,
                "old_str": "\n".join(old),
                "new_str": "\n".join(new),
            }
            turns.append({"tool": "str_replace_editor", "arguments": arguments})
        old.clear()
        new.clear()

    for line in patch.splitlines():
        if line.startswith(("diff --git", "@@")):
            flush()
        elif line.startswith("+++ "):
            path = line[4:].removeprefix("b/")
        elif line.startswith(("--- ", "index ")):
            continue
        elif line.startswith("-"):
            old.append(line[1:])
        elif line.startswith("+"):
            new.append(line[1:])
        elif line.startswith(" ") or line == "":
            old.append(line[1:])
            new.append(line[1:])
    flush()
    return turns


def demo_episode_script(task: TaskInstance) -> list[dict[str, Any]]:
    tests = " ".join(task.FAIL_TO_PASS)
    return [
        {"tool": "str_replace_editor", "arguments": {"command": "view", "path": "/testbed"}},
        {
            "tool": "ask_expert",
            "arguments": {"question": "Where is the bug behind this issue?"},
            "thought": "Ask.",
        },
        *edits_from_patch(task.patch),
        bash(f"python -m pytest -q -p no:cacheprovider {tests.split()[0].split('::')[0]}"),
        {"tool": "submit", "arguments": {}},
    ]


def test_scripted_episode_on_a_demo_task_asks_the_oracle_fixes_and_submits(tmp_path: Path) -> None:
    from protege.agent.sandbox import open_sandbox
    from protege.config import SandboxConfig
    from protege.demo import build_demo_repos, demo_tasks

    task = demo_tasks("train")[0]
    build_demo_repos(tmp_path / "repos", only=[task.repo])
    sandbox = open_sandbox(SandboxConfig(command_timeout_s=60), task, tmp_path / "repos")
    try:
        policy = ScriptedPolicy(demo_episode_script(task))
        trajectory = Agent(AgentConfig(), policy, sandbox, task, oracle(tmp_path)).run()
    finally:
        sandbox.close()
    assert trajectory.status == "submitted", trajectory.status_detail
    assert trajectory.patch.strip()
    gold_added = [
        line for line in task.patch.splitlines() if line.startswith("+") and not line.startswith("+++")
    ]
    assert all(line in trajectory.patch.splitlines() for line in gold_added)
    assert [c.backend for c in trajectory.expert_calls] == ["oracle"] and trajectory.expert_calls[
        0
    ].status == "ok"
    assert any(m.provenance == "expert" and "<expert_llm_guidance>" in m.content for m in trajectory.messages)
    assert all(a.error == "" for a in trajectory.actions), [a.error for a in trajectory.actions]
    pytest_run = trajectory.actions[-2]
    assert (
        pytest_run.base_command == "python" and pytest_run.exit_code == 0
    )  # the repo's tests pass after the fix
