"""The evaluation report: `report.json` (every METHOD §7 figure + one row per episode) and `report.md`
with PNG plots (resolved by repo, steps histogram, loop-length curve, expert calls per task).

It is rendered from the stored results of an eval run alone, so `protege report PATH` re-renders it any
time from a results directory (local, or fetched from the artifact store):

    predictions.jsonl   SWE-bench predictions (instance_id, model_name_or_path, model_patch)
    trajectories.jsonl  one trajectory per (instance, attempt), as the agent ended it
    grades.jsonl        one grading row per (instance, attempt): resolved, reason, repo, swebench report
    run.json            the run's settings (model, confidence, loop lengths), written by the eval phase

A trajectory without a grading row is pending (an interrupted run) and left out of the figures; a
grading row without its trajectory is an error naming the instance. A later row for the same
(instance, attempt) replaces an earlier one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protege.config import EvalConfig, LoopConfig
from protege.evaluate.metrics import FAILURE_CATEGORIES, GRADE_REASON_KEY, episode_row, summarize
from protege.trajectory import Trajectory, read_trajectories

PREDICTIONS = "predictions.jsonl"
TRAJECTORIES = "trajectories.jsonl"
GRADES = "grades.jsonl"
RUN_INFO = "run.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"

# Plot geometry: wide enough for a repo name per bar, small enough to read inline in Markdown.
FIGURE_SIZE = (7.0, 4.0)
FIGURE_DPI = 100

# Figures shown in the Markdown summary table, in order, with their labels.
SUMMARY_ROWS = (
    ("pass_at_1", "Pass@1"),
    ("expert_calls_per_task", "expert calls per task"),
    ("expert_calls_answered_per_task", "expert calls answered per task"),
    ("expert_token_share", "expert share of all tokens"),
    ("total_tokens_per_task", "total tokens per task"),
    ("steps_per_task", "steps per task"),
    ("median_expert_cost_per_task", "median expert cost per task ($)"),
    ("median_expert_cost_per_resolved_task", "median expert cost per resolved task ($)"),
    ("median_total_cost_per_task", "median total cost per task ($)"),
)

Key = tuple[str, int]


class ReportError(ValueError):
    """The stored results cannot be read or are inconsistent; the message names the file and instance."""


@dataclass
class Results:
    """Graded episodes (grading applied to each trajectory) and what is still pending."""

    episodes: list[Trajectory]
    repos: dict[str, str] = field(default_factory=dict)
    """instance_id -> repo."""
    pending: list[Key] = field(default_factory=list)
    """(instance_id, attempt) with a trajectory but no grading row yet."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file ([] when the file does not exist)."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReportError(f"{path}:{number}: not valid JSON: {err.msg}") from None
        if not isinstance(row, dict) or "instance_id" not in row:
            raise ReportError(f"{path}:{number}: expected an object with an instance_id")
        rows.append(row)
    return rows


def read_grades(results_dir: Path) -> dict[Key, dict[str, Any]]:
    """(instance_id, attempt) -> its latest grading row."""
    return {(row["instance_id"], int(row.get("attempt", 0))): row for row in read_jsonl(results_dir / GRADES)}


def apply_grade(trajectory: Trajectory, grade: dict[str, Any]) -> Trajectory:
    """A copy of the trajectory carrying the grading result (resolved, and the failure reason in extra)."""
    extra = {**trajectory.extra, GRADE_REASON_KEY: grade.get("reason", "")}
    return trajectory.model_copy(update={"resolved": bool(grade.get("resolved")), "extra": extra})


def repo_of(instance_id: str) -> str:
    """Repo from the SWE-bench id convention `owner__name-NUMBER` (used when a row does not say)."""
    owner, _, rest = instance_id.partition("__")
    return f"{owner}/{rest.rsplit('-', 1)[0]}" if rest else instance_id


def load_results(results_dir: str | Path) -> Results:
    """Join trajectories.jsonl and grades.jsonl of a results directory (see the module docstring)."""
    results_dir = Path(results_dir)
    trajectories: dict[Key, Trajectory] = {}
    if (results_dir / TRAJECTORIES).is_file():
        for trajectory in read_trajectories(results_dir / TRAJECTORIES):
            trajectories[(trajectory.instance_id, trajectory.attempt)] = trajectory
    grades = read_grades(results_dir)
    orphans = sorted(key for key in grades if key not in trajectories)
    if orphans:
        named = ", ".join(f"{instance} (attempt {attempt})" for instance, attempt in orphans)
        raise ReportError(f"{results_dir / GRADES}: grading rows without a trajectory: {named}")
    results = Results(episodes=[])
    for key, trajectory in sorted(trajectories.items()):
        if key not in grades:
            results.pending.append(key)
            continue
        results.episodes.append(apply_grade(trajectory, grades[key]))
        results.repos[key[0]] = grades[key].get("repo") or repo_of(key[0])
    return results


def read_run_info(results_dir: Path) -> dict[str, Any]:
    path = results_dir / RUN_INFO
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON: {err.msg}") from None


def build_report(
    results: Results, confidence: float, loop: LoopConfig, run: dict[str, Any]
) -> dict[str, Any]:
    """The content of report.json: run settings, summary figures, per-episode rows, pending pairs."""
    if not results.episodes:
        raise ReportError("no graded episodes to report on")
    rows = [{"repo": results.repos[t.instance_id], **episode_row(t)} for t in results.episodes]
    return {
        "run": run,
        "summary": summarize(results.episodes, confidence, loop),
        "instances": rows,
        "pending": [{"instance_id": instance, "attempt": attempt} for instance, attempt in results.pending],
    }


# --------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot global state, safe from any thread)
# --------------------------------------------------------------------------------------------------


def _figure(counts: bool = True):
    """A figure and its axes; `counts` puts integer ticks on the y axis (episode counts)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="tight")
    axes = figure.add_subplot()
    if counts:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure, axes


def plot_resolved_by_repo(rows: list[dict[str, Any]], path: Path) -> Path:
    repos = sorted({row["repo"] for row in rows})
    total = [sum(row["repo"] == repo for row in rows) for repo in repos]
    resolved = [sum(row["repo"] == repo and row["resolved"] for row in rows) for repo in repos]
    figure, axes = _figure()
    axes.bar(repos, total, color="lightgray", label="episodes")
    axes.bar(repos, resolved, color="tab:green", label="resolved")
    axes.set_ylabel("episodes")
    axes.set_title("Resolved by repository")
    axes.tick_params(axis="x", labelrotation=30)
    axes.legend()
    figure.savefig(path)
    return path


def plot_steps_histogram(rows: list[dict[str, Any]], path: Path) -> Path:
    steps = [row["steps"] for row in rows]
    figure, axes = _figure()
    axes.hist(steps, bins=range(0, max(steps) + 2), color="tab:blue")
    axes.set_xlabel("steps per episode")
    axes.set_ylabel("episodes")
    axes.set_title("Steps per episode")
    figure.savefig(path)
    return path


def loop_curve(rows: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(L, share of episodes whose longest run exceeds L) for L = 1..longest run seen (at least L = 1)."""
    longest = [row["longest_loop"] for row in rows]
    lengths = range(1, max(max(longest, default=0), 1) + 1)
    return [(length, sum(run > length for run in longest) / len(longest)) for length in lengths]


def plot_loop_curve(rows: list[dict[str, Any]], path: Path) -> Path:
    curve = loop_curve(rows)
    figure, axes = _figure(counts=False)
    axes.step([length for length, _ in curve], [share for _, share in curve], where="post", color="tab:red")
    axes.set_xlabel("L (steps)")
    axes.set_ylabel("share with longest run > L")
    axes.set_ylim(0, 1.05)
    axes.set_title("Loop-length curve")
    figure.savefig(path)
    return path


def plot_expert_calls(rows: list[dict[str, Any]], path: Path) -> Path:
    calls = [row["expert_calls"] for row in rows]
    counts = list(range(0, max(calls) + 1))
    figure, axes = _figure()
    axes.bar(counts, [calls.count(count) for count in counts], color="tab:purple")
    axes.set_xlabel("expert calls per episode")
    axes.set_ylabel("episodes")
    axes.set_xticks(counts)
    axes.set_title("Expert calls per task")
    figure.savefig(path)
    return path


PLOTS = {
    "resolved_by_repo": plot_resolved_by_repo,
    "steps_histogram": plot_steps_histogram,
    "loop_curve": plot_loop_curve,
    "expert_calls": plot_expert_calls,
}


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _rate_keys(summary: dict[str, Any]) -> list[str]:
    """pass@k for k >= 2 and every loop rate, in the summary's order."""
    pass_at_k = [
        key for key in summary if key.startswith("pass_at_") and key.removeprefix("pass_at_").isdigit()
    ]
    loop_rates = [key for key in summary if key.startswith("loop_rate_gt_")]
    return [key for key in pass_at_k if key != "pass_at_1"] + loop_rates


def _rate_label(key: str) -> str:
    if key.startswith("loop_rate_gt_"):
        return f"share with a loop > {key.removeprefix('loop_rate_gt_')} steps"
    return f"pass@{key.removeprefix('pass_at_')}"


def render_markdown(report: dict[str, Any], plots: dict[str, Path]) -> str:
    summary, run = report["summary"], report["run"]
    lines = [f"# Evaluation report: {run.get('model', 'unknown model')}", ""]
    lines += [f"- {key}: `{value}`" for key, value in run.items()]
    lines += ["", "## Figures (METHOD §7)", "", "| figure | value |", "|---|---|"]
    confidence = round(summary["confidence"] * 100)
    interval = f"[{summary['pass_at_1_ci_low']:.4f}, {summary['pass_at_1_ci_high']:.4f}]"
    lines.append(
        f"| resolved / episodes / tasks | {summary['resolved']} / {summary['episodes']} / {summary['tasks']} |"
    )
    for key, label in SUMMARY_ROWS:
        lines.append(f"| {label} | {_fmt(summary[key])} |")
    lines.append(f"| Pass@1 {confidence}% Wilson interval | {interval} |")
    lines += [f"| {_rate_label(key)} | {_fmt(summary[key])} |" for key in _rate_keys(summary)]
    lines += ["", "## Failure breakdown", "", "| reason | episodes |", "|---|---|"]
    lines += [f"| {category} | {summary['failures'][category]} |" for category in FAILURE_CATEGORIES]
    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        lines += [f"![{name}]({path.parent.name}/{path.name})", ""]
    lines += [
        "",
        "## Episodes",
        "",
        "| instance | attempt | resolved | status | failure | steps | longest run | expert calls | expert $ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["instances"]:
        lines.append(
            f"| {row['instance_id']} | {row['attempt']} | {'yes' if row['resolved'] else 'no'} | {row['status']} | "
            f"{row['failure'] or ''} | {row['steps']} | {row['longest_loop']} | {row['expert_calls']} | "
            f"{row['expert_cost_usd']:.4f} |"
        )
    if report["pending"]:
        lines += ["", f"{len(report['pending'])} episode(s) not graded yet (left out of every figure)."]
    return "\n".join(lines) + "\n"


def write_report(
    results_dir: str | Path, *, confidence: float | None = None, loop: LoopConfig | None = None
) -> dict[str, Path]:
    """Render report.json, report.md and plots/*.png from a results directory; returns name -> path.

    confidence and loop lengths default to the run's own settings (run.json), else the config defaults.
    """
    results_dir = Path(results_dir)
    run = read_run_info(results_dir)
    confidence = confidence if confidence is not None else run.get("confidence", EvalConfig().confidence)
    if loop is None:
        loop = LoopConfig(
            **({"metric_lengths": run["loop_metric_lengths"]} if "loop_metric_lengths" in run else {})
        )
    report = build_report(load_results(results_dir), confidence, loop, run)
    plots_dir = results_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    plots = {name: plot(report["instances"], plots_dir / f"{name}.png") for name, plot in PLOTS.items()}
    (results_dir / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (results_dir / REPORT_MD).write_text(render_markdown(report, plots))
    return {"report_json": results_dir / REPORT_JSON, "report_md": results_dir / REPORT_MD, **plots}
