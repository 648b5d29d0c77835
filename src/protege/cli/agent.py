"""`protege agent run`: one episode of the agent on one task, with a readable transcript.

    protege agent run --task protege-demo__lrucache-1 --profile local --policy scripted --script s.json
    protege agent run --task ID --profile cluster --policy openai agent.policy.base_url=http://vllm:8000

The task comes from the profile's task sets (train, then eval). Demo repositories are built into
`tasks.repos_dir` when missing. The transcript marks every message by provenance; expert guidance
stands out under an `[EXPERT]` banner. Then the status, the counters and the patch are printed, and
with `--out` the trajectory is appended to a JSONL file. Exit code 0 when the episode submitted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from protege.cli.common import CLIError, profile_args
from protege.tasks import TaskInstance
from protege.trajectory import Message, Trajectory

RULE_WIDTH = 78
# Banner per provenance; the expert's is drawn with a different rule so it stands out when scrolling.
BANNERS = {
    "system": "[SYSTEM]",
    "task": "[TASK]",
    "policy": "[POLICY]",
    "tool": "[TOOL]",
    "expert": "[EXPERT]",
}


def render_message(message: Message) -> str:
    """A transcript entry: a banner line naming who spoke, then the text and any tool call."""
    banner = BANNERS[message.provenance] + (f" {message.name}" if message.name else "")
    rule = "*" if message.provenance == "expert" else "-"
    lines = [f"{rule * 3} {banner} ".ljust(RULE_WIDTH, rule)]
    if message.content:
        lines.append(message.content)
    for call in message.tool_calls:
        lines.append(f">>> {call.name} {json.dumps(call.arguments, ensure_ascii=False)}")
    if message.provenance == "expert":
        lines.append(rule * RULE_WIDTH)
    return "\n".join(lines)


def render_summary(trajectory: Trajectory) -> str:
    """Status, counters and the patch."""
    lines = [
        "=" * RULE_WIDTH,
        f"status: {trajectory.status} ({trajectory.status_detail})",
        f"steps: {trajectory.steps}  expert calls: {len(trajectory.expert_calls)} "
        f"({trajectory.expert_backend or 'none'})  cost: ${trajectory.cost_usd:.4f}  "
        f"policy tokens in/out: {trajectory.policy_input_tokens}/{trajectory.policy_output_tokens}",
        "patch:" if trajectory.patch.strip() else "patch: (empty)",
    ]
    if trajectory.patch.strip():
        lines.append(trajectory.patch.rstrip("\n"))
    return "\n".join(lines)


def find_task(cfg, instance_id: str) -> tuple[TaskInstance, str]:
    """The task with this id from the profile's train or eval set, and the source it came from."""
    from protege.tasksets import load_task_set, split_of

    seen: list[str] = []
    for source in dict.fromkeys([cfg.tasks.train, cfg.tasks.eval]):
        tasks = load_task_set(source, split=split_of(cfg.tasks, source))
        for task in tasks:
            if task.instance_id == instance_id:
                return task, source
        seen += [t.instance_id for t in tasks]
    known = ", ".join(seen[:10]) + (" ..." if len(seen) > 10 else "")
    raise CLIError(f"task {instance_id!r} is not in {cfg.tasks.train} or {cfg.tasks.eval} (known: {known})")


def ensure_repo(task: TaskInstance, source: str, repos_dir: Path) -> None:
    """Build the demo repository of a demo task into repos_dir when it is not there yet."""
    if source.startswith("demo:") and not (repos_dir / task.repo_dirname).is_dir():
        from protege.demo import build_demo_repos

        build_demo_repos(repos_dir, only=[task.repo])


def run_episode(args: argparse.Namespace, out: TextIO = sys.stdout) -> Trajectory:
    """Load config and task, open the sandbox, play one episode while printing it; returns the trajectory."""
    from protege.agent.agent import Agent
    from protege.agent.expert import ExpertService
    from protege.agent.policy_choice import make_policy
    from protege.agent.protocols import SandboxError
    from protege.agent.sandbox import open_sandbox
    from protege.config import load_config

    overrides = list(args.overrides)
    if args.policy:
        overrides.append(f"agent.policy.backend={args.policy}")
    if args.expert:
        overrides.append(f"expert.backend={args.expert}")
    cfg = load_config(args.profile, args.config_file, overrides)
    task, source = find_task(cfg, args.task)
    repos_dir = Path(cfg.tasks.repos_dir)
    ensure_repo(task, source, repos_dir)
    try:
        policy = make_policy(cfg, args.script)
    except ValueError as err:
        raise CLIError(str(err)) from None
    expert = ExpertService(cfg.expert).session(cfg.agent.expert_quota, cfg.agent.cost_limit_usd)
    try:
        sandbox = open_sandbox(cfg.agent.sandbox, task, repos_dir)
    except SandboxError as err:
        raise CLIError(str(err)) from None
    try:
        agent = Agent(
            cfg.agent,
            policy,
            sandbox,
            task,
            expert,
            phase="agent",
            on_message=lambda m: print(render_message(m), file=out, flush=True),
        )
        trajectory = agent.run()
    finally:
        sandbox.close()
    print(render_summary(trajectory), file=out)
    return trajectory


def _agent_run(args: argparse.Namespace) -> int:
    from protege.trajectory import append_trajectory

    trajectory = run_episode(args)
    if args.out:
        append_trajectory(args.out, trajectory)
        print(f"trajectory appended to {args.out}")
    return 0 if trajectory.status == "submitted" else 1


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege agent run`."""

    group = sub.add_parser("agent", help="run the agent").add_subparsers(dest="cmd", required=True)
    run = group.add_parser("run", help="run one episode on one task and print the transcript")
    run.add_argument("--task", required=True, help="instance id (from the profile's task sets)")
    run.add_argument(
        "--policy", choices=["scripted", "transformers", "openai", "anthropic"], help="policy backend"
    )
    run.add_argument("--expert", choices=["oracle", "anthropic", "openai"], help="expert backend")
    run.add_argument("--script", help="JSON list of turns for the scripted policy")
    run.add_argument("--out", help="append the trajectory to this JSONL file")
    profile_args(run)
    run.set_defaults(func=_agent_run)
