"""A rollout's time split: generation / tools / sandbox setup / grading, demo tasks and a 10k-file repository.

Mixed episodes through `protege.rl.rollout.run_rollouts` (the RL loop, one worker so the parts do not
overlap): each turn the tiny model generates GEN_TOKENS tokens (real forward passes on this CPU, timed and
counted: generation tokens/s), then the turn's action is the scripted one of `bench_rl.SCRIPTED_COMMANDS`
(two reads and an edit through bash in the sandbox, then submit), so every episode runs real tool calls and
is graded on a non-empty patch. Per episode, from the rollouts and timed wrappers:
- `setup_s`: opening the sandbox (`Rollout.sandbox_start_s`) plus closing it;
- `generation_s`, `tools_s`: time in the generator and in the sandbox's run/read/write/diff;
- `grading_s`: `Rollout.grade_s` (a fresh sandbox from the same checkout cache, the patch, the tests);
- `other_s`: the rest of the episode's wall time (rendering, tokenising, reward).
On the demo tasks (one episode per task in the rollout step, after a warm-up episode that is reported apart)
and on a demo task moved onto a base commit with FILLER_FILES more files (`bench.synthetic.with_filler`),
each with `agent.sandbox.prepare_ahead` 0 (every sandbox opened when its episode starts) and 1 (the next
one opened while the current episode runs).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_rl import SCRIPTED_COMMANDS, Clock, ScriptedGenerator, timed_opener

RESULT = "episode_cpu"
GEN_TOKENS = 16
"""Tokens the model generates per turn (then discarded for the scripted action)."""
EPISODES = 3
"""Measured episodes per (repository, prepare_ahead), after one warm-up episode."""
FILLER_FILES = 10_000


class MixedGenerator:
    """The model generates GEN_TOKENS tokens (timed as generation), then the scripted turn is returned."""

    def __init__(self, model: Any, scripted: ScriptedGenerator, clock: Clock) -> None:
        self.model, self.scripted, self.clock = model, scripted, clock

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        started = time.monotonic()
        ids, _ = self.model.generate(prompt_ids, GEN_TOKENS, stop)
        self.clock.add("generate", started, time.monotonic())
        self.clock.count("generated_tokens", len(ids))
        return self.scripted.generate(prompt_ids, max_new_tokens, stop)


def _split(rollouts: list[Any], clock: Clock, seconds: float) -> dict[str, Any]:
    n = len(rollouts)
    setup = sum(r.sandbox_start_s for r in rollouts) + clock.summed("sandbox_close")
    generation, tools = clock.summed("generate"), clock.summed("tool")
    grading = sum(r.grade_s for r in rollouts)
    per = {
        "setup_s": setup / n,
        "generation_s": generation / n,
        "tools_s": tools / n,
        "grading_s": grading / n,
    }
    per["other_s"] = seconds / n - sum(per.values())
    total = seconds / n
    return {
        "episodes": n,
        "episode_s": round(total, 3),
        "per_episode": {k: round(v, 3) for k, v in per.items()},
        "share": {k.removesuffix("_s"): round(v / total, 3) for k, v in per.items()},
        "generation_tokens_per_s": round(clock.counts["generated_tokens"] / generation, 1)
        if generation
        else 0.0,
        "tool_calls": clock.calls("tool"),
        "tool_call_ms": _percentiles_ms(clock, "tool"),
        "sandbox_open_ms": {
            "p50": round(statistics.median(r.sandbox_start_s for r in rollouts) * 1000, 2),
            "max": round(max(r.sandbox_start_s for r in rollouts) * 1000, 2),
        },
        "statuses": sorted({r.trajectory.status for r in rollouts}),
        "failed": [r.failure for r in rollouts if r.failed],
    }


def _percentiles_ms(clock: Clock, name: str) -> dict[str, float]:
    from bench.bench_checkout import percentiles

    return percentiles([b - a for a, b in clock.intervals.get(name, [])])


def episodes(built: Any, model_generator: Any, jobs: list[tuple[Any, int]], cfg: Any) -> dict[str, Any]:
    """run_rollouts over jobs with one worker; the first job is a warm-up reported apart."""
    from protege.rl.rollout import SandboxGate, run_rollouts

    step = built.rollout_step
    result = {}
    for name, chunk in (("warmup", jobs[:1]), ("measured", jobs[1:])):
        clock = Clock()
        scripted = ScriptedGenerator(step.ctx.tokenizer, SCRIPTED_COMMANDS)
        gate = SandboxGate(timed_opener(clock), 0.0, 0, 0.0)
        ctx = dataclasses.replace(
            step.ctx, cfg=cfg, gate=gate, generator=MixedGenerator(model_generator, scripted, clock)
        )
        started = time.monotonic()
        rollouts = run_rollouts(ctx, chunk, 1)
        result[name] = _split(rollouts, clock, time.monotonic() - started)
        result[name]["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    return result


def run() -> dict[str, Any]:
    from bench.bench_rl import _config
    from bench.synthetic import with_filler
    from protege import rl
    from protege.demo import build_demo_repos
    from protege.model import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base_cfg = _config(root)
        base_cfg = base_cfg.model_copy(
            update={
                "agent": base_cfg.agent.model_copy(
                    update={
                        "sandbox": base_cfg.agent.sandbox.model_copy(
                            update={"checkout_cache_dir": str(root / "cache")}
                        )
                    }
                )
            }
        )
        build_demo_repos(root / "repos")
        model_dir = resolve_model("tiny", root / "cache-model", tiny=base_cfg.model.tiny)
        plan = rl.plan_stage(base_cfg, 1, str(model_dir), root / "rl1", None)
        built = rl.build_trainer(base_cfg, plan, root / "rl1", None, None, None)
        model_generator = built.rollout_step.ctx.generator
        tasks = [built.rollout_step.tasks[i] for i in sorted(built.rollout_step.tasks)]
        big = with_filler(tasks[0], root / "repos", root / "repos-big", FILLER_FILES)
        out: dict[str, Any] = {
            "gen_tokens_per_turn": GEN_TOKENS,
            "scripted_commands": list(SCRIPTED_COMMANDS),
        }
        for ahead in (0, 1):
            sandbox = base_cfg.agent.sandbox.model_copy(update={"prepare_ahead": ahead})
            cfg = base_cfg.model_copy(
                update={"agent": base_cfg.agent.model_copy(update={"sandbox": sandbox})}
            )
            demo_jobs = [(tasks[n % len(tasks)], n) for n in range(EPISODES + 1)]
            out[f"demo_tasks prepare_ahead={ahead}"] = episodes(built, model_generator, demo_jobs, cfg)
            big_cfg = cfg.model_copy(
                update={"tasks": cfg.tasks.model_copy(update={"repos_dir": str(root / "repos-big")})}
            )
            out[f"files={FILLER_FILES} prepare_ahead={ahead}"] = episodes(
                built, model_generator, [(big, n) for n in range(EPISODES + 1)], big_cfg
            )
    out["must_show"] = {
        name: row["measured"]["share"]
        for name, row in out.items()
        if isinstance(row, dict) and "measured" in row
    }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
