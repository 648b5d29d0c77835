"""METHOD §7 figures against values computed by hand on small fixture trajectories."""

from __future__ import annotations

import pytest

from protege.config import LoopConfig
from protege.evaluate.metrics import (
    FAILURE_CATEGORIES,
    MetricsError,
    failure_breakdown,
    failure_reason,
    numeric_metrics,
    pass_at_k,
    summarize,
    wilson_interval,
)
from protege.trajectory import Action, ExpertCall, Trajectory

LOOP = LoopConfig(metric_lengths=[10, 20, 40])
PATCH = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n"


def actions(*groups: tuple[str, int]) -> list[Action]:
    """Consecutive actions: (base_command, how many times in a row), in order."""
    commands = [base for base, count in groups for _ in range(count)]
    return [
        Action(step=i, tool="bash", arguments={}, base_command=base) for i, base in enumerate(commands, 1)
    ]


def call(input_tokens: int, output_tokens: int, cost: float, status: str = "ok") -> ExpertCall:
    return ExpertCall(
        step=1,
        question="q",
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
    )


def episode(instance_id: str, resolved: bool, **fields) -> Trajectory:
    return Trajectory(instance_id=instance_id, resolved=resolved, **fields)


@pytest.fixture
def four() -> list[Trajectory]:
    """3 of 4 resolved; longest runs 3, 12, 25, 45; steps 5, 13, 26, 45."""
    return [
        episode(
            "a",
            True,
            status="submitted",
            patch=PATCH,
            actions=actions(("navigate", 3), ("python", 1), ("submit", 1)),
            expert_calls=[call(100, 50, 0.01), call(200, 50, 0.02)],
            policy_input_tokens=1000,
            policy_output_tokens=100,
        ),
        episode(
            "b",
            True,
            status="submitted",
            patch=PATCH,
            actions=actions(("navigate", 12), ("submit", 1)),
            expert_calls=[call(300, 100, 0.05)],
            policy_input_tokens=2000,
            policy_output_tokens=200,
        ),
        episode(
            "c",
            True,
            status="submitted",
            patch=PATCH,
            actions=actions(("python", 25), ("submit", 1)),
            expert_calls=[call(100, 100, 0.01), call(0, 0, 0.0, status="quota_exceeded")],
            policy_input_tokens=3000,
            policy_output_tokens=300,
        ),
        episode(
            "d",
            False,
            status="step_limit",
            patch=PATCH,
            actions=actions(("navigate", 45)),
            policy_input_tokens=500,
            policy_output_tokens=50,
        ),
    ]


def test_wilson_interval_of_three_in_four_at_95_percent():
    # By hand: z = 1.959964, p = 0.75, n = 4: centre 0.62753, half-width 0.32688.
    low, high = wilson_interval(3, 4, 0.95)
    assert low == pytest.approx(0.3006, abs=1e-4)
    assert high == pytest.approx(0.9544, abs=1e-4)


def test_wilson_interval_edges_and_confidence():
    assert wilson_interval(0, 10, 0.95)[0] == 0.0
    assert wilson_interval(10, 10, 0.95)[1] == 1.0
    wide, narrow = wilson_interval(5, 10, 0.99), wilson_interval(5, 10, 0.80)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(MetricsError, match="at least one trial"):
        wilson_interval(0, 0, 0.95)
    with pytest.raises(MetricsError, match="confidence"):
        wilson_interval(1, 2, 1.0)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (3, 1, 1, 1 / 3),
        (3, 1, 2, 2 / 3),
        (3, 1, 3, 1.0),
        (3, 0, 2, 0.0),
        (5, 2, 2, 1 - 3 / 10),
        (4, 4, 1, 1.0),
    ],
)
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_attempts():
    with pytest.raises(MetricsError, match="k=3, n=2"):
        pass_at_k(2, 1, 3)


def test_summary_figures_match_hand_computed_values(four):
    figures = summarize(four, 0.95, LOOP)
    assert figures["tasks"] == 4 and figures["episodes"] == 4 and figures["resolved"] == 3
    assert figures["pass_at_1"] == 0.75
    assert figures["pass_at_1_ci_low"] == pytest.approx(0.3006, abs=1e-4)
    assert figures["pass_at_1_ci_high"] == pytest.approx(0.9544, abs=1e-4)
    assert "pass_at_2" not in figures  # one attempt per task: no pass@k
    assert figures["expert_calls_per_task"] == 5 / 4
    assert figures["expert_calls_answered_per_task"] == 4 / 4
    # expert tokens 400 + 400 + 200 + 0 = 1000; policy tokens 1100 + 2200 + 3300 + 550 = 7150
    assert figures["expert_token_share"] == pytest.approx(1000 / 8150)
    assert figures["total_tokens_per_task"] == 8150 / 4
    assert figures["steps_per_task"] == (5 + 13 + 26 + 45) / 4
    # longest runs 3, 12, 25, 45
    assert figures["loop_rate_gt_10"] == 3 / 4
    assert figures["loop_rate_gt_20"] == 2 / 4
    assert figures["loop_rate_gt_40"] == 1 / 4
    # expert costs 0.03, 0.05, 0.01, 0.00 -> median (0.01 + 0.03) / 2; resolved ones 0.03, 0.05, 0.01 -> 0.03
    assert figures["median_expert_cost_per_task"] == pytest.approx(0.02)
    assert figures["median_expert_cost_per_resolved_task"] == pytest.approx(0.03)
    assert figures["median_total_cost_per_task"] == pytest.approx(0.02)
    assert figures["failures"] == {category: int(category == "step_limit") for category in FAILURE_CATEGORIES}


def test_loop_lengths_come_from_the_argument(four):
    figures = summarize(four, 0.95, LoopConfig(metric_lengths=[2, 44, 45]))
    assert (figures["loop_rate_gt_2"], figures["loop_rate_gt_44"], figures["loop_rate_gt_45"]) == (
        1.0,
        0.25,
        0.0,
    )
    assert "loop_rate_gt_10" not in figures


def test_pass_at_k_over_several_attempts():
    # task x resolves 1 of 3 attempts, task y 3 of 3.
    episodes = [episode("x", i == 0, attempt=i) for i in range(3)] + [
        episode("y", True, attempt=i) for i in range(3)
    ]
    figures = summarize(episodes, 0.95, LOOP)
    assert figures["tasks"] == 2 and figures["episodes"] == 6
    assert figures["pass_at_1"] == pytest.approx((1 / 3 + 1) / 2)
    assert figures["pass_at_2"] == pytest.approx((2 / 3 + 1) / 2)
    assert figures["pass_at_3"] == 1.0
    assert "pass_at_4" not in figures
    assert (figures["pass_at_1_ci_low"], figures["pass_at_1_ci_high"]) == pytest.approx(
        wilson_interval(4, 6, 0.95)
    )


def test_no_resolved_episode_has_no_resolved_cost(four):
    for trajectory in four:
        trajectory.resolved = False
    figures = summarize(four, 0.95, LOOP)
    assert figures["pass_at_1"] == 0.0
    assert figures["median_expert_cost_per_resolved_task"] is None


@pytest.mark.parametrize(
    ("status", "patch", "grade_reason", "expected"),
    [
        ("step_limit", PATCH, "tests_failed", "step_limit"),
        ("cost_limit", "", "", "cost_limit"),
        ("budget_exhausted", "", "", "cost_limit"),
        ("sandbox_error", "", "", "sandbox_error"),
        ("timeout", PATCH, "", "timeout"),
        ("submitted", "", "empty_patch", "no_submission"),
        ("format_errors", "  \n", "", "no_submission"),
        ("submitted", PATCH, "patch_apply_failed", "patch_apply_failed"),
        ("submitted", PATCH, "tests_failed", "tests_failed"),
        ("submitted", PATCH, "sandbox_error", "sandbox_error"),
        ("submitted", PATCH, "timeout", "timeout"),
        ("submitted", PATCH, "", "other"),
        ("policy_error", PATCH, "something new", "policy_error"),
        ("policy_error", "", "crashed", "policy_error"),
        ("sandbox_error", "", "crashed", "sandbox_error"),
    ],
)
def test_failure_reason(status, patch, grade_reason, expected):
    trajectory = episode("t", False, status=status, patch=patch, extra={"grade_reason": grade_reason})
    assert failure_reason(trajectory) == expected


def test_an_expert_outage_is_its_own_failure_and_infrastructure_is_counted():
    outage = episode(
        "o",
        False,
        status="submitted",
        patch=PATCH,
        expert_calls=[call(0, 0, 0.0, "error")],
        extra={"grade_reason": "tests_failed"},
    )
    lost = episode("p", False, status="policy_error")
    failed = episode("f", False, status="submitted", patch=PATCH, extra={"grade_reason": "tests_failed"})
    figures = summarize(
        [outage, lost, failed, episode("r", True, status="submitted", patch=PATCH)], 0.95, LOOP
    )
    assert failure_reason(outage) == "expert_error"
    assert figures["failures"]["policy_error"] == 1 and figures["failures"]["tests_failed"] == 1
    assert figures["infra_failure_share"] == 0.5


def test_resolved_and_ungraded_episodes_in_the_breakdown():
    resolved = episode("r", True, status="step_limit", patch=PATCH)
    ungraded = Trajectory(instance_id="u", status="timeout")
    assert failure_reason(resolved) is None
    assert failure_breakdown([resolved, ungraded])["timeout"] == 1
    assert sum(failure_breakdown([resolved, ungraded]).values()) == 1


def test_numeric_metrics_flattens_and_drops_none(four):
    for trajectory in four:
        trajectory.resolved = False
    flat = numeric_metrics(summarize(four, 0.95, LOOP))
    assert flat["failures.step_limit"] == 1.0 and flat["failures.other"] == 3.0
    assert "median_expert_cost_per_resolved_task" not in flat
    assert all(isinstance(value, float) for value in flat.values())


def test_no_trajectories_is_an_error():
    with pytest.raises(MetricsError, match="no graded trajectories"):
        summarize([], 0.95, LOOP)
