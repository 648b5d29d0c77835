"""Reward terms (METHOD §5.1), table-driven, every expected value worked out by hand in the comments.

Stage I = `RewardConfig()` (w_sim 0.5, w_expert 0.1, w_follow 0.5, τ 0.5, p_low -1, λ_b2b -0.25,
b2b floor -1, p_follow_low -1, g_follow off, no call: 0). Stage II = `RLConfig().stage2` (w_follow 2,
w_expert 0.3, p_follow_low -2, g_follow on, no call: -10). Loop: k1 15, k2 8, λ 0.5, floor -10.
Judge scores are preset on the calls, so the judge must not be asked (`NeverJudge` fails if it is).
"""

from __future__ import annotations

import pytest

from protege.config import RewardConfig, RLConfig
from protege.rl.rewards import (
    batch_means,
    changed_lines,
    gate,
    patch_similarity,
    reward_terms,
    score_trajectory,
)
from protege.tasks import TaskInstance
from protege.trajectory import Action, ExpertCall, Message, Trajectory

STAGE1 = RLConfig().stage1
STAGE2 = RLConfig().stage2

GOLD = """\
diff --git a/calc/ops.py b/calc/ops.py
index 1111111..2222222 100644
--- a/calc/ops.py
+++ b/calc/ops.py
@@ -5,4 +5,4 @@ def add(a, b):
 def divide(a, b):
-    if b is None:
-        return 0
+    if b == 0:
+        raise ZeroDivisionError("cannot divide by zero")
     return a / b
"""

# The same change, re-spaced, with other index hashes and hunk line numbers.
GOLD_RESPACED = """\
diff --git a/calc/ops.py b/calc/ops.py
index 3333333..4444444 100644
--- a/calc/ops.py
+++ b/calc/ops.py
@@ -7,4 +7,4 @@
 def divide(a, b):
-    if b is None :
-        return   0
+    if b==0:
+      raise ZeroDivisionError( "cannot divide by zero" )
     return a / b
"""

DISJOINT = """\
diff --git a/README.md b/README.md
--- a/README.md
+++ b/README.md
@@ -1,2 +1,2 @@
-Old title
+New title
+Another paragraph about installation
"""

TEST_PATCH = """\
diff --git a/tests/test_ops.py b/tests/test_ops.py
--- a/tests/test_ops.py
+++ b/tests/test_ops.py
@@ -1,1 +1,2 @@
 import calc
+import pytest
"""

TASK = TaskInstance(
    instance_id="calc__ops-1",
    repo="calc/ops",
    base_commit="0123456789abcdef",
    problem_statement="divide(1, 0) returns 0 instead of raising ZeroDivisionError.",
    patch=GOLD,
    test_patch=TEST_PATCH,
    FAIL_TO_PASS=["tests/test_ops.py::test_divide_by_zero"],
)

# Base command -> a concrete action of that base command.
ACTIONS = {
    "python": ("bash", {"command": "python -m pytest -q"}),
    "navigate": ("bash", {"command": "grep -rn divide ."}),
    "edit": (
        "str_replace_editor",
        {"command": "str_replace", "path": "calc/ops.py", "old_str": "a", "new_str": "b"},
    ),
    "submit": ("submit", {}),
}


def ask(u: float | None = None, f: float | None = None, status: str = "ok") -> tuple[str, dict]:
    """An ask_expert entry for `trajectory`, with preset judge scores."""
    return ("ask", {"warranted": u, "follow_through": f, "status": status})


def trajectory(entries: list, patch: str = GOLD) -> Trajectory:
    """Actions from base-command names or `ask(...)` entries; ask entries also become ExpertCalls."""
    actions, calls = [], []
    for step, entry in enumerate(entries, 1):
        if isinstance(entry, tuple):
            actions.append(
                Action(step=step, tool="ask_expert", arguments={"question": "q?"}, base_command="ask_expert")
            )
            scores = entry[1]
            calls.append(
                ExpertCall(
                    step=step,
                    question=f"question {step}?",
                    reply="Look at `divide` in calc/ops.py.",
                    status=scores["status"],
                    warranted=scores["warranted"],
                    follow_through=scores["follow_through"],
                )
            )
        else:
            tool, arguments = ACTIONS[entry]
            base = "str_replace_editor str_replace" if entry == "edit" else entry
            actions.append(Action(step=step, tool=tool, arguments=arguments, base_command=base))
    messages = [Message(role="user", provenance="task", content="fix divide")]
    return Trajectory(
        instance_id=TASK.instance_id, actions=actions, expert_calls=calls, patch=patch, messages=messages
    )


class NeverJudge:
    """Every call in these tables carries preset scores: asking the judge is a bug."""

    name = "preset"

    def warranted(self, *args: object) -> float:
        raise AssertionError("judge asked for warranted although the score was preset")

    def follow_through(self, *args: object) -> float:
        raise AssertionError("judge asked for follow-through although the score was preset")

    def counters(self) -> dict[str, float]:
        return {}


# (id, entries, patch, resolved, cfg, expected terms)
CASES = [
    # runs [20]: R_loop = -0.5 * (20 - 15 + 1) = -3.0 -> g_loop 0; no calls, R_follow 0
    # R_total = -3 + 0.5 * 0 + 0 * R_other = -3.0
    (
        "loop_gate_zero",
        ["python"] * 20,
        GOLD,
        True,
        STAGE1,
        {"r_loop": -3.0, "g_loop": 0.0, "r_other": 1.0, "r_total": -3.0},
    ),
    # runs [16]: R_loop = -0.5 * 2 = -1.0 -> g_loop 0.5; R_other = 1 -> R_total = -1 + 0.5 * 1 = -0.5
    ("loop_gate_half", ["python"] * 16, GOLD, True, STAGE1, {"r_loop": -1.0, "g_loop": 0.5, "r_total": -0.5}),
    # runs [15]: R_loop = -0.5 * 1 = -0.5 > -1 -> g_loop 1; R_total = -0.5 + 1 = 0.5
    ("loop_gate_open", ["python"] * 15, GOLD, True, STAGE1, {"r_loop": -0.5, "g_loop": 1.0, "r_total": 0.5}),
    # later run: runs [1, 9]: -0.5 * (9 - 8 + 1) = -1.0 -> g_loop 0.5; R_total = -1 + 0.5 = -0.5
    (
        "loop_later_run",
        ["navigate"] + ["python"] * 9,
        GOLD,
        True,
        STAGE1,
        {"r_loop": -1.0, "g_loop": 0.5, "r_total": -0.5},
    ),
    # resolved, two calls u = (0.8, 0.3), τ 0.5, p_low -1: warrant mean (0.8 + -1) / 2 = -0.1 = R_expert.
    # both have segments, f = (0.9, 0.6): R_follow = (0.9 + 0.6) / 2 = 0.75.
    # stage I: R_other = 1 + 0.5*0 + 0.1*(-0.1) = 0.99; R_total = 0 + 0.5*0.75 + 0.99 = 1.365
    (
        "two_calls_stage1",
        ["navigate", ask(0.8, 0.9), "edit", ask(0.3, 0.6), "python"],
        GOLD,
        True,
        STAGE1,
        {
            "warrant_mean": -0.1,
            "r_expert": -0.1,
            "r_follow": 0.75,
            "r_other": 0.99,
            "r_total": 1.365,
            "expert_calls": 2.0,
        },
    ),
    # stage II, same trajectory: R_other = 1 + 0.3*(-0.1) = 0.97; g_follow 1 (0.75 > -0.5)
    # R_total = 0 + 2*0.75 + 0.97 = 2.47
    (
        "two_calls_stage2",
        ["navigate", ask(0.8, 0.9), "edit", ask(0.3, 0.6), "python"],
        GOLD,
        True,
        STAGE2,
        {"r_other": 0.97, "g_follow": 1.0, "no_call_penalty": 0.0, "r_total": 2.47},
    ),
    # six calls back to back: n_b2b = 5, R_b2b = max(-1, -0.25*5) = -1; warrant mean 0.9 -> R_expert -0.1.
    # only the last call has a segment (["python"]), f 1 -> R_follow 1. runs [1, 6, 1] -> R_loop 0.
    # unresolved, empty patch: sim 0 -> R_sim -1. R_other = 0 + 0.5*(-1) + 0.1*(-0.1) = -0.51
    # R_total = 0 + 0.5*1 - 0.51 = -0.01
    (
        "back_to_back_floor",
        ["navigate"] + [ask(0.9, 1.0)] * 5 + [ask(0.9, 1.0), "python"],
        "",
        False,
        STAGE1,
        {
            "n_b2b": 5.0,
            "r_b2b": -1.0,
            "r_expert": -0.1,
            "r_follow": 1.0,
            "sim": 0.0,
            "r_sim": -1.0,
            "r_total": -0.01,
        },
    ),
    # [ask, ask, navigate]: n_b2b 1 -> R_b2b -0.25; warrant mean 1 -> R_expert 0.75; only the 2nd call has a
    # segment, f 1 -> R_follow 1. R_other = 1 + 0.1*0.75 = 1.075; R_total = 0.5*1 + 1.075 = 1.575
    (
        "back_to_back_one",
        [ask(1.0), ask(1.0, 1.0), "navigate"],
        GOLD,
        True,
        STAGE1,
        {"n_b2b": 1.0, "r_b2b": -0.25, "r_expert": 0.75, "r_total": 1.575},
    ),
    # no call at all, resolved. stage I: R_total = 0 + 0 + 1 = 1.0
    (
        "no_call_stage1",
        ["navigate", "edit", "python", "submit"],
        GOLD,
        True,
        STAGE1,
        {"warrant_mean": 0.0, "no_call_penalty": 0.0, "r_total": 1.0},
    ),
    # stage II: R_follow 0 -> g_follow 1; R_total = 1 - 10 = -9.0
    (
        "no_call_stage2",
        ["navigate", "edit", "python", "submit"],
        GOLD,
        True,
        STAGE2,
        {"no_call_penalty": -10.0, "g_follow": 1.0, "r_total": -9.0},
    ),
    # last call is the last action: no segment, not in R_follow. First call f 0.2 -> ψ = p_follow_low.
    # stage I: R_follow = -1 (g_follow off); warrant mean (0.6 + 0.7)/2 = 0.65.
    # R_other = 1 + 0.1*0.65 = 1.065; R_total = 0.5*(-1) + 1.065 = 0.565
    (
        "last_call_no_segment_stage1",
        ["navigate", ask(0.6, 0.2), "python", ask(0.7)],
        GOLD,
        True,
        STAGE1,
        {"r_follow": -1.0, "g_follow": 1.0, "warrant_mean": 0.65, "r_total": 0.565},
    ),
    # stage II: ψ(0.2) = -2 -> R_follow -2 <= -1.5 -> g_follow 0; R_total = 2*(-2) + 0 = -4.0
    (
        "last_call_no_segment_stage2",
        ["navigate", ask(0.6, 0.2), "python", ask(0.7)],
        GOLD,
        True,
        STAGE2,
        {"r_follow": -2.0, "g_follow": 0.0, "r_total": -4.0},
    ),
    # both gates at 0.5 (stage II): runs [18, 1, 1, 1, 1]: R_loop = -0.5*(18-15+1) = -2 -> g_loop 0.5.
    # f = (0.2, 1.0): ψ = (-2, 1) -> R_follow -0.5 -> g_follow 0.5. warrant mean 0.5 -> R_expert 0.5.
    # R_other = 1 + 0.3*0.5 = 1.15; R_total = -2 + 2*(-0.5) + 0.5*0.5*1.15 = -2.7125
    (
        "both_gates_half",
        ["python"] * 18 + [ask(0.5, 0.2), "navigate", ask(0.5, 1.0), "navigate"],
        GOLD,
        True,
        STAGE2,
        {
            "r_loop": -2.0,
            "g_loop": 0.5,
            "r_follow": -0.5,
            "g_follow": 0.5,
            "r_other": 1.15,
            "r_total": -2.7125,
        },
    ),
    # unresolved but the patch is the gold one: sim 1 >= 0.5 -> R_sim 0; R_total = 0
    (
        "unresolved_similar",
        ["edit", "submit"],
        GOLD,
        False,
        STAGE1,
        {"sim": 1.0, "r_sim": 0.0, "r_correct": 0.0, "r_total": 0.0},
    ),
    # unresolved, disjoint patch: sim 0 -> R_sim -1; R_other = 0.5*(-1) = -0.5 = R_total
    (
        "unresolved_disjoint",
        ["edit", "submit"],
        DISJOINT,
        False,
        STAGE1,
        {"sim": 0.0, "r_sim": -1.0, "r_total": -0.5},
    ),
    # resolved: R_sim is 0 whatever the similarity (here 0); R_total = 1
    (
        "resolved_ignores_sim",
        ["edit", "submit"],
        DISJOINT,
        True,
        STAGE1,
        {"sim": 0.0, "r_sim": 0.0, "r_total": 1.0},
    ),
]


@pytest.mark.parametrize(
    ("entries", "patch", "resolved", "cfg", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_reward_terms_match_hand_computed_values(entries, patch, resolved, cfg, expected):
    terms = score_trajectory(trajectory(entries, patch), TASK, cfg, resolved=resolved, judge=NeverJudge())
    for key, value in expected.items():
        assert terms[key] == pytest.approx(value), key


def test_quota_penalty_only_when_enabled():
    # [navigate, ask(ok, u 1, f 1), navigate, ask(quota_exceeded), navigate]: the refused call is the next
    # call, so the first call's segment is [navigate]: R_follow 1. Only the ok call is judged: warrant 1.
    entries = ["navigate", ask(1.0, 1.0), "navigate", ask(status="quota_exceeded"), "navigate"]
    enabled = RewardConfig(quota_penalty_enabled=True)
    # enabled: R_quota -1 -> R_expert = 1 + 0 - 1 = 0; R_other = 1; R_total = 0.5*1 + 1 = 1.5
    on = score_trajectory(trajectory(entries), TASK, enabled, resolved=True, judge=NeverJudge())
    assert (on["r_quota"], on["r_expert"], on["r_follow"], on["r_total"]) == pytest.approx(
        (-1.0, 0.0, 1.0, 1.5)
    )
    # default (disabled): R_expert 1 -> R_other 1.1 -> R_total 1.6
    off = score_trajectory(trajectory(entries), TASK, STAGE1, resolved=True, judge=NeverJudge())
    assert (off["r_quota"], off["r_expert"], off["r_total"]) == pytest.approx((0.0, 1.0, 1.6))
    assert on["expert_calls"] == 2.0  # a refused call is still a call (no stage II no-call penalty)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-3.0, 0.0), (-5.0, 0.0), (-2.999, 0.5), (-1.0, 0.5), (-0.999, 1.0), (0.0, 1.0)],
)
def test_loop_gate_thresholds(value, expected):
    assert gate(value, STAGE1.gate_loop_zero_at, STAGE1.gate_loop_half_at, STAGE1.gate_partial) == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(-1.5, 0.0), (-1.49, 0.5), (-0.5, 0.5), (-0.49, 1.0), (1.0, 1.0)]
)
def test_follow_gate_thresholds(value, expected):
    assert (
        gate(value, STAGE2.gate_follow_zero_at, STAGE2.gate_follow_half_at, STAGE2.gate_partial) == expected
    )


def test_gates_off_are_one():
    # runs [20] would close g_loop; with gate_loop off it is 1: R_total = -3 + 1 = -2
    cfg = RewardConfig(gate_loop=False)
    terms = reward_terms(trajectory(["python"] * 20), TASK, cfg, resolved=True)
    assert (terms["g_loop"], terms["r_total"]) == (1.0, -2.0)


def test_score_trajectory_stores_terms_and_resolution_but_no_message():
    traj = trajectory(["navigate", ask(0.8, 0.9), "python"])
    before = [m.model_dump() for m in traj.messages]
    terms = score_trajectory(traj, TASK, STAGE1, resolved=True, judge=NeverJudge())
    assert traj.rewards == terms and traj.resolved is True
    assert [m.model_dump() for m in traj.messages] == before
    expected_keys = {
        "r_correct",
        "sim",
        "r_sim",
        "r_loop",
        "warrant_mean",
        "n_b2b",
        "r_b2b",
        "r_quota",
        "r_expert",
        "r_follow",
        "g_loop",
        "g_follow",
        "r_other",
        "no_call_penalty",
        "r_total",
        "expert_calls",
        "steps",
    }
    assert set(terms) == expected_keys


def test_judge_fills_missing_scores_and_unjudged_calls_are_an_error():
    class Silent(NeverJudge):
        def warranted(self, *args: object) -> float:
            return 0.7

        def follow_through(self, *args: object) -> float:
            return 0.4

    traj = trajectory(["navigate", ask(), "python", ask()])
    terms = score_trajectory(traj, TASK, STAGE1, resolved=True, judge=Silent())
    # u (0.7, 0.7) -> mean 0.7; f only for the first call (the second has no segment): ψ(0.4) = -1
    assert terms["warrant_mean"] == pytest.approx(0.7) and terms["r_follow"] == -1.0
    assert [c.follow_through for c in traj.expert_calls] == [0.4, None]
    assert traj.extra["judge"] == "preset"
    with pytest.raises(ValueError, match="calc__ops-1: expert call at step 2 has no warranted score"):
        reward_terms(trajectory(["navigate", ask(), "python"]), TASK, STAGE1, resolved=True)


def test_wrong_task_is_refused():
    other = TASK.model_copy(update={"instance_id": "other-1"})
    with pytest.raises(ValueError, match="trajectory calc__ops-1 scored against task other-1"):
        score_trajectory(trajectory(["python"]), other, STAGE1, resolved=True, judge=NeverJudge())


def test_batch_means():
    a = {"r_total": 1.0, "r_loop": -3.0}
    b = {"r_total": -2.0, "r_loop": 0.0}
    assert batch_means([a, b]) == {"r_total": -0.5, "r_loop": -1.5}
    assert batch_means([]) == {}
    with pytest.raises(ValueError, match="trajectory 1 has different reward keys \\(r_loop\\)"):
        batch_means([a, {"r_total": 0.0}])


# --------------------------------------------------------------------------------------------------
# Patch similarity
# --------------------------------------------------------------------------------------------------


def test_identical_patches_are_one():
    assert patch_similarity(GOLD, GOLD) == 1.0


def test_whitespace_headers_and_index_lines_are_ignored():
    assert patch_similarity(GOLD_RESPACED, GOLD) == 1.0


def test_whitespace_only_change_is_no_change():
    reindent = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,2 +1,2 @@\n-  return a\n+    return a\n-x=1\n+x = 1\n"
    assert changed_lines(reindent) == []
    # ... so a gold fix plus a re-indentation elsewhere is still the gold fix
    assert patch_similarity(GOLD + reindent, GOLD) == 1.0


def test_disjoint_patches_are_low_and_partial_in_between():
    assert patch_similarity(DISJOINT, GOLD) == 0.0
    assert patch_similarity("", GOLD) == 0.0
    # the two removed lines right, one of the two added lines right: 3 of 4 lines shared -> 2*3/8 = 0.75
    partial = GOLD.replace('raise ZeroDivisionError("cannot divide by zero")', "return None")
    assert patch_similarity(partial, GOLD) == pytest.approx(0.75)


def test_changed_lines_keep_sign_and_drop_headers():
    assert changed_lines(GOLD) == [
        "-ifbisNone:",
        "-return0",
        "+ifb==0:",
        '+raiseZeroDivisionError("cannotdividebyzero")',
    ]
