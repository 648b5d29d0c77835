"""The learning run (issue 16): a tiny protégé that measurably learns, and its curves as files.

    make learn                                            # services up, tasks generate, then this
    python -m bench.learning [--run-name NAME] [--profile learn] [--no-track] [KEY=VALUE ...]

In this process, each phase through its own `run()` (the code the pipeline's steps call) in the method's
order: synth (oracle teacher, oracle expert) on the generated train split -> sft -> rl1 -> rl2, then eval of
the base (untrained) model, SFT, rl1 and rl2 on the held-out eval split. Every phase resumes what its
directory under `.protege/runs/<run name>/` holds, so rerunning a run name completes what is missing.

Written to `bench/results/learning.json` and `bench/results/learning.png`:
- the paper's table for the four models (Pass@1 with its interval, expert calls, steps per task, loop rates)
  and the share of their policy turns that are well-formed tool calls;
- SFT: the loss per step and the format check of bench/sft_format_check.py before (base) and after SFT;
- rl1/rl2: per step, every reward term's batch mean, the format-valid rate and the share of groups with
  non-zero advantage (the same figures the `rl1`/`rl2` MLflow runs carry per step);
- wall time per phase and the load average. With tracking on, the pipeline's MLflow run also gets the
  per-model figures (`learning/*`, one MLflow step per model: 0 base, 1 sft, 2 rl1, 3 rl2) and both files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULT = "learning"
RESULTS_DIR = Path(__file__).parent / "results"
MODELS = ("base", "sft", "rl1", "rl2")
TABLE_KEYS = (
    "pass_at_1",
    "pass_at_1_ci_low",
    "pass_at_1_ci_high",
    "resolved",
    "episodes",
    "expert_calls_per_task",
    "steps_per_task",
    "loop_rate_gt_10",
    "loop_rate_gt_20",
    "loop_rate_gt_40",
)
FORMAT_TURNS = 16


def torch_threads(requested: int) -> int:
    """`requested`, or (0) one thread when the machine is oversubscribed, else one per core. Under a 1-minute
    load of twice the core count, torch's OpenMP threads spin against other processes: a training step of the
    tiny model on a 3.3k-token sequence took 13 s with 2 threads and 4.5 s with 1 (load 21 on 2 cores). A
    load just above the core count is what `make learn`'s own task generation leaves behind; on an otherwise
    quiet machine two threads train a step in 0.65 s."""
    cores = os.cpu_count() or 1
    return requested or (1 if os.getloadavg()[0] > 2 * cores else cores)


def format_valid_rate(trajectories_file: Path) -> float:
    """Share of the policy turns of an eval's trajectories that were well-formed tool calls."""
    from protege.rl.step import format_valid_rate as rate
    from protege.trajectory import Trajectory

    lines = trajectories_file.read_text().splitlines() if trajectories_file.is_file() else []
    return rate([Trajectory.model_validate_json(line) for line in lines if line.strip()])


def sft_losses(sft_dir: Path, history: list[dict[str, Any]]) -> list[float]:
    """The loss of every SFT step: the latest checkpoint's trainer_state.json holds the steps of earlier runs
    of a resumed phase, this run's history the steps after it."""
    states = sorted(
        (sft_dir / "checkpoints").glob("checkpoint-*/trainer_state.json"),
        key=lambda path: int(path.parent.name.rpartition("-")[2]),
    )
    logged = json.loads(states[-1].read_text())["log_history"] if states else []
    by_step = {entry["step"]: entry["loss"] for entry in logged if "loss" in entry}
    by_step.update({entry["step"]: entry["loss"] for entry in history if "loss" in entry})
    return [by_step[step] for step in sorted(by_step)]


def rl_curves(history: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-step series of the RL figures issue 16 asks for, from a stage's step history."""
    keys = sorted({k for h in history for k in h if k.startswith("reward/")})
    keys += [
        "rollout/format_valid_rate",
        "rollout/groups_with_advantage",
        "rollout/expert_calls_per_traj",
        "rollout/steps_per_traj",
        "rollout/failed",
    ]
    return {"step": [h["step"] for h in history], **{k: [h.get(k) for h in history] for k in keys}}


class Clock:
    """Wall time per phase, and the load average when each ended."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.phases: dict[str, dict[str, float]] = {}

    def done(self, name: str, since: float) -> None:
        self.phases[name] = {"wall_s": round(time.monotonic() - since, 1), "load_1m": os.getloadavg()[0]}
        print(
            f"[learn] {name} done in {self.phases[name]['wall_s']:.0f}s (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )


def evaluate(cfg: Any, name: str, model: str, run_dir: Path, tracker: Any, store: Any) -> dict[str, Any]:
    from protege import evaluate as eval_phase

    out = run_dir / f"eval-{name}"
    result = eval_phase.run(cfg, model, out, tracker, store)
    row = {k: result["summary"].get(k) for k in TABLE_KEYS}
    row["format_valid_rate"] = format_valid_rate(out / "trajectories.jsonl")
    row["model"] = model
    return row


def learn(cfg: Any, run_dir: Path, tracker: Any, store: Any) -> dict[str, Any]:
    """Every phase in order (each resumes), then the four evals; returns the results document."""
    from bench.sft_format_check import check
    from protege import rl, sft, synth
    from protege.model import resolve_model

    clock, out = Clock(), {}
    # The base first, as its own phase: a warm-started tiny build (model.tiny.copy_warmup_steps) takes half an
    # hour once and is cached after; inside sft's time it would hide what the training itself costs.
    t = time.monotonic()
    base_dir = resolve_model(cfg.model.base, Path(cfg.model.cache_dir), store, tiny=cfg.model.tiny)
    clock.done("base_model", t)
    t = time.monotonic()
    kept = synth.run(cfg, run_dir / "synth", tracker, store)
    clock.done("synth", t)
    out["synth"] = {
        k: kept["metrics"].get(k) for k in ("tasks", "episodes", "kept", "kept_rate") if k in kept["metrics"]
    }
    out["synth"]["metrics"] = kept["metrics"]
    t = time.monotonic()
    tuned = sft.run(cfg, kept["dataset"], run_dir / "sft", tracker, store)
    clock.done("sft", t)
    t = time.monotonic()
    formats = {
        name: check(cfg, str(path), kept["dataset"], FORMAT_TURNS)
        for name, path in (("base", base_dir), ("sft", tuned["model_dir"]))
    }
    clock.done("format_check", t)
    out["sft"] = {
        "loss": sft_losses(run_dir / "sft", tuned["history"]),
        "data": tuned["data"],
        "format_check": {
            n: {
                k: f[k]
                for k in ("turns", "well_formed_share", "same_tool_share", "format_errors", "failed_samples")
            }
            for n, f in formats.items()
        },
    }
    stages = {}
    start = tuned["model_dir"]
    for stage, phase in ((1, "rl1"), (2, "rl2")):
        t = time.monotonic()
        stages[phase] = rl.run(cfg, stage, start, run_dir / phase, tracker, store)
        clock.done(phase, t)
        start = stages[phase]["model_dir"]
        out[phase] = rl_curves(stages[phase]["history"])
    models = {
        "base": str(base_dir),
        "sft": tuned["model_dir"],
        "rl1": stages["rl1"]["model_dir"],
        "rl2": stages["rl2"]["model_dir"],
    }
    table = {}
    for name, model in models.items():
        t = time.monotonic()
        # Only rl2's eval is the pipeline's `eval` run; the other three are figures of this run.
        table[name] = evaluate(cfg, name, model, run_dir, tracker if name == "rl2" else None, store)
        clock.done(f"eval-{name}", t)
    out["table"] = table
    out["wall_s"] = round(time.monotonic() - clock.started, 1)
    out["phases"] = clock.phases
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    """Four panels: SFT loss, RL reward per step, RL format-valid rate and groups with advantage, Pass@1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0][0]
    ax.plot(range(1, len(doc["sft"]["loss"]) + 1), doc["sft"]["loss"])
    ax.set(title="SFT loss per step", xlabel="optimizer step", ylabel="loss")
    steps = {phase: doc[phase]["step"] for phase in ("rl1", "rl2")}
    ax = axes[0][1]
    for phase in steps:
        for key in ("reward/r_total", "reward/r_loop", "reward/r_other", "reward/r_follow"):
            if key in doc[phase]:
                ax.plot(steps[phase], doc[phase][key], marker="o", label=f"{phase} {key.split('/')[1]}")
    ax.set(title="RL reward terms (batch mean) per step", xlabel="GRPO step")
    ax.legend(fontsize=7)
    ax = axes[1][0]
    for phase in steps:
        ax.plot(
            steps[phase], doc[phase]["rollout/format_valid_rate"], marker="o", label=f"{phase} format-valid"
        )
        ax.plot(
            steps[phase],
            doc[phase]["rollout/groups_with_advantage"],
            marker="s",
            linestyle="--",
            label=f"{phase} groups with advantage",
        )
    ax.set(title="RL rollouts per step", xlabel="GRPO step", ylim=(-0.05, 1.05))
    ax.legend(fontsize=7)
    ax = axes[1][1]
    rows = doc["table"]
    ax.bar([f"{m}\nPass@1" for m in rows], [rows[m]["pass_at_1"] or 0.0 for m in rows], color="tab:blue")
    ax.bar([f"{m}\nformat" for m in rows], [rows[m]["format_valid_rate"] for m in rows], color="tab:orange")
    checks = doc["sft"]["format_check"]
    ax.bar(
        [f"{m}\ncheck" for m in checks], [checks[m]["well_formed_share"] for m in checks], color="tab:green"
    )
    ax.set(title="Pass@1, format-valid eval turns, format check (training turns)", ylim=(0, 1.05))
    ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"protege learning run {doc['run_name']} ({doc['wall_s'] / 60:.1f} min)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_to_tracker(tracker: Any, doc: dict[str, Any], files: list[Path]) -> None:
    """Per-model figures on the pipeline run, one MLflow step per model, and the result files."""
    run_id = tracker.parent_run_id
    for step, name in enumerate(MODELS):
        row = doc["table"][name]
        figures = {
            f"learning/{k}": row[k] for k in (*TABLE_KEYS, "format_valid_rate") if row.get(k) is not None
        }
        tracker.log_metrics(run_id, figures, step=step)
    for file in files:
        tracker.log_artifacts(run_id, file, "learning")
    tracker.flush()


def main(argv: list[str]) -> int:
    from bench.__main__ import machine_info
    from protege.cli.common import tracker_and_store
    from protege.config import load_config

    parser = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="learn", help="config profile (default learn)")
    parser.add_argument(
        "--run-name",
        default=time.strftime("learn-%Y%m%d-%H%M%S", time.gmtime()),
        help="run name (rerun one to resume it)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where learning.json/png go")
    parser.add_argument("--no-track", dest="track", action="store_false", help="no MLflow, no S3 store")
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads (default: see torch_threads)"
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(torch_threads(args.torch_threads))
    cfg = load_config(args.profile, overrides=[*args.overrides, f"run_name={args.run_name}"])
    tracker, store = tracker_and_store(cfg, args.track, args.track)
    if tracker is not None:
        tracker.ensure_pipeline(cfg.run_name, cfg)
    run_dir = Path(cfg.services.data_dir) / "runs" / cfg.run_name
    load_before = os.getloadavg()
    status = "FAILED"
    try:
        doc = {
            "run_name": cfg.run_name,
            "profile": args.profile,
            "overrides": args.overrides,
            "load_average_at_start": load_before,
            "torch_threads": torch.get_num_threads(),
            **learn(cfg, run_dir, tracker, store),
            "load_average_at_end": os.getloadavg(),
            "machine": machine_info(),
        }
        args.results.mkdir(parents=True, exist_ok=True)
        files = [args.results / f"{RESULT}.json", args.results / f"{RESULT}.png"]
        files[0].write_text(json.dumps(doc, indent=2, default=str) + "\n")
        plot(doc, files[1])
        if tracker is not None:
            log_to_tracker(tracker, doc, files)
        status = "FINISHED"
    finally:
        if tracker is not None:
            tracker.end_pipeline(status)
    print(json.dumps({"wall_s": doc["wall_s"], "table": doc["table"]}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
