"""RL on CPU with the tiny model (the `local` profile): rollout throughput and GRPO step time.

(a) Rollouts: one GRPO step's worth of episodes (`rl.tasks_per_step` tasks × G = `rl.group_size`) played by
    `protege.rl.rollout.run_rollouts` with `rl.rollout_workers` 1 and 2, for two generators:
    - `model`: the trainer's own transformers generation from the tiny model (untrained, so its episodes
      mostly end in format errors without running a tool);
    - `scripted`: every turn a fixed valid tool call (two reads, one edit), then submit, so the sandbox
      runs real commands and the grader runs the tests of a non-empty patch.
    Reported per step: episodes/min, mean sandbox start and grading seconds per episode, and the summed
    seconds spent generating vs executing tools in the sandbox (the timed wrappers below).
(b) GRPO: a short stage-1 run (`STAGE_STEPS` optimizer steps, model generation) timed per optimizer step
    from trainer callbacks: rollout seconds (protege's `rollout/seconds`), forward/backward seconds (trl's
    micro-steps minus the rollout), optimizer step, and the checkpoint save that follows each step.

The start model is the freshly built tiny model (`resolve_model("tiny")`, random weights) standing in for
the SFT checkpoint: the tiny model's SFT is a separate phase and its output would change generation length,
not the cost structure measured here. `protege.rl.run` is `plan_stage` + `build_trainer` + `train` with a
tracker; the benchmark calls the three itself (no tracker, no store) to reach the trainer's generator.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

RESULT = "rl_cpu"
STAGE_STEPS = 3
"""Optimizer steps of the timed stage-1 run."""
WORKERS = (1, 2)
"""`rl.rollout_workers` values the rollout throughput is measured with."""
REPEATS = {"model": 2, "scripted": 2}
"""Rollout measurements per (generator, workers), the worker order reversed at each repeat (1, 2 then 2, 1),
after one warm-up episode per generator that is reported apart (`rollouts_warmup`): the first measurement
no longer pays the cold start (allocator, first generate) that made 1 worker look 6x slower than 2."""
SCRIPTED_COMMANDS = (
    "grep -rn def . | head -5",
    "git ls-files | head -20",
    "f=$(git ls-files '*.py' | grep -v test | head -1); echo '# touched by bench' >> \"$f\"; git diff --stat",
)
"""Bash commands of the scripted episode's turns (the last makes the patch non-empty); then submit."""


# --------------------------------------------------------------------------------------------------
# Timing wrappers
# --------------------------------------------------------------------------------------------------


class Clock:
    """Timed intervals per category from every rollout thread. `summed` adds them up (a call waiting on
    the HFGenerator's lock counts while it waits); `busy` is the wall time with at least one in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.intervals: dict[str, list[tuple[float, float]]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, name: str, started: float, ended: float) -> None:
        with self.lock:
            self.intervals.setdefault(name, []).append((started, ended))

    def count(self, name: str, n: int) -> None:
        with self.lock:
            self.counts[name] += n

    def _within(self, name: str, since: float, until: float) -> list[tuple[float, float]]:
        with self.lock:
            spans = list(self.intervals.get(name, []))
        return sorted((max(a, since), min(b, until)) for a, b in spans if b > since and a < until)

    def summed(self, name: str, since: float = 0.0, until: float = float("inf")) -> float:
        return sum(b - a for a, b in self._within(name, since, until))

    def busy(self, name: str, since: float = 0.0, until: float = float("inf")) -> float:
        total, reach = 0.0, since
        for a, b in self._within(name, since, until):
            total += max(0.0, b - max(a, reach))
            reach = max(reach, b)
        return total

    def calls(self, name: str) -> int:
        with self.lock:
            return len(self.intervals.get(name, []))


class TimedGenerator:
    """A protege.rl.generation.Generator that times `inner` as `generate` and counts the ids it returns."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner, self.clock = inner, clock

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        started = time.monotonic()
        ids, logprobs = self.inner.generate(prompt_ids, max_new_tokens, stop)
        self.clock.add("generate", started, time.monotonic())
        self.clock.count("generated_tokens", len(ids))
        return ids, logprobs


class TimedSandbox:
    """A Sandbox whose tool-facing calls (run, read_file, write_file, diff) and close are timed."""

    def __init__(self, inner: Any, clock: Clock) -> None:
        self.inner, self.clock = inner, clock
        self.workdir = inner.workdir

    def _timed(self, name: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return call(*args, **kwargs)
        finally:
            self.clock.add(name, started, time.monotonic())

    def run(self, command: str, timeout: float | None = None) -> Any:
        return self._timed("tool", self.inner.run, command, timeout)

    def read_file(self, path: str) -> str:
        return self._timed("tool", self.inner.read_file, path)

    def write_file(self, path: str, content: str) -> None:
        self._timed("tool", self.inner.write_file, path, content)

    def diff(self) -> str:
        return self._timed("tool", self.inner.diff)

    def close(self) -> None:
        self._timed("sandbox_close", self.inner.close)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # anything else the tools read (e.g. command_timeout_s)


def timed_opener(clock: Clock) -> Any:
    """protege.agent.sandbox.open_sandbox returning TimedSandbox (the gate times the start itself)."""
    from protege.agent.sandbox import open_sandbox

    def opener(*args: Any) -> TimedSandbox:
        return TimedSandbox(open_sandbox(*args), clock)

    return opener


class ScriptedGenerator:
    """Turn k of an episode (counted by the assistant headers in the prompt) is the bash call
    `commands[k]`, then submit: Qwen2.5 `<tool_call>` blocks, encoded as a model would emit them."""

    def __init__(self, tokenizer: Any, commands: tuple[str, ...]) -> None:
        self.tokenizer, self.commands = tokenizer, commands

    def completion(self, turn: int) -> str:
        call = (
            {"name": "bash", "arguments": {"command": self.commands[turn]}}
            if turn < len(self.commands)
            else {"name": "submit", "arguments": {}}
        )
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        turn = prompt.count("<|im_start|>assistant") - 1  # the generation prompt's header is one of them
        ids = self.tokenizer.encode(self.completion(turn), add_special_tokens=False)
        ids = [*ids, self.tokenizer.eos_token_id][:max_new_tokens]
        return ids, [0.0] * len(ids)


# --------------------------------------------------------------------------------------------------
# (a) Rollout throughput
# --------------------------------------------------------------------------------------------------


def measure_rollouts(
    built: Any, generator: Any, workers: int, logs_dir: Path, limit: int | None = None
) -> dict[str, Any]:
    """One step's rollouts (the first `limit` of them) with `generator` and `workers` threads, through
    run_rollouts and step_metrics."""
    from protege.rl.rollout import SandboxGate, run_rollouts
    from protege.rl.step import step_metrics

    step, cfg, clock = built.rollout_step, built.rollout_step.cfg, Clock()
    r = cfg.rl
    gate = SandboxGate(
        timed_opener(clock), r.sandbox_start_interval_s, r.sandbox_start_retries, r.sandbox_start_backoff_s
    )
    ctx = dataclasses.replace(
        step.ctx, generator=TimedGenerator(generator, clock), gate=gate, logs_dir=logs_dir
    )
    prompts = [iid for iid in sorted(step.tasks)[: r.tasks_per_step] for _ in range(r.group_size)]
    started = time.monotonic()
    rollouts = run_rollouts(ctx, step.jobs(prompts, 1, 0)[:limit], workers)  # step 1, one rank
    seconds = time.monotonic() - started
    metrics = step_metrics(rollouts, step.plan.reward.loop, seconds)
    episodes = len(rollouts)
    return {
        "workers": workers,
        "episodes": episodes,
        "seconds": round(seconds, 2),
        "episodes_per_min": round(metrics["rollout/episodes_per_min"], 2),
        "sandbox_start_s_per_episode": round(metrics["rollout/sandbox_start_s"], 3),
        "grade_s_per_episode": round(metrics["rollout/grade_s"], 3),
        "generate_busy_s": round(clock.busy("generate"), 2),
        "generate_summed_s": round(clock.summed("generate"), 2),
        "tool_busy_s": round(clock.busy("tool"), 2),
        "tool_summed_s": round(clock.summed("tool"), 2),
        "sandbox_close_summed_s": round(clock.summed("sandbox_close"), 3),
        "turns": clock.calls("generate"),
        "tool_calls_in_sandbox": clock.calls("tool"),
        "generated_tokens": clock.counts["generated_tokens"],
        "steps_per_episode": metrics["rollout/steps_per_traj"],
        "statuses": dict(Counter(r.trajectory.status for r in rollouts)),
        "failed": [r.failure for r in rollouts if r.failed],
    }


# --------------------------------------------------------------------------------------------------
# (b) GRPO step time
# --------------------------------------------------------------------------------------------------


def step_timer(clock: Clock) -> Any:
    """A TrainerCallback writing, per optimizer step, the times of its phases and the rollout clock."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, float]] = []
            self.logs: list[dict[str, float]] = []
            self.current: dict[str, float] = {}

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
            self.current = {"begin": time.monotonic()}

        def on_pre_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
            self.current["pre_optimizer"] = time.monotonic()

        def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
            self.current["optimizer"] = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            now = time.monotonic()
            begin = self.current["begin"]
            spent = {f"{k}_busy_s": clock.busy(k, begin, now) for k in ("generate", "tool")}
            self.steps.append(
                {
                    "step": state.global_step,
                    "end": now,
                    "step_s": now - self.current["begin"],
                    "micro_steps_s": self.current["pre_optimizer"] - self.current["begin"],
                    "optimizer_s": self.current["optimizer"] - self.current["pre_optimizer"],
                    **spent,
                }
            )

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.steps and self.steps[-1]["step"] == state.global_step:
                self.steps[-1]["save_s"] = time.monotonic() - self.steps[-1]["end"]

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if logs and "step_time" in logs:
                self.logs.append({"step": state.global_step, "step_time": float(logs["step_time"])})

    return StepTimer()


def grpo_steps(timer: Any, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: wall = rollout + forward/backward (logprobs, loss, grad clip) + optimizer (+ save after)."""
    rollout = {h["step"]: h for h in history}
    trl_time = {log["step"]: log["step_time"] for log in timer.logs}
    rows = []
    for s in timer.steps:
        h = rollout.get(s["step"], {})
        rollout_s = h.get("rollout/seconds", 0.0)
        rows.append(
            {
                "step": s["step"],
                "step_s": round(s["step_s"], 2),
                "rollout_s": round(rollout_s, 2),
                "train_s": round(s["step_s"] - rollout_s, 2),
                "forward_backward_s": round(s["micro_steps_s"] - rollout_s, 2),
                "optimizer_s": round(s["optimizer_s"], 3),
                "save_after_s": round(s.get("save_s", 0.0), 2),
                "trl_step_time_s": round(trl_time.get(s["step"], float("nan")), 2),
                "generate_busy_s": round(s["generate_busy_s"], 2),
                "tool_busy_s": round(s["tool_busy_s"], 2),
                "episodes_per_min": round(h.get("rollout/episodes_per_min", 0.0), 2),
                "sandbox_start_s_per_episode": round(h.get("rollout/sandbox_start_s", 0.0), 3),
                "grade_s_per_episode": round(h.get("rollout/grade_s", 0.0), 3),
                "policy_tokens": h.get("rollout/policy_tokens", 0.0),
                "env_tokens": h.get("rollout/env_tokens", 0.0),
                "failures": h.get("failures", []),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def _config(root: Path) -> Any:
    from protege.config import load_config

    return load_config(
        "local",
        overrides=[
            f"services.data_dir={root / 'data'}",
            f"model.cache_dir={root / 'cache'}",
            f"tasks.repos_dir={root / 'repos'}",
            f"eval.grade_logs_dir={root / 'grading'}",
            f"expert.cache_dir={root / 'expert-cache'}",
            f"rl.stage_one_steps={STAGE_STEPS}",
            f"rl.total_steps={STAGE_STEPS + 1}",
        ],
    )


def _median(rows: list[dict[str, Any]], key: str) -> float:
    """Median over the steps after the first (warm-up), or the only one."""
    values = [row[key] for row in (rows[1:] or rows)]
    return round(statistics.median(values), 2) if values else float("nan")


def _rollout_summary(rollouts: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """{generator: {"workers=N": median episodes/min over the repeats}}."""
    return {
        name: {
            f"workers={w}": statistics.median(m["episodes_per_min"] for m in runs if m["workers"] == w)
            for w in WORKERS
        }
        for name, runs in rollouts.items()
    }


def run() -> dict:
    from protege import rl
    from protege.demo import build_demo_repos
    from protege.model import resolve_model

    load_at_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = _config(root)
        started = time.monotonic()
        build_demo_repos(root / "repos")
        model_dir = resolve_model("tiny", root / "cache", tiny=cfg.model.tiny)
        setup_s = time.monotonic() - started

        out_dir = root / "rl1"
        plan = rl.plan_stage(cfg, 1, str(model_dir), out_dir, None)
        train_clock = Clock()
        timer = step_timer(train_clock)
        started = time.monotonic()
        built = rl.build_trainer(
            cfg, plan, out_dir, None, None, None, callbacks=[timer], sandbox_opener=timed_opener(train_clock)
        )
        build_s = time.monotonic() - started
        parameters = built.trainer.model.num_parameters()
        model_generator = built.rollout_step.ctx.generator  # the trainer's own (HFGenerator on CPU)

        rollouts: dict[str, list[dict[str, Any]]] = {"model": [], "scripted": []}
        scripted = ScriptedGenerator(built.rollout_step.ctx.tokenizer, SCRIPTED_COMMANDS)
        warmup = {}
        for name, generator in (("model", model_generator), ("scripted", scripted)):
            warmup[name] = measure_rollouts(built, generator, 1, root / f"grade-{name}-warmup", limit=1)
            for repeat in range(REPEATS[name]):
                for workers in WORKERS if repeat % 2 == 0 else WORKERS[::-1]:
                    logs = root / f"grade-{name}-{workers}-{repeat}"
                    rollouts[name].append(measure_rollouts(built, generator, workers, logs))

        built.rollout_step.ctx = dataclasses.replace(
            built.rollout_step.ctx, generator=TimedGenerator(model_generator, train_clock)
        )
        started = time.monotonic()
        result = rl.train(built, plan, out_dir)
        train_s = time.monotonic() - started
        steps = grpo_steps(timer, result["history"])

    r, tiny = cfg.rl, cfg.model.tiny
    return {
        "model": f"tiny (resolve_model('tiny'): untrained, {parameters} parameters, {tiny.num_hidden_layers} "
        f"layers, hidden {tiny.hidden_size}), the start and the KL reference model",
        "load_average_1m_at_start": load_at_start,
        "rollouts_per_step": r.group_size * r.tasks_per_step,
        "group_size": r.group_size,
        "tasks_per_step": r.tasks_per_step,
        "max_new_tokens_per_turn": cfg.agent.policy.max_new_tokens,
        "sandbox_backend": cfg.agent.sandbox.backend,
        "scripted_commands": list(SCRIPTED_COMMANDS),
        "setup_s": round(setup_s, 1),
        "build_trainer_s": round(build_s, 1),
        "rollouts_median_episodes_per_min": _rollout_summary(rollouts),
        "rollouts": rollouts,
        "rollouts_warmup": warmup,
        "grpo": {
            "steps": STAGE_STEPS,
            "generator": f"model ({type(model_generator).__name__}, rollout_workers={r.rollout_workers})",
            "train_call_s": round(train_s, 1),
            "per_step": steps,
            "first_step_warmup": steps[0] if steps else None,
            "median_after_first": {
                k: _median(steps, k)
                for k in (
                    "step_s",
                    "rollout_s",
                    "train_s",
                    "forward_backward_s",
                    "optimizer_s",
                    "save_after_s",
                    "trl_step_time_s",
                )
            },
        },
    }
