"""Learning at small scale (issue 16): the training paths move a tiny policy the way their signal points.

- GRPO: in a toy environment whose reward depends on one observable choice only (ask the expert before
  submitting, or not; tests/toy_env.py), a few steps through the real rollout_func / env_mask / GRPOTrainer
  path raise the policy's probability of the rewarded choice, and lower it when the reward's sign is flipped
  (trl's reward weight -1: the same environment and reward terms, negated).
- SFT: training on a dataset's policy turns raises their log-probability, while the tokens that are context
  only (tool observations, expert guidance) move no more than text the model never saw.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from protege import rl
from tests.rl_helpers import build_tiny, rl_cfg
from tests.toy_env import BranchGenerator, ToySandbox, choice_probability, toy_grade, write_toy_tasks

pytestmark = pytest.mark.slow

TOY_STEPS = 6
# The toy reward: R_total = no_call_penalty when the episode made no expert call, else 0 (every other term
# is weighted 0, grading never resolves and there are no loops).
TOY_REWARD = (
    "rl.stage1.no_call_penalty=-1",
    "rl.stage1.w_follow=0",
    "rl.stage1.w_expert=0",
    "rl.stage1.w_sim=0",
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("tiny")
    return build_tiny(tmp / "model", tmp / "corpus")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def _toy_cfg(tmp: Path):
    tasks, repos = write_toy_tasks(tmp / "toy")
    return rl_cfg(
        repos,
        tmp,
        f"tasks.train={tasks}",
        f"expert.cache_dir={tmp / 'expert-cache'}",
        f"rl.stage_one_steps={TOY_STEPS}",
        f"rl.total_steps={TOY_STEPS + 1}",
        "rl.group_size=4",
        "rl.tasks_per_step=2",
        "rl.rollout_workers=1",
        "rl.learning_rate=0.003",
        f"rl.save_steps={TOY_STEPS}",
        "rl.max_flat_visits=1000",
        *TOY_REWARD,
    )


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["reward", "flipped"])
def test_grpo_moves_the_rewarded_choice_up_and_the_flipped_one_down(sign, tiny_dir, tokenizer, tmp_path):
    import torch

    from protege.model import load_model_and_tokenizer

    cfg = _toy_cfg(tmp_path)
    out = tmp_path / "rl1"
    plan = rl.plan_stage(cfg, 1, str(tiny_dir), out, None)
    generator = BranchGenerator(tokenizer, seed=0)
    built = rl.build_trainer(cfg, plan, out, None, None, None, sandbox_opener=ToySandbox, generator=generator)
    generator.model = built.trainer.model
    built.rollout_step.ctx.grader = toy_grade
    built.trainer.reward_weights = torch.tensor([sign])  # trl sums reward functions with these weights
    result = rl.train(built, plan, out)

    # Every rollout was scored, and its reward is the choice's: 0 after asking, -1 without.
    rows = [json.loads(line) for f in sorted((out / "rollouts").glob("step-*.jsonl")) for line in f.open()]
    assert len(rows) == TOY_STEPS * 8 and all(not r["extra"]["rl"]["failure"] for r in rows)
    assert all(r["rewards"]["r_total"] == (0.0 if r["expert_calls"] else -1.0) for r in rows)
    # The step figures: every turn well-formed, and the share of groups GRPO learned from is trl's own count.
    trl_flat = [
        log["frac_reward_zero_std"]
        for log in built.trainer.state.log_history
        if "frac_reward_zero_std" in log
    ]
    assert [h["rollout/format_valid_rate"] for h in result["history"]] == [1.0] * TOY_STEPS
    assert [h["rollout/groups_with_advantage"] for h in result["history"]] == [1 - f for f in trl_flat]
    # The probability of asking, at each toy task's first turn, before and after training.
    prompts = list({tuple(p): p for p in generator.first_prompts}.values())
    start, _ = load_model_and_tokenizer(tiny_dir, "float32", "cpu")
    before = [choice_probability(start.eval(), tokenizer, p) for p in prompts]
    after = [choice_probability(built.trainer.model.eval(), tokenizer, p) for p in prompts]
    asked = [
        statistics.fmean(h["rollout/expert_calls_per_traj"] for h in result["history"][i : i + 2])
        for i in (0, 4)
    ]
    print(
        f"sign {sign:+.0f}: P(ask) {before} -> {after}; share of rollouts asking, first/last 2 steps: {asked}"
    )
    assert len(prompts) == 2 and all(0.2 < p < 0.8 for p in before)  # the untrained policy really chooses
    for b, a in zip(before, after, strict=True):
        assert (a - b) * sign > 0.25, f"P(ask) moved {b:.3f} -> {a:.3f} under reward sign {sign:+.0f}"


# --------------------------------------------------------------------------------------------------
# SFT: only the policy's turns are targets
# --------------------------------------------------------------------------------------------------

SFT_STEPS = 24
MASK_NOISE = 0.4
"""Nats per token a context text may move beyond its never-seen twin. Calibrated on this test: with the mask
right the gaps were 0.14 / -0.02 / -0.07 (task / tool / expert; policy turns +3.3); with every token made a
target (a broken mask) they were 0.85 / 0.84 / 1.14."""
# Context-only texts: the same in every training record (so a leaking mask would teach them fast), and a
# held-out twin of each that training never shows: how far text the model never saw moves is the noise.
CONTEXT = {
    "task": ("Kavo lumi teshra pondi varek sulo minta.", "Brel dosk yaffin torp quellim asto ruvi."),
    "tool": (
        "zorgat plimvex 4417 quandu\nhesprik volta margune",
        "tiskel brunda 8093 omvari\nfelgrat sundo pavelik",
    ),
    "expert": ("Mirto the gavlen wushpar before kelta.", "Dravi the solmek nurbent after plasko."),
}


def _trajectory(n: int, held_out: bool):
    from protege.agent.agent import SYSTEM_PROMPT
    from protege.trajectory import Message, ToolCall, Trajectory

    pick = {kind: pair[held_out] for kind, pair in CONTEXT.items()}

    def call(i: int, name: str, **arguments: str) -> Message:
        return Message(
            role="assistant",
            provenance="policy",
            content="Next step.",
            tool_calls=[ToolCall(id=f"call_{i}", name=name, arguments=arguments)],
        )

    def seen(i: int, name: str, text: str, provenance: str) -> Message:
        return Message(role="tool", provenance=provenance, content=text, tool_call_id=f"call_{i}", name=name)

    messages = [
        Message(role="system", provenance="system", content=SYSTEM_PROMPT.format(workdir="/testbed")),
        Message(role="user", provenance="task", content=pick["task"]),
        call(1, "bash", command="cat app.py"),
        seen(1, "bash", pick["tool"], "tool"),
        call(2, "ask_expert", question="Which line is wrong?"),
        seen(2, "ask_expert", f"<expert_llm_guidance>{pick['expert']}</expert_llm_guidance>", "expert"),
        call(3, "submit"),
    ]
    return Trajectory(instance_id=f"toy__sft-{n}", messages=messages, status="submitted", resolved=True)


def _span(ids: list[int], part: list[int]) -> range:
    starts = [i for i in range(len(ids) - len(part) + 1) if ids[i : i + len(part)] == part]
    assert len(starts) == 1, f"{len(starts)} occurrences of the span"
    return range(starts[0], starts[0] + len(part))


def _token_logprobs(model, ids: list[int]) -> list[float]:
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    picked = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    return [0.0, *picked.tolist()]  # position i: log p(ids[i] | ids[:i])


def test_sft_raises_only_the_policy_turns(tiny_dir, tokenizer, tmp_path):
    from trl.chat_template_utils import get_training_chat_template

    from protege import sft
    from protege.agent.render import tool_schemas
    from protege.model import load_model_and_tokenizer
    from protege.sft_data import export_dataset, to_record

    data = export_dataset(
        [_trajectory(n, held_out=False) for n in range(4)], tmp_path / "data", tool_schemas(), {}
    )
    cfg = rl_cfg(
        tmp_path,
        tmp_path,
        f"model.base={tiny_dir}",
        f"sft.max_steps={SFT_STEPS}",
        "sft.learning_rate=0.003",
        "sft.warmup_ratio=0",
        "sft.save_steps=1000",
        "sft.max_length=4096",
    )
    result = sft.run(cfg, str(data.path), tmp_path / "sft")

    template = get_training_chat_template(tokenizer)
    seen, unseen = (
        sft.render_example(tokenizer, template, to_record(_trajectory(0, flag), tool_schemas()))
        for flag in (False, True)
    )
    start, _ = load_model_and_tokenizer(tiny_dir, "float32", "cpu")
    trained, _ = load_model_and_tokenizer(result["model_dir"], "float32", "cpu")

    def mean_change(example: dict, positions) -> float:
        ids = example["input_ids"]
        before, after = _token_logprobs(start, ids), _token_logprobs(trained, ids)
        return statistics.fmean(after[i] - before[i] for i in positions)

    targets = [i for i, label in enumerate(seen["labels"]) if label != sft.IGNORE_INDEX]
    moved = {"policy": mean_change(seen, targets)}
    for kind, (shown, held) in CONTEXT.items():
        for name, example, text in ((kind, seen, shown), (f"{kind} (never seen)", unseen, held)):
            span = _span(example["input_ids"], tokenizer.encode(text, add_special_tokens=False))
            moved[name] = mean_change(example, span)
    print("mean change of log p per token:", {k: round(v, 3) for k, v in moved.items()})
    assert moved["policy"] > 2.0
    for kind in CONTEXT:
        assert abs(moved[kind] - moved[f"{kind} (never seen)"]) < MASK_NOISE, (kind, moved)
