"""`protege demo`: the method's phases end to end on this machine, in one process, against the local
services (`protege services up`), then a summary table.

Order (METHOD.md): verify task sets -> synth (oracle teacher + oracle expert with the gold patch)
-> sft (tiny Qwen2 model) -> rl1 -> rl2 -> eval (the SFT model with the oracle expert) -> register.
Phases whose module is not in this checkout yet are listed as `not built` rather than faked. This is the
in-process twin of the KFP pipeline: same `run` functions, no containers.

    make demo            # = protege services up && protege demo
    protege demo --profile local sft.max_steps=20
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig

DEMO_DIR = ".protege/demo"


class Step:
    """One row of the summary: name, wall time, key figures."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = 0.0
        self.figures = ""
        self.status = "ok"


def _timed(steps: list[Step], name: str, body: Callable[[Step], Any]) -> Any:
    step = Step(name)
    steps.append(step)
    print(f"\n=== {name} " + "=" * (70 - len(name)), flush=True)
    started = time.monotonic()
    try:
        return body(step)
    except Exception:
        step.status = "FAILED"
        raise
    finally:
        step.seconds = time.monotonic() - started


def _verify(cfg: ProtegeConfig, out: Path, tracker: Any, step: Step) -> None:
    from protege.demo import build_demo_repos
    from protege.tasksets import select_tasks
    from protege.verify import verify_task_set

    build_demo_repos(Path(cfg.tasks.repos_dir))
    selection = select_tasks(cfg.tasks)
    tasks = selection.train + selection.eval
    report = verify_task_set(tasks, cfg, cfg.tasks.repos_dir, logs_dir=out / "verify")
    if report.broken:
        raise RuntimeError("broken task instances:\n" + report.table())
    tracker.set_tags(tracker.parent_run_id, {"protege.verify": f"{len(tasks)} ok"})
    step.figures = f"{len(tasks)} tasks: gold resolves, empty fails ({len(selection.train)} train / {len(selection.eval)} eval)"


def _synth(cfg: ProtegeConfig, out: Path, tracker: Any, store: Any, step: Step) -> str:
    from protege import synth

    result = synth.run(cfg, out / "synth", tracker=tracker, store=store)
    summary, metrics = result["summary"], result["metrics"]
    step.figures = (
        f"kept {summary['kept']}/{summary['episodes']} trajectories, "
        f"expert calls/trajectory {metrics['expert_calls_per_trajectory']:.1f}, dataset sha256 {result['digest'][:12]}"
    )
    return str(result["uri"] or result["dataset"])


def _sft(cfg: ProtegeConfig, dataset: str, out: Path, tracker: Any, store: Any, step: Step) -> str:
    from protege import sft

    result = sft.run(cfg, dataset, out / "sft", tracker=tracker, store=store)
    history = result.get("history") or []
    losses = [h["loss"] for h in history if "loss" in h]
    loss = f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, " if losses else ""
    step.figures = (
        f"{loss}{result['global_step']} steps, model {result.get('model_uri') or result['model_dir']}"
    )
    return str(result["model_dir"])


def _eval(cfg: ProtegeConfig, model: str, out: Path, tracker: Any, store: Any, step: Step) -> dict[str, Any]:
    from protege import evaluate

    result = evaluate.run(cfg, model, out / "eval", tracker=tracker, store=store)
    m = result["summary"]
    step.figures = (
        f"Pass@1 {m['pass_at_1']:.2f} on {m['tasks']} tasks, "
        f"expert calls/task {m['expert_calls_per_task']:.1f}, steps/task {m['steps_per_task']:.1f}"
    )
    return result


def _not_built(steps: list[Step], name: str, module: str, issue: str) -> bool:
    if importlib.util.find_spec(module) is not None:
        return False
    step = Step(name)
    step.status = "not built"
    step.figures = f"{module} is not in this checkout yet ({issue})"
    steps.append(step)
    return True


def run(cfg: ProtegeConfig, out_dir: str | Path = DEMO_DIR) -> list[Step]:
    """Run every built phase in order against the configured store and tracking server."""
    from protege.store import S3ArtifactStore
    from protege.tracking import Tracker

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = S3ArtifactStore.from_config(cfg.store)
    store.ensure_bucket()
    tracker = Tracker(cfg.tracking)
    tracker.start_pipeline(cfg.run_name, cfg, tags={"protege.entry": "protege demo"})
    steps: list[Step] = []
    status = "FAILED"
    try:
        _timed(steps, "verify", lambda s: _verify(cfg, out, tracker, s))
        dataset = _timed(steps, "synth", lambda s: _synth(cfg, out, tracker, store, s))
        model = cfg.model.base
        if not _not_built(steps, "sft", "protege.sft", "issue 6"):
            model = _timed(steps, "sft", lambda s: _sft(cfg, dataset, out, tracker, store, s))
        for stage in ("rl1", "rl2"):
            _not_built(steps, stage, "protege.rl", "issue 7")
        _timed(steps, "eval", lambda s: _eval(cfg, model, out, tracker, store, s))
        _not_built(steps, "register", "protege.register", "issue 8")
        status = "FINISHED"
    finally:
        tracker.end_pipeline(status)
        _print_summary(steps, cfg, tracker.parent_run_id)
    return steps


def _print_summary(steps: list[Step], cfg: ProtegeConfig, run_id: str | None) -> None:
    print("\n" + "=" * 100)
    print(f"{'step':<10} {'status':<10} {'wall':>8}  key figures")
    for step in steps:
        print(f"{step.name:<10} {step.status:<10} {step.seconds:>7.1f}s  {step.figures}")
    print("=" * 100)
    print(f"MLflow: {cfg.tracking.uri}  experiment '{cfg.tracking.experiment}', pipeline run {run_id}")
    print(f"Artifacts: s3://{cfg.store.bucket}/{cfg.run_name}/ on {cfg.store.endpoint}")


def _cli(args: argparse.Namespace) -> int:
    from protege.cli import load_cfg

    steps = run(load_cfg(args), args.out)
    return 0 if all(s.status in ("ok", "not built") for s in steps) else 1


def add_cli(sub: argparse._SubParsersAction) -> None:
    from protege.cli import _profile_args

    demo = sub.add_parser("demo", help="run the phases end to end locally (needs `protege services up`)")
    demo.add_argument("--out", default=DEMO_DIR, help=f"working directory (default: {DEMO_DIR})")
    _profile_args(demo)
    demo.set_defaults(func=_cli)
