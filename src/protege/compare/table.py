"""The comparison table: one row per variant, computed from its graded episodes alone (pure), then
written as report.json, report.md and report.html with plots.

Per row: Pass@1 with its Wilson interval (protege.evaluate.metrics), the paired difference against the reference
on their common instances with McNemar's exact p-value and a paired bootstrap interval
(protege.compare.stats), expert calls per task (forced ones counted apart too), the expert's share of all
tokens, steps per task, loop rates, mean cost per task, cost per resolved task (all dollars spent over
the variant's resolved episodes) and the cost ratio: the expert-alone variant's cost per task divided by
this row's (the paper's "8.2x cheaper"). Every table is given twice: on all instances, and without the
excluded ones.
"""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.agent.expert import cost_usd
from protege.compare.stats import paired
from protege.config import CompareConfig, ExpertPrices, LoopConfig
from protege.evaluate.metrics import attempts_by_task, summarize
from protege.trajectory import Trajectory

ORACLE_POLICY = "oracle-teacher"
ORACLE_EXPERT = "oracle"
REPORT_JSON, REPORT_MD, REPORT_HTML, PLOTS_DIR = "compare.json", "compare.md", "compare.html", "plots"

COLUMNS = (
    ("pass_at_1", "Pass@1"),
    ("pass_at_1_ci", "interval"),
    ("difference", "Δ vs ref"),
    ("difference_ci", "Δ interval (bootstrap)"),
    ("mcnemar_p", "McNemar p"),
    ("expert_calls_per_task", "expert calls/task"),
    ("forced_calls_per_task", "forced/task"),
    ("expert_token_share", "expert token share"),
    ("steps_per_task", "steps/task"),
    ("loop_rates", "loop rate >L"),
    ("cost_per_task", "$/task"),
    ("cost_per_resolved_task", "$/resolved"),
    ("cost_ratio", "expert-alone $ ÷ this"),
)


@dataclass(frozen=True)
class Prices:
    """What the offline oracle's metered tokens cost when priced (CompareConfig.price_oracle_tokens)."""

    expert: ExpertPrices
    policy: ExpertPrices
    price_oracle: bool


def episode_cost(trajectory: Trajectory, prices: Prices) -> float:
    """Dollars of one episode: expert calls and API policy turns as recorded; the offline oracle's tokens
    (expert calls, or the oracle acting as the policy) at list prices when `prices.price_oracle`."""
    expert = sum(
        cost_usd(prices.expert, call.input_tokens, call.output_tokens)
        if prices.price_oracle and call.backend == ORACLE_EXPERT
        else call.cost_usd
        for call in trajectory.expert_calls
    )
    policy = trajectory.policy_cost_usd
    if prices.price_oracle and trajectory.policy_backend == ORACLE_POLICY:
        policy = cost_usd(prices.policy, trajectory.policy_input_tokens, trajectory.policy_output_tokens)
    return expert + policy


def resolved_shares(episodes: Sequence[Trajectory]) -> dict[str, float]:
    """instance_id -> share of its attempts that resolved (what the paired tests pair on)."""
    return {instance: c / n for instance, (n, c) in attempts_by_task(episodes).items()}


def variant_figures(
    episodes: Sequence[Trajectory], confidence: float, loop: LoopConfig, prices: Prices
) -> dict[str, Any]:
    """A row's own figures (no pairing): Pass@1 and interval, expert use, steps, loops, costs."""
    summary = summarize(episodes, confidence, loop)
    costs = [episode_cost(t, prices) for t in episodes]
    return {
        "tasks": summary["tasks"],
        "episodes": summary["episodes"],
        "resolved": summary["resolved"],
        "pass_at_1": summary["pass_at_1"],
        "pass_at_1_ci_low": summary["pass_at_1_ci_low"],
        "pass_at_1_ci_high": summary["pass_at_1_ci_high"],
        "expert_calls_per_task": summary["expert_calls_per_task"],
        "forced_calls_per_task": statistics.fmean(sum(c.forced for c in t.expert_calls) for t in episodes),
        "expert_token_share": summary["expert_token_share"],
        "steps_per_task": summary["steps_per_task"],
        "loop_rates": {
            key.removeprefix("loop_rate_gt_"): value
            for key, value in summary.items()
            if key.startswith("loop_rate_gt_")
        },
        "cost_per_task": statistics.fmean(costs),
        "cost_per_resolved_task": sum(costs) / summary["resolved"] if summary["resolved"] else None,
    }


def build_table(
    episodes_by_variant: dict[str, list[Trajectory]],
    reference: str,
    expert_alone: str,
    cfg: CompareConfig,
    confidence: float,
    loop: LoopConfig,
    prices: Prices,
    excluded: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """One row per variant (in the given order) over its episodes minus `excluded` instances."""
    kept = {
        name: [t for t in eps if t.instance_id not in excluded] for name, eps in episodes_by_variant.items()
    }
    rows = {
        name: {"variant": name, **variant_figures(eps, confidence, loop, prices)}
        for name, eps in kept.items()
    }
    ref_shares = resolved_shares(kept[reference])
    alone = rows.get(expert_alone, {}).get("cost_per_task")
    for name, row in rows.items():
        if name == reference:
            row.update(
                difference=0.0,
                difference_ci_low=None,
                difference_ci_high=None,
                mcnemar_p=None,
                only_variant=0,
                only_reference=0,
                paired_instances=row["tasks"],
            )
        else:
            test = paired(
                resolved_shares(kept[name]), ref_shares, confidence, cfg.bootstrap_samples, cfg.bootstrap_seed
            )
            row.update(
                difference=test.difference,
                difference_ci_low=test.ci_low,
                difference_ci_high=test.ci_high,
                mcnemar_p=test.mcnemar_p,
                only_variant=test.only_variant,
                only_reference=test.only_reference,
                paired_instances=test.instances,
            )
        cost = row["cost_per_task"]
        row["cost_ratio"] = alone / cost if alone is not None and cost > 0 else None
    return list(rows.values())


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cells(row: dict[str, Any], reference: str) -> list[str]:
    """The row's cells in COLUMNS order, as text."""
    is_ref = row["variant"] == reference
    diff_ci = (
        "(reference)" if is_ref else f"[{_num(row['difference_ci_low'])}, {_num(row['difference_ci_high'])}]"
    )
    mcnemar = (
        "–" if is_ref else f"{row['mcnemar_p']:.3g} (b={row['only_variant']}, c={row['only_reference']})"
    )
    ratio = "–" if row["cost_ratio"] is None else f"{row['cost_ratio']:.2f}x"
    return [
        f"{row['pass_at_1']:.3f} ({row['resolved']}/{row['episodes']})",
        f"[{_num(row['pass_at_1_ci_low'])}, {_num(row['pass_at_1_ci_high'])}]",
        f"{row['difference']:+.3f}",
        diff_ci,
        mcnemar,
        _num(row["expert_calls_per_task"], 2),
        _num(row["forced_calls_per_task"], 2),
        _num(row["expert_token_share"]),
        _num(row["steps_per_task"], 1),
        " / ".join(f">{k}: {v:.2f}" for k, v in row["loop_rates"].items()),
        _num(row["cost_per_task"], 4),
        _num(row["cost_per_resolved_task"], 4),
        ratio,
    ]


def header_lines(report: dict[str, Any]) -> list[str]:
    task_set, excluded = report["task_set"], report["exclusions"]
    lines = [
        f"Task set: `{task_set['source']}`, {task_set['instances']} instances, sha256 `{task_set['digest']}`.",
        f"Reference: `{report['reference']}`; cost ratio against `{report['expert_alone']}` (the expert acting alone).",
        f"Paired tests on common instances: McNemar exact (two-sided) and a {report['bootstrap_samples']}-sample "
        f"paired bootstrap; intervals at {report['confidence']:.0%}.",
    ]
    if report["oracle_priced"]:
        lines.append(
            "Costs of the offline oracle (expert, or acting alone) are its metered tokens at list prices."
        )
    if excluded:
        lines.append(f"Excluded ({len(excluded)}), with reasons:")
        lines += [f"- `{item['instance_id']}`: {item['reason']}" for item in excluded]
    else:
        lines.append("Excluded: none.")
    return lines


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    lines = ["# Variant comparison", "", *header_lines(report), ""]
    for key, title in (("all", "All instances"), ("without_exclusions", "Without the excluded instances")):
        if key not in report["tables"]:
            continue
        lines += [
            f"## {title}",
            "",
            "| variant | " + " | ".join(label for _, label in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
        ]
        lines += [
            f"| {row['variant']} | " + " | ".join(cells(row, report["reference"])) + " |"
            for row in report["tables"][key]
        ]
        lines.append("")
    lines += [f"![{name}]({path})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def render_html(report: dict[str, Any], plots: dict[str, str]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Variant comparison</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 6px;text-align:right}td:first-child{text-align:left}</style></head><body>",
        "<h1>Variant comparison</h1><ul>",
    ]
    parts += [f"<li>{esc(line.lstrip('- ').replace('`', ''))}</li>" for line in header_lines(report)]
    parts.append("</ul>")
    for key, title in (("all", "All instances"), ("without_exclusions", "Without the excluded instances")):
        if key not in report["tables"]:
            continue
        parts.append(
            f"<h2>{title}</h2><table><tr><th>variant</th>"
            + "".join(f"<th>{esc(label)}</th>" for _, label in COLUMNS)
            + "</tr>"
        )
        for row in report["tables"][key]:
            parts.append(
                f"<tr><td>{esc(row['variant'])}</td>"
                + "".join(f"<td>{esc(c)}</td>" for c in cells(row, report["reference"]))
                + "</tr>"
            )
        parts.append("</table>")
    parts += [
        f"<h3>{esc(name)}</h3><img src='{esc(path)}' alt='{esc(name)}'>" for name, path in plots.items()
    ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def plot_pass_at_1(rows: list[dict[str, Any]], path: Path) -> Path:
    """Pass@1 per variant with its interval."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 0.5 * len(rows) + 1.5), dpi=100, layout="tight")
    axes = figure.add_subplot()
    names = [row["variant"] for row in rows]
    values = [row["pass_at_1"] for row in rows]
    errors = [
        [v - row["pass_at_1_ci_low"] for v, row in zip(values, rows, strict=True)],
        [row["pass_at_1_ci_high"] - v for v, row in zip(values, rows, strict=True)],
    ]
    axes.barh(names, values, xerr=errors, color="#4c72b0", capsize=3)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("Pass@1 (interval)")
    figure.savefig(path)
    return path


def plot_cost_vs_pass(rows: list[dict[str, Any]], path: Path) -> Path:
    """Cost per task against Pass@1, one labelled point per variant."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0), dpi=100, layout="tight")
    axes = figure.add_subplot()
    for row in rows:
        axes.scatter(row["cost_per_task"], row["pass_at_1"], color="#dd8452")
        axes.annotate(
            row["variant"],
            (row["cost_per_task"], row["pass_at_1"]),
            fontsize=8,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axes.set_xlabel("cost per task ($)")
    axes.set_ylabel("Pass@1")
    figure.savefig(path)
    return path


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """compare.json, compare.md, compare.html and plots/*.png under `out_dir`; returns name -> path."""
    plots_dir = out_dir / PLOTS_DIR
    plots_dir.mkdir(parents=True, exist_ok=True)
    rows = report["tables"]["all"]
    plots = {
        "pass_at_1": plot_pass_at_1(rows, plots_dir / "pass_at_1.png"),
        "cost_vs_pass_at_1": plot_cost_vs_pass(rows, plots_dir / "cost_vs_pass_at_1.png"),
    }
    relative = {name: f"{PLOTS_DIR}/{path.name}" for name, path in plots.items()}
    paths = {"json": out_dir / REPORT_JSON, "md": out_dir / REPORT_MD, "html": out_dir / REPORT_HTML}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(render_markdown(report, relative))
    paths["html"].write_text(render_html(report, relative))
    return {**paths, **plots}
