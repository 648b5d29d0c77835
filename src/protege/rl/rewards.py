"""The trajectory reward of phases rl1 and rl2, term by term (METHOD §5.1), as plain functions.

    R_total = R_loop + w_follow * R_follow + g_loop * g_follow * R_other  (+ no_call_penalty)
    R_other = R_correct + w_sim * R_sim + w_expert * R_expert

Stage I and stage II are the same functions under two `RewardConfig`s (`RLConfig.stage1/stage2`).
`score_trajectory` runs the hidden judge (`protege.rl.judge`) on the trajectory's expert calls, computes
every term, stores them in `Trajectory.rewards` and returns them; `batch_means` averages a batch of
term dicts for per-step logging.

Conventions fixed here (METHOD §6 edge cases and the judge's scope): the warrant mean is over the
calls that reached the expert, 0 when there is none; R_follow is over those calls that have a
following segment, 0 when none has; n_b2b counts ask_expert actions whose previous action was also
ask_expert; "made no expert call" means no ask_expert action at all (a refused call is still a call).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence

from protege import patches
from protege.agent.loops import r_loop as loop_penalty
from protege.agent.loops import trajectory_runs
from protege.config import RewardConfig
from protege.rl.judge import ASK_EXPERT, Judge, annotate, judged_calls, segment
from protege.tasks import TaskInstance
from protege.trajectory import Trajectory

# --------------------------------------------------------------------------------------------------
# Patch similarity
# --------------------------------------------------------------------------------------------------


def changed_lines(diff: str) -> list[str]:
    """The +/- lines of a unified diff, whitespace removed, minus whitespace-only changes.

    Each line becomes its sign plus its text with all whitespace removed; blank changes are dropped,
    and within a file a removed line and an added line that are equal after that (a whitespace-only
    change, e.g. re-indentation) cancel each other out.
    """
    files: dict[str, list[str]] = {}
    try:
        parsed = patches.parse(diff)
    except patches.PatchError:
        return []  # not a diff (an agent's patch is always git's own output): nothing it changes counts
    for changed in parsed:
        for sign, line in patches.changed_lines(changed):
            if text := "".join(line.split()):
                files.setdefault(changed.path, []).append(sign + text)
    result: list[str] = []
    for lines in files.values():
        removed = Counter(t[1:] for t in lines if t[0] == "-")
        added = Counter(t[1:] for t in lines if t[0] == "+")
        # Per sign, how many occurrences of each text still cancel against the other sign.
        skip = {"-": removed & added, "+": removed & added}
        for line in lines:
            sign, text = line[0], line[1:]
            if skip[sign][text] > 0:
                skip[sign][text] -= 1
                continue
            result.append(line)
    return result


def patch_similarity(patch: str, gold: str) -> float:
    """difflib ratio of the changed lines of two diffs (1.0 for two empty change sets)."""
    ours, theirs = changed_lines(patch), changed_lines(gold)
    if not ours and not theirs:
        return 1.0
    return difflib.SequenceMatcher(None, ours, theirs, autojunk=False).ratio()


# --------------------------------------------------------------------------------------------------
# Terms
# --------------------------------------------------------------------------------------------------


def r_sim(sim: float, resolved: bool, cfg: RewardConfig) -> float:
    """0 when resolved or sim >= sim_threshold, else -1 (weighted by w_sim inside R_other)."""
    return 0.0 if resolved or sim >= cfg.sim_threshold else -1.0


def phi(u: float, cfg: RewardConfig) -> float:
    """φ(u) = u if u >= τ_warrant else p_low."""
    return u if u >= cfg.tau_warrant else cfg.p_low


def psi(f: float, cfg: RewardConfig) -> float:
    """ψ(f) = f if f >= τ_follow else p_follow_low."""
    return f if f >= cfg.tau_follow else cfg.p_follow_low


def back_to_back(trajectory: Trajectory) -> int:
    """n_b2b: ask_expert actions whose previous action was also ask_expert."""
    tools = [a.tool for a in trajectory.actions]
    return sum(tools[i] == ASK_EXPERT and tools[i - 1] == ASK_EXPERT for i in range(1, len(tools)))


def gate(value: float, zero_at: float, half_at: float, partial: float) -> float:
    """0 at or below `zero_at`, `partial` at or below `half_at`, else 1."""
    if value <= zero_at:
        return 0.0
    return partial if value <= half_at else 1.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _scored(value: float | None, what: str, trajectory: Trajectory, step: int) -> float:
    if value is None:
        raise ValueError(
            f"trajectory {trajectory.instance_id}: expert call at step {step} has no {what} score"
        )
    return value


def expert_terms(trajectory: Trajectory, cfg: RewardConfig) -> dict[str, float]:
    """warrant_mean, n_b2b, r_b2b, r_quota and r_expert from a judged trajectory."""
    calls = judged_calls(trajectory)
    warrant = _mean([phi(_scored(c.warranted, "warranted", trajectory, c.step), cfg) for c in calls])
    n_b2b = back_to_back(trajectory)
    b2b = max(cfg.b2b_floor, cfg.lambda_b2b * n_b2b) + 0.0
    refused = any(c.status == "quota_exceeded" for c in trajectory.expert_calls)
    quota = cfg.quota_penalty if cfg.quota_penalty_enabled and refused else 0.0
    return {
        "warrant_mean": warrant,
        "n_b2b": float(n_b2b),
        "r_b2b": b2b,
        "r_quota": quota,
        "r_expert": warrant + b2b + quota,
    }


def r_follow(trajectory: Trajectory, cfg: RewardConfig) -> float:
    """Mean of ψ(f_i) over the judged calls with a following segment; 0 when none has one."""
    scores = [
        psi(_scored(c.follow_through, "follow-through", trajectory, c.step), cfg)
        for c in judged_calls(trajectory)
        if segment(trajectory, c)
    ]
    return _mean(scores)


def reward_terms(
    trajectory: Trajectory, task: TaskInstance, cfg: RewardConfig, *, resolved: bool
) -> dict[str, float]:
    """Every term of R_total for a trajectory whose expert calls are already judged."""
    sim = patch_similarity(trajectory.patch, task.patch)
    correct = 1.0 if resolved else 0.0
    similarity = r_sim(sim, resolved, cfg)
    loop = loop_penalty(trajectory_runs(trajectory), cfg.loop)
    expert = expert_terms(trajectory, cfg)
    follow = r_follow(trajectory, cfg)
    g_loop = (
        gate(loop, cfg.gate_loop_zero_at, cfg.gate_loop_half_at, cfg.gate_partial) if cfg.gate_loop else 1.0
    )
    g_follow = (
        gate(follow, cfg.gate_follow_zero_at, cfg.gate_follow_half_at, cfg.gate_partial)
        if cfg.gate_follow
        else 1.0
    )
    other = correct + cfg.w_sim * similarity + cfg.w_expert * expert["r_expert"]
    calls = sum(a.tool == ASK_EXPERT for a in trajectory.actions)
    no_call = cfg.no_call_penalty if calls == 0 else 0.0
    total = loop + cfg.w_follow * follow + g_loop * g_follow * other + no_call
    return {
        "r_correct": correct,
        "sim": sim,
        "r_sim": similarity,
        "r_loop": loop,
        **expert,
        "r_follow": follow,
        "g_loop": g_loop,
        "g_follow": g_follow,
        "r_other": other,
        "no_call_penalty": no_call,
        "r_total": total,
        "expert_calls": float(calls),
        "steps": float(trajectory.steps),
    }


def score_trajectory(
    traj: Trajectory, task: TaskInstance, cfg: RewardConfig, *, resolved: bool, judge: Judge
) -> dict[str, float]:
    """Judge the expert calls (hidden scores on the stored calls), compute every term, store and return them.

    `resolved` is R_correct's input: the grading of the submitted patch in a fresh sandbox. Also sets
    `traj.resolved`. The agent-visible messages are never touched.
    """
    if traj.instance_id != task.instance_id:
        raise ValueError(f"trajectory {traj.instance_id} scored against task {task.instance_id}")
    annotate(traj, task, judge)
    terms = reward_terms(traj, task, cfg, resolved=resolved)
    traj.resolved = resolved
    traj.rewards = dict(terms)
    return terms


def batch_means(batch: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key mean over a batch of term dicts (all must have the same keys); {} for an empty batch."""
    if not batch:
        return {}
    keys = list(batch[0])
    for index, terms in enumerate(batch):
        if set(terms) != set(keys):
            missing = sorted(set(keys) ^ set(terms))
            raise ValueError(
                f"batch_means: trajectory {index} has different reward keys ({', '.join(missing)})"
            )
    return {key: sum(t[key] for t in batch) / len(batch) for key in keys}
