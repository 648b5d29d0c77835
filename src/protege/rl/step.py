"""One GRPO step of phases rl1/rl2: trl's `rollout_func` (protege.rl), flat-task dropping, per-step figures.

`RolloutStep.__call__(prompts, trainer)` receives the step's prompts (instance ids, each already repeated
G times by trl's sampler), plays the rollouts (protege.rl.rollout), logs the figures and every rollout, and
returns the token batch with `env_mask` and the per-rollout R_total (None for a failed rollout).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protege.config import LoopConfig, ProtegeConfig
from protege.rl.rollout import Rollout, RolloutContext, TokenTrace, run_rollouts
from protege.taskgen.core import read_rows, write_rows

# --------------------------------------------------------------------------------------------------
# Flat tasks
# --------------------------------------------------------------------------------------------------


class FlatTasks:
    """Counts, per task, the visits where every scored reward of its group was the same; drops a task at
    `max_visits` such visits. Dropped tasks are replaced by active ones, chosen reproducibly."""

    def __init__(
        self, max_visits: int, seed: int, visits: dict[str, int] | None = None, dropped: Sequence[str] = ()
    ) -> None:
        self.max_visits, self.seed = max_visits, seed
        self.visits: dict[str, int] = dict(visits or {})
        self.dropped: list[str] = list(dropped)

    def pick(self, instance_id: str, active_pool: list[str], step: int, group: int) -> str:
        if instance_id not in self.dropped:
            return instance_id
        active = [i for i in active_pool if i not in self.dropped]
        if not active:
            return instance_id  # every task is flat: train on what trl sampled rather than stop
        return random.Random(f"{self.seed}-{step}-{group}").choice(active)

    def observe(self, instance_id: str, rewards: list[float]) -> bool:
        """Record one visit's scored rewards; True when this visit drops the task."""
        if len(rewards) < 2 or len(set(rewards)) > 1:
            return False
        self.visits[instance_id] = self.visits.get(instance_id, 0) + 1
        if self.visits[instance_id] >= self.max_visits and instance_id not in self.dropped:
            self.dropped.append(instance_id)
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"flat_visits": dict(self.visits), "dropped_tasks": list(self.dropped)}


# --------------------------------------------------------------------------------------------------
# The rollout function trl calls
# --------------------------------------------------------------------------------------------------


def step_metrics(rollouts: list[Rollout], loop: LoopConfig, seconds: float) -> dict[str, float]:
    """Per-step figures: batch means of every reward term over scored rollouts, expert calls and steps per
    trajectory, loop rates (`loop.metric_lengths`), failures and rollout throughput."""
    from protege.agent.loops import loop_rates
    from protege.rl.rewards import batch_means

    scored = [r for r in rollouts if not r.failed]
    metrics = {f"reward/{k}": v for k, v in batch_means([r.terms for r in scored if r.terms]).items()}
    trajectories = [r.trajectory for r in scored]
    metrics.update({f"rollout/loop_rate_gt{n}": rate for n, rate in loop_rates(trajectories, loop).items()})
    metrics.update(
        {
            "rollout/expert_calls_per_traj": sum(len(t.expert_calls) for t in trajectories)
            / max(len(scored), 1),
            "rollout/steps_per_traj": sum(len(t.actions) for t in trajectories) / max(len(scored), 1),
            "rollout/resolved": float(sum(bool(t.resolved) for t in trajectories)),
            "rollout/failed": float(len(rollouts) - len(scored)),
            "rollout/episodes_per_min": 60.0 * len(rollouts) / seconds if seconds > 0 else 0.0,
            "rollout/seconds": seconds,
            "rollout/sandbox_start_s": sum(r.sandbox_start_s for r in rollouts) / max(len(rollouts), 1),
            "rollout/grade_s": sum(r.grade_s for r in scored) / max(len(scored), 1),
            "rollout/format_valid_rate": format_valid_rate(trajectories),
            "rollout/policy_tokens": float(sum(sum(r.trace.env_mask) for r in scored)),
            "rollout/env_tokens": float(sum(len(r.trace.env_mask) - sum(r.trace.env_mask) for r in scored)),
        }
    )
    return metrics


def format_valid_rate(trajectories: Sequence[Any]) -> float:
    """Share of the policy's turns that held exactly one well-formed tool call (the agent counts the others
    in `extra["format_errors"]`); 0 when there is no turn."""
    turns = sum(sum(m.provenance == "policy" for m in t.messages) for t in trajectories)
    errors = sum(int(t.extra.get("format_errors", 0)) for t in trajectories)
    return (turns - errors) / turns if turns else 0.0


def groups_with_advantage(rollouts: list[Rollout], group_size: int) -> float:
    """Share of the step's groups whose scored rewards are not all equal: the groups GRPO learns from (a
    group with one reward, or none scored, has zero advantage everywhere)."""
    groups = [rollouts[i : i + group_size] for i in range(0, len(rollouts), group_size)]
    scored = [{r.terms["r_total"] for r in group if not r.failed and r.terms} for group in groups]
    return sum(len(rewards) > 1 for rewards in scored) / len(groups) if groups else 0.0


def _training_trace(rollout: Rollout, eos_id: int) -> TokenTrace:
    trace = rollout.trace if rollout.trace.prompt_ids else TokenTrace([eos_id], [eos_id], [0], [0.0])
    return trace.silenced() if rollout.failed or not trace.completion_ids else trace


HISTORY_FILE = "history.jsonl"
"""In a stage's directory: one line of figures per GRPO step, so a resumed stage still reports them all."""


class RolloutStep:
    """trl's rollout_func: plays the step's rollouts, scores them, logs them and returns the token batch."""

    def __init__(
        self,
        cfg: ProtegeConfig,
        plan: Any,
        tasks: dict[str, Any],
        ctx: RolloutContext,
        flat: FlatTasks,
        out_dir: Path,
        tracker: Any,
        run_id: str | None,
        store: Any,
    ) -> None:
        self.cfg, self.plan, self.tasks, self.ctx, self.flat = cfg, plan, tasks, ctx, flat
        self.out_dir, self.tracker, self.run_id, self.store = out_dir, tracker, run_id, store
        self.history: list[dict[str, Any]] = read_rows(out_dir / HISTORY_FILE)
        """Every step's figures, the steps of an earlier, resumed run of this stage included."""

    def jobs(self, prompts: list[str], step: int, offset: int) -> list[tuple[Any, int]]:
        """(task, rollout index in the step's whole batch) per prompt; `offset`: this rank's first index."""
        size = self.cfg.rl.group_size
        jobs = []
        for start in range(0, len(prompts), size):
            group = (offset + start) // size
            instance_id = self.flat.pick(prompts[start], sorted(self.tasks), step, group)
            jobs += [
                (self.tasks[instance_id], offset + start + k)
                for k in range(len(prompts[start : start + size]))
            ]
        return jobs

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, Any]:
        step = trainer.state.global_step + 1
        rank = trainer.accelerator.process_index
        started = time.monotonic()
        ctx = dataclasses.replace(self.ctx, logs_dir=self.out_dir / "grading" / f"step-{step}")
        rollouts = run_rollouts(
            ctx, self.jobs(prompts, step, rank * len(prompts)), self.cfg.rl.rollout_workers
        )
        seconds = time.monotonic() - started
        everyone = gather_rollouts(trainer, rollouts)  # every rank keeps the same flat-task books and figures
        newly_dropped = self.observe_groups(everyone)
        metrics = step_metrics(everyone, self.plan.reward.loop, seconds)
        metrics["rollout/groups_with_advantage"] = groups_with_advantage(everyone, self.cfg.rl.group_size)
        metrics.update({f"judge/{k}": v for k, v in self.ctx.judge.counters().items()})
        metrics.update(
            {"tasks/dropped": float(len(self.flat.dropped)), "tasks/newly_dropped": float(len(newly_dropped))}
        )
        self.write(rollouts, step, rank)
        self.report(everyone, step, metrics, newly_dropped)
        if rank == 0:
            write_rows(self.out_dir / HISTORY_FILE, self.history)
        eos = self.ctx.tokenizer.eos_token_id
        traces = [_training_trace(r, eos) for r in rollouts]
        return {
            "prompt_ids": [t.prompt_ids for t in traces],
            "completion_ids": [t.completion_ids for t in traces],
            "logprobs": [t.logprobs for t in traces],
            "env_mask": [t.env_mask for t in traces],
            "rl_reward": [None if r.failed or r.terms is None else r.terms["r_total"] for r in rollouts],
        }

    def observe_groups(self, rollouts: list[Rollout]) -> list[str]:
        size, dropped = self.cfg.rl.group_size, []
        for start in range(0, len(rollouts), size):
            group = rollouts[start : start + size]
            scored = [r.terms["r_total"] for r in group if not r.failed and r.terms]
            if self.flat.observe(group[0].task.instance_id, scored):
                dropped.append(group[0].task.instance_id)
        return dropped

    def write(self, rollouts: list[Rollout], step: int, rank: int) -> None:
        """This rank's rollouts, whole, to `rollouts/step-N[.rankR].jsonl` (and the store)."""
        from protege.trajectory import append_trajectory

        suffix = f".rank{rank}" if rank else ""
        path = self.out_dir / "rollouts" / f"step-{step:05d}{suffix}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a step replayed after a resume rewrites its file
        for r in rollouts:
            r.trajectory.extra["rl"] = {
                "stage": self.plan.stage,
                "step": step,
                "rollout": r.index,
                "failure": r.failure,
                "policy_tokens": sum(r.trace.env_mask),
            }
            append_trajectory(path, r.trajectory)
        if self.store is not None:
            self.store.upload_file(
                path, self.store.uri(f"{self.cfg.run_name}/{self.plan.phase}/rollouts/{path.name}")
            )

    def report(
        self, rollouts: list[Rollout], step: int, metrics: dict[str, float], dropped: list[str]
    ) -> None:
        """The step's figures to the tracker (rank 0 has one), the history and the progress line."""
        if self.tracker is not None and self.run_id:
            self.tracker.log_metrics(self.run_id, metrics, step=step)
            from protege.tracking.traces import log_episode_traces

            sample = [r.trajectory for r in rollouts[: self.cfg.tracking.trace_sample]]
            log_episode_traces(self.tracker, self.run_id, sample, step=str(step))
            if dropped:
                self.tracker.set_tags(self.run_id, {"protege.dropped_tasks": ",".join(self.flat.dropped)})
        failures = [f"{r.task.instance_id}#{r.index}: {r.failure}" for r in rollouts if r.failed]
        # A step replayed after a resume replaces what the cut run recorded for it.
        self.history = [h for h in self.history if h["step"] < step]
        self.history.append({"step": step, **metrics, "failures": failures, "dropped": dropped})
        print(
            f"[{self.plan.phase}] step {step}/{self.plan.max_steps}: {len(rollouts)} rollouts in "
            f"{metrics['rollout/seconds']:.0f}s | reward {metrics.get('reward/r_total', float('nan')):.3f} | "
            f"resolved {metrics['rollout/resolved']:.0f} | expert calls/traj "
            f"{metrics['rollout/expert_calls_per_traj']:.2f} | failed {len(failures)}"
            + (f" | dropped {', '.join(dropped)}" if dropped else ""),
            flush=True,
        )
        for line in failures:
            print(f"[{self.plan.phase}]   failed rollout {line}", flush=True)


def _light(rollout: Rollout) -> Rollout:
    """What other ranks need of a rollout for the figures and the flat-task books: no messages, no token ids."""
    trace = TokenTrace(env_mask=rollout.trace.env_mask)
    trajectory = rollout.trajectory.model_copy(update={"messages": []})
    return dataclasses.replace(rollout, trace=trace, trajectory=trajectory)


def gather_rollouts(trainer: Any, rollouts: list[Rollout]) -> list[Rollout]:
    """Every rank's rollouts of the step, in rank order (groups never straddle ranks: each gets whole groups)."""
    if trainer.accelerator.num_processes == 1:
        return rollouts
    from accelerate.utils import gather_object

    return gather_object([_light(r) for r in rollouts])


def trajectory_reward(
    prompts: list[Any], completions: list[Any], rl_reward: list[float | None], **kwargs: Any
) -> list[float | None]:
    """trl reward function: R_total computed in the rollout (None for a failed rollout: zero advantage)."""
    return list(rl_reward)
