"""`protege agent run`: one scripted episode on a demo task through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.cli import main
from protege.demo import demo_tasks
from protege.trajectory import read_trajectories
from tests.agent.test_agent import demo_episode_script


def test_agent_run_prints_a_transcript_with_expert_banner_and_writes_the_trajectory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task = demo_tasks("eval")[0]
    script = tmp_path / "script.json"
    script.write_text(json.dumps(demo_episode_script(task)))
    out = tmp_path / "trajectories.jsonl"
    code = main(
        [
            "agent",
            "run",
            "--task",
            task.instance_id,
            "--profile",
            "local",
            "--policy",
            "scripted",
            "--expert",
            "oracle",
            "--script",
            str(script),
            "--out",
            str(out),
            f"tasks.repos_dir={tmp_path / 'repos'}",
            f"expert.cache_dir={tmp_path / 'cache'}",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert (tmp_path / "repos" / task.repo_dirname).is_dir()  # the demo repository was built on demand
    assert "--- [TASK] " in printed and "*** [EXPERT] ask_expert " in printed
    assert "<expert_llm_guidance>" in printed
    assert "status: submitted" in printed and "patch:\ndiff --git" in printed
    (trajectory,) = read_trajectories(out)
    assert trajectory.instance_id == task.instance_id and trajectory.status == "submitted"
    assert trajectory.expert_backend == "oracle" and trajectory.policy_backend == "scripted"


def test_agent_run_names_an_unknown_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["agent", "run", "--task", "nope-1", "--policy", "scripted", f"tasks.repos_dir={tmp_path}"])
    assert code == 2
    assert "task 'nope-1' is not in demo:train or demo:eval" in capsys.readouterr().err
