"""The summary `protege run` prints: a table (step, status, wall time, key figures), the MLflow parent
run's URL, the registered model and the `protege lineage` command that traces it.

`gather` reads (the steps' output parameters, the parent run's nested MLflow runs, the verify report in
the store); `summarize` and `render` are pure. Reading is best effort: what cannot be read becomes a
note under the table, never a failure of a run that already finished.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig

TASKS = ("verify-tasks", "synth", "sft", "rl1", "rl2", "eval", "register")
"""KFP task names of the pipeline, in order."""
StepClock = Callable[[str], tuple[str, float | None]]
"""task -> (status, wall seconds or None), e.g. protege.pipeline.local.TaskClock.step."""


HISTORY_PHASES = ("sft", "rl1", "rl2")
"""Phases whose figures compare a metric's first and last value (loss, reward)."""
PHASE_OF = {"verify-tasks": "verify"} | {task: task for task in TASKS[1:]}


@dataclass
class Facts:
    """What a step left: its output parameters and its nested MLflow run's metrics (latest and first)."""

    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    step: str
    status: str
    seconds: float | None
    figures: str


@dataclass
class Summary:
    rows: list[Row]
    seconds: float
    mlflow_url: str = ""
    model: str = ""
    model_ref: str = ""
    notes: list[str] = field(default_factory=list)


def _verify_figures(f: Facts) -> str:
    if "train" not in f.extra:
        return f"report {f.outputs.get('report_uri', '?')}" if f.outputs else ""
    train, eval_ = f.extra["train"], f.extra["eval"]
    return f"{train + eval_} tasks ({train} train / {eval_} eval): gold resolves, empty fails"


def _synth_figures(f: Facts) -> str:
    m = f.metrics
    if "kept" not in m:
        return ""
    digest = str(f.outputs.get("dataset_digest", ""))[:12]
    return (
        f"kept {m['kept']:.0f}/{m.get('episodes', 0):.0f} trajectories, "
        f"{m.get('expert_calls_per_trajectory', 0):.1f} expert calls/trajectory, dataset sha256 {digest}"
    )


def _sft_data(m: dict[str, float]) -> str:
    """ "trained on 4/8 trajectories: 4 over max_length 4096; " from the data/* figures (protege.sft)."""
    if "data/trained_on" not in m:
        return ""
    head = f"trained on {m['data/trained_on']:.0f}/{m.get('data/records', 0):.0f} trajectories"
    drops = []
    if m.get("data/dropped_too_long"):
        limit = f" {m['data/max_length']:.0f}" if "data/max_length" in m else ""
        drops.append(f"{m['data/dropped_too_long']:.0f} over max_length{limit}")
    if m.get("data/dropped_no_targets"):
        drops.append(f"{m['data/dropped_no_targets']:.0f} without policy turns")
    return f"{head}: {', '.join(drops)}; " if drops else f"{head}, none dropped; "


def _sft_figures(f: Facts) -> str:
    data = _sft_data(f.metrics)
    if "loss" not in f.metrics:  # nothing trained now (a resumed run past its last step), or no output
        return (
            f"{data}model {f.outputs['model_uri']} (no training logged)" if "model_uri" in f.outputs else data
        )
    uniform = f.metrics.get("data/uniform_loss")
    guess = f" (uniform guess {uniform:.2f})" if uniform is not None else ""
    loss = f"loss {f.first['loss']:.3f} -> {f.metrics['loss']:.3f}{guess}"
    return f"{data}{loss}, model {f.outputs.get('model_uri', '?')}"


def _rl_figures(f: Facts) -> str:
    key = "reward/r_total"  # batch mean of R_total over a step's scored rollouts (protege.rl.step)
    if key not in f.metrics:
        return f"model {f.outputs['Output']} (no training logged)" if "Output" in f.outputs else ""
    calls = f.metrics.get("rollout/expert_calls_per_traj")
    expert = f", {calls:.1f} expert calls/trajectory" if calls is not None else ""
    reward = f"mean R_total {f.first.get(key, f.metrics[key]):.3f} -> {f.metrics[key]:.3f}"
    return f"{reward}{expert}, model {f.outputs.get('Output', '?')}"


def _eval_figures(f: Facts) -> str:
    m = f.metrics
    if "pass_at_1" not in m:
        return f"Pass@1 {f.outputs['pass_at_1']:.3f}" if "pass_at_1" in f.outputs else ""
    ci = f" [CI {m['pass_at_1_ci_low']:.2f}, {m['pass_at_1_ci_high']:.2f}]" if "pass_at_1_ci_low" in m else ""
    calls = f", {m['expert_calls_per_task']:.1f} expert calls/task" if "expert_calls_per_task" in m else ""
    return f"Pass@1 {m['pass_at_1']:.2f}{ci} on {m.get('episodes', 0):.0f} episodes{calls}"


def _register_figures(f: Facts) -> str:
    out = f.outputs
    if "version" not in out:
        return ""
    verdict = "champion" if out.get("promoted") else "no alias"
    return f"v{int(out['version'])} -> {verdict}: {out.get('reason', '')}"


FIGURES = {
    "verify-tasks": _verify_figures,
    "synth": _synth_figures,
    "sft": _sft_figures,
    "rl1": _rl_figures,
    "rl2": _rl_figures,
    "eval": _eval_figures,
    "register": _register_figures,
}


def summarize(cfg: ProtegeConfig, clock: StepClock, facts: dict[str, Facts], seconds: float) -> Summary:
    """The table rows and the closing lines from the clock and the facts (pure)."""
    rows = []
    for task in TASKS:
        status, wall = clock(task)
        rows.append(Row(PHASE_OF[task], status, wall, FIGURES[task](facts.get(task, Facts()))))
    summary = Summary(rows, seconds)
    out = facts.get("register", Facts()).outputs
    if "version" in out:
        name, version = cfg.tracking.registered_model, int(out["version"])
        promoted = bool(out.get("promoted"))
        alias = "alias champion" if promoted else f"no alias ({out.get('reason', '')})"
        summary.model = f"{name} v{version}, {alias}"
        summary.model_ref = f"{name}@champion" if promoted else f"{name}/{version}"
    return summary


def gather(cfg: ProtegeConfig, outputs: dict[str, dict[str, Any]]) -> tuple[dict[str, Facts], str, list[str]]:
    """Facts per task from the outputs, the parent run's nested runs and the verify report; the parent
    run's URL; notes on what could not be read (the summary degrades, it does not fail)."""
    from protege.store import S3ArtifactStore, StoreError
    from protege.tracking import Tracker, TrackingError

    facts = {task: Facts(outputs=dict(outputs.get(task, {}))) for task in TASKS}
    notes, url = [], ""
    report_uri = facts["verify-tasks"].outputs.get("report_uri", "")
    if report_uri:
        try:
            path = S3ArtifactStore.from_config(cfg.store).fetch(
                report_uri, Path(cfg.services.data_dir) / "runs" / cfg.run_name / "summary"
            )
            report = json.loads(path.read_text())
            facts["verify-tasks"].extra = {
                split: len(report[split]["verdicts"]) for split in ("train", "eval")
            }
        except (StoreError, OSError, KeyError, ValueError) as err:
            notes.append(f"verify report {report_uri}: {err}")
    parent = facts["sft"].outputs.get("parent_run_id", "")
    if not parent:
        return facts, url, notes
    try:
        tracker = Tracker(cfg.tracking)
        url = f"{cfg.tracking.uri.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs/{parent}"
        for phase_run in tracker.nested_runs(parent):
            task = {v: k for k, v in PHASE_OF.items()}.get(phase_run.info.run_name)
            if task is None:
                continue
            facts[task].metrics = dict(phase_run.data.metrics)
            if task in HISTORY_PHASES:
                facts[task].first = _first_values(tracker, phase_run)
    except TrackingError as err:
        notes.append(f"MLflow: {err}")
    return facts, url, notes


def _first_values(tracker: Any, run: Any) -> dict[str, float]:
    first = {}
    for key in run.data.metrics:
        history = tracker.metric_history(run.info.run_id, key)
        if history:
            first[key] = min(history, key=lambda m: (m.step, m.timestamp)).value
    return first


def render(summary: Summary, profile: str) -> str:
    """The table and the closing lines as printed at the end of `protege run`."""
    width = max(len(row.step) for row in summary.rows)
    lines = ["", f"{'step':<{width}}  {'status':<8} {'wall':>8}  key figures"]
    for row in summary.rows:
        wall = f"{row.seconds:.1f}s" if row.seconds is not None else "-"
        lines.append(f"{row.step:<{width}}  {row.status:<8} {wall:>8}  {row.figures}")
    lines.append(f"{'total':<{width}}  {'':<8} {summary.seconds:>7.1f}s")
    lines.append("")
    lines.append(f"MLflow parent run: {summary.mlflow_url or '(none: sft did not open it)'}")
    if summary.model:
        lines.append(f"registered model:  {summary.model}")
        lines.append(f"trace it:          protege lineage --profile {profile} {summary.model_ref}")
    else:
        lines.append("registered model:  none (register did not finish)")
    lines += [f"note: {note}" for note in summary.notes]
    return "\n".join(lines)
