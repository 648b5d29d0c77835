"""Forced expert calls (agent.forced_ask, issue 19): the fixed-interval and random-ask ablations make
exactly the calls their config says, through the real tool path and quota, each marked forced."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from protege.agent.agent import Agent
from protege.agent.forced import forced_steps
from protege.agent.policies import ScriptedPolicy
from protege.agent.protocols import Sandbox
from protege.config import AgentConfig, ForcedAskConfig
from protege.tasks import TaskInstance
from protege.trajectory import Trajectory, append_trajectory, read_trajectories
from tests.agent.test_tools import open_toy, oracle


@pytest.fixture
def toy(tmp_path: Path) -> Iterator[tuple[Sandbox, TaskInstance]]:
    with open_toy(tmp_path) as pair:
        yield pair


def episode(
    toy: Any, tmp_path: Path, forced: ForcedAskConfig, actions: int, quota: int = 6, asks=()
) -> Trajectory:
    """`actions` cheap bash steps (the policy's own ask_expert at the steps in `asks`), then submit."""
    sandbox, task = toy
    turns: list[dict[str, Any]] = []
    for step in range(1, actions):
        if step in asks:
            turns.append({"tool": "ask_expert", "arguments": {"question": f"own question {step}"}})
        else:
            turns.append({"tool": "bash", "arguments": {"command": f"echo {step}"}})
    turns.append({"tool": "submit", "arguments": {}})
    cfg = AgentConfig(step_limit=50, forced_ask=forced)
    agent = Agent(cfg, ScriptedPolicy(turns), sandbox, task, oracle(tmp_path, quota=quota), phase="eval")
    trajectory = agent.run()
    # Through the file format too: `forced` is a field of the record, not only of the live object.
    append_trajectory(tmp_path / "t.jsonl", trajectory)
    return next(read_trajectories(tmp_path / "t.jsonl"))


def forced_calls(trajectory: Trajectory) -> list[int]:
    return [call.step for call in trajectory.expert_calls if call.forced]


def test_interval_forces_a_call_before_every_kth_step(toy: Any, tmp_path: Path) -> None:
    trajectory = episode(toy, tmp_path, ForcedAskConfig(mode="interval", every_k_steps=3), actions=10)
    assert trajectory.status == "submitted" and trajectory.steps == 10
    assert forced_calls(trajectory) == [3, 6, 9]  # by hand: steps 1..10, k = 3
    assert all(call.status == "ok" and call.reply for call in trajectory.expert_calls)
    assert trajectory.format_version == 2
    # The guidance reaches the policy as expert-provenance observations; no policy turn asked for it.
    guidance = [m for m in trajectory.messages if m.provenance == "expert"]
    assert len(guidance) == 3 and all(m.role == "user" for m in guidance)
    assert sum(len(m.tool_calls) for m in trajectory.messages if m.role == "assistant") == 10


def test_random_ask_follows_its_seeded_schedule(toy: Any, tmp_path: Path) -> None:
    forced = ForcedAskConfig(mode="random", rate=0.3, seed=7)
    trajectory = episode(toy, tmp_path, forced, actions=12, quota=20)
    schedule = [s for s in forced_steps(forced, trajectory.instance_id, 0, 50) if s <= 12]
    assert schedule, "the seed must give at least one forced step in 12 (else the test proves nothing)"
    assert forced_calls(trajectory) == schedule
    # Another seed gives another schedule; the same seed the same one.
    assert forced_steps(forced.model_copy(update={"seed": 8}), trajectory.instance_id, 0, 50) != forced_steps(
        forced, trajectory.instance_id, 0, 50
    )
    assert forced_steps(ForcedAskConfig(mode="random", rate=1.0), "x", 0, 5) == [1, 2, 3, 4, 5]
    assert forced_steps(ForcedAskConfig(mode="random", rate=0.0), "x", 0, 5) == []


def test_forced_calls_share_the_quota_with_the_policys_own(toy: Any, tmp_path: Path) -> None:
    forced = ForcedAskConfig(mode="interval", every_k_steps=2)
    trajectory = episode(toy, tmp_path, forced, actions=9, quota=3, asks=(1,))
    calls = [(c.step, c.forced, c.status) for c in trajectory.expert_calls]
    # The policy's own call at step 1 uses one of 3; forced calls before steps 2 and 4 use the rest; those
    # before 6 and 8 go through the same tool path and are refused by the quota, still recorded as forced.
    assert calls == [
        (1, False, "ok"),
        (2, True, "ok"),
        (4, True, "ok"),
        (6, True, "quota_exceeded"),
        (8, True, "quota_exceeded"),
    ]


def test_off_forces_nothing(toy: Any, tmp_path: Path) -> None:
    trajectory = episode(toy, tmp_path, ForcedAskConfig(), actions=6)
    assert trajectory.expert_calls == []
