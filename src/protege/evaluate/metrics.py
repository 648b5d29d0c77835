"""The figures of METHOD §7, computed from graded trajectories. Pure functions: no I/O.

Every figure is over episodes (one graded trajectory per (instance, attempt)); with one attempt per
task an episode is a task, so "per task" reads as the paper does. Pass@1 is the mean over tasks of the
share of attempts that resolved (the unbiased pass@1); its interval is the Wilson score interval over
all graded attempts. pass@k (k >= 2) uses the unbiased estimator of Chen et al. (2021) per task,
averaged over tasks, for every k up to the smallest attempt count of any task.

A trajectory whose `resolved` is None (never graded, e.g. it crashed) counts as unresolved.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from protege.agent import loops
from protege.config import LoopConfig
from protege.trajectory import Trajectory

# The failure breakdown's categories, in report order (METHOD §7 plus `timeout` and `other`).
FAILURE_CATEGORIES = (
    "step_limit",
    "cost_limit",
    "no_submission",
    "patch_apply_failed",
    "tests_failed",
    "timeout",
    "policy_error",
    "sandbox_error",
    "expert_error",
    "other",
)

INFRA_FAILURES = ("policy_error", "sandbox_error", "expert_error")
"""Categories that say the infrastructure failed, not the policy: the policy server did not answer, a
sandbox could not run, the expert was out. They are not scores: above `eval.max_infra_failure_share` of
such episodes the eval phase fails instead of reporting a Pass@1 (protege.evaluate)."""

# An episode that ended on one of these statuses failed for that reason, whatever its patch did.
STATUS_FAILURES = {
    "step_limit": "step_limit",
    "cost_limit": "cost_limit",
    "budget_exhausted": "cost_limit",
    "sandbox_error": "sandbox_error",
    "policy_error": "policy_error",
    "timeout": "timeout",
}

# Grading reasons (the grading result's `reason`, stored by the eval phase in `extra["grade_reason"]`)
# and the category each falls in. Unknown reasons fall in `other`.
GRADE_FAILURES = {
    "empty_patch": "no_submission",
    "patch_apply_failed": "patch_apply_failed",
    "tests_failed": "tests_failed",
    "sandbox_error": "sandbox_error",
    "timeout": "timeout",
}

CRASHED = "crashed"
"""Grade reason of a pair whose worker raised (no episode to grade): counted as `other`."""

GRADE_REASON_KEY = "grade_reason"
"""Key of Trajectory.extra holding the grading's failure reason."""


class MetricsError(ValueError):
    """The trajectories cannot be summarised (e.g. none given, or a bad confidence level)."""


# --------------------------------------------------------------------------------------------------
# Pass rates
# --------------------------------------------------------------------------------------------------


def wilson_interval(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion at the given two-sided confidence level."""
    if trials <= 0:
        raise MetricsError(f"Wilson interval needs at least one trial, got {trials}")
    if not 0 <= successes <= trials:
        raise MetricsError(f"successes must lie in [0, {trials}], got {successes}")
    if not 0 < confidence < 1:
        raise MetricsError(f"confidence must lie in (0, 1), got {confidence}")
    z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave a 1e-17 residue.
    low = 0.0 if successes == 0 else centre - half
    high = 1.0 if successes == trials else centre + half
    return low, high


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with n attempts of which c resolved: 1 - C(n-c, k) / C(n, k)."""
    if not 1 <= k <= n:
        raise MetricsError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise MetricsError(f"resolved count must lie in [0, {n}], got {c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def attempts_by_task(trajectories: Sequence[Trajectory]) -> dict[str, tuple[int, int]]:
    """instance_id -> (attempts, resolved attempts)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for trajectory in trajectories:
        counts[trajectory.instance_id][0] += 1
        counts[trajectory.instance_id][1] += bool(trajectory.resolved)
    return {instance: (n, c) for instance, (n, c) in counts.items()}


def pass_rates(trajectories: Sequence[Trajectory], confidence: float) -> dict[str, Any]:
    """Pass@1, its Wilson interval, and pass@k for every k the attempt counts allow (k >= 2)."""
    per_task = attempts_by_task(trajectories)
    resolved = sum(c for _, c in per_task.values())
    attempts = sum(n for n, _ in per_task.values())
    low, high = wilson_interval(resolved, attempts, confidence)
    figures: dict[str, Any] = {
        "tasks": len(per_task),
        "episodes": attempts,
        "resolved": resolved,
        "pass_at_1": statistics.fmean(c / n for n, c in per_task.values()),
        "pass_at_1_ci_low": low,
        "pass_at_1_ci_high": high,
        "confidence": confidence,
    }
    for k in range(2, min(n for n, _ in per_task.values()) + 1):
        figures[f"pass_at_{k}"] = statistics.fmean(pass_at_k(n, c, k) for n, c in per_task.values())
    return figures


# --------------------------------------------------------------------------------------------------
# Per-episode figures
# --------------------------------------------------------------------------------------------------


def longest_loop(trajectory: Trajectory) -> int:
    """Length of the longest run of equal consecutive base commands (METHOD §6); 0 with no action."""
    return loops.longest_run(action.base_command for action in trajectory.actions)


def failure_reason(trajectory: Trajectory) -> str | None:
    """The failure-breakdown category of an unresolved episode; None for a resolved one.

    The episode's terminal status decides first (a step-limit episode failed for its step limit even if
    its partial patch was graded; a `policy_error` episode lost its policy server); then a crashed pair
    is `other`; then an episode with an expert call that failed (`error`: transport, overload, outage)
    is an `expert_error`; then an empty patch is a missing submission; then the grading reason.
    """
    if trajectory.resolved:
        return None
    if trajectory.status in STATUS_FAILURES:
        return STATUS_FAILURES[trajectory.status]
    if trajectory.extra.get(GRADE_REASON_KEY) == CRASHED:
        return "other"
    if any(call.status == "error" for call in trajectory.expert_calls):
        return "expert_error"
    if not trajectory.patch.strip():
        return "no_submission"
    return GRADE_FAILURES.get(str(trajectory.extra.get(GRADE_REASON_KEY, "")), "other")


def episode_row(trajectory: Trajectory) -> dict[str, Any]:
    """The per-instance row of the report: every per-episode figure the summary is built from."""
    return {
        "instance_id": trajectory.instance_id,
        "attempt": trajectory.attempt,
        "resolved": bool(trajectory.resolved),
        "status": trajectory.status,
        "failure": failure_reason(trajectory),
        "steps": trajectory.steps,
        "longest_loop": longest_loop(trajectory),
        "expert_calls": len(trajectory.expert_calls),
        "expert_calls_answered": sum(call.status == "ok" for call in trajectory.expert_calls),
        "expert_tokens": trajectory.expert_tokens,
        "total_tokens": trajectory.total_tokens,
        "expert_cost_usd": trajectory.expert_cost_usd,
        "total_cost_usd": trajectory.cost_usd,
        "wall_time_s": trajectory.wall_time_s,
    }


# --------------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------------


def failure_breakdown(trajectories: Sequence[Trajectory]) -> dict[str, int]:
    """Count of unresolved episodes per failure category (every category present, zeros included)."""
    counts = Counter(reason for reason in map(failure_reason, trajectories) if reason is not None)
    return {category: counts.get(category, 0) for category in FAILURE_CATEGORIES}


def infra_failures(breakdown: dict[str, int]) -> int:
    """Episodes of a failure breakdown that failed on infrastructure (INFRA_FAILURES)."""
    return sum(breakdown.get(category, 0) for category in INFRA_FAILURES)


def _median_or_none(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(trajectories: Sequence[Trajectory], confidence: float, loop: LoopConfig) -> dict[str, Any]:
    """Every METHOD §7 figure over graded episodes (see the module docstring for the conventions).

    Keys: the pass_rates() keys; expert_calls_per_task, expert_calls_answered_per_task,
    expert_token_share, total_tokens_per_task, steps_per_task, loop_rate_gt_<L> for each L of
    loop.metric_lengths (share of episodes whose longest run of equal base commands exceeds L),
    median_expert_cost_per_task, median_expert_cost_per_resolved_task (None with no resolved episode),
    median_total_cost_per_task, failures (category -> count), infra_failure_share (share of episodes
    in an INFRA_FAILURES category).
    """
    if not trajectories:
        raise MetricsError("no graded trajectories to summarise")
    rows = [episode_row(t) for t in trajectories]
    expert_tokens = sum(row["expert_tokens"] for row in rows)
    all_tokens = sum(row["total_tokens"] for row in rows)
    figures = pass_rates(trajectories, confidence)
    figures.update(
        {
            "expert_calls_per_task": statistics.fmean(row["expert_calls"] for row in rows),
            "expert_calls_answered_per_task": statistics.fmean(row["expert_calls_answered"] for row in rows),
            "expert_token_share": expert_tokens / all_tokens if all_tokens else 0.0,
            "total_tokens_per_task": statistics.fmean(row["total_tokens"] for row in rows),
            "steps_per_task": statistics.fmean(row["steps"] for row in rows),
            **{
                f"loop_rate_gt_{length}": rate
                for length, rate in loops.loop_rates(trajectories, loop).items()
            },
            "median_expert_cost_per_task": statistics.median(row["expert_cost_usd"] for row in rows),
            "median_expert_cost_per_resolved_task": _median_or_none(
                [row["expert_cost_usd"] for row in rows if row["resolved"]]
            ),
            "median_total_cost_per_task": statistics.median(row["total_cost_usd"] for row in rows),
            "failures": failure_breakdown(trajectories),
        }
    )
    figures["infra_failure_share"] = infra_failures(figures["failures"]) / len(rows)
    return figures


def numeric_metrics(figures: dict[str, Any]) -> dict[str, float]:
    """The summary flattened to the numbers a tracker logs (`failures.tests_failed`, ...; None dropped)."""
    flat: dict[str, float] = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": float(count) for inner, count in value.items()})
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat
