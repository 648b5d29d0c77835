"""A second base family: the chat format comes from the base tokenizer's own template, so a Qwen3-class
model (its published template: `<think>` reasoning, `<tool_call>` JSON) works beside Qwen2.5-Coder.

For both families, with a tiny model built with that family's template: the family is read off the
tokenizer, SFT's targets are exactly the protégé's turns, the training text starts with every inference
prompt, the agent (eval), an RL rollout and SFT render one episode to the same ids, and one GRPO step trains
exactly the generated tokens (protege.agent.chat_format)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from protege import rl, sft
from protege.agent.chat_format import ChatFormatError, chat_format
from protege.agent.render import chat_messages, prompt_ids
from protege.model import build_tiny_model
from protege.sft_data import to_record
from protege.tasksets import load_task_set
from tests import rl_helpers
from tests.rl_helpers import ScriptedGenerator, rl_cfg, tool_call
from tests.test_sft import (
    GUIDANCE,
    OBSERVATION,
    SYSTEM,
    TASK,
    TOOLS,
    as_trajectory,
    chat_record,
    expected_target,
)

FAMILIES = ["qwen2.5", "qwen3"]
EMPTY_THINK = "<think>\n\n</think>\n\n"

# A Qwen3 model's turns as its template writes them: a reasoning block first (empty or not), then text and
# one call. The empty block is the case Qwen3's own template re-renders differently in later context.
QWEN3_SCRIPT = [
    "<think>\nThe bug is unclear; ask.\n</think>\n\n"
    + tool_call("ask_expert", question=rl_helpers.EXPERT_QUESTION),
    EMPTY_THINK + "Find the definitions.\n" + tool_call("bash", command="grep -rn 'def ' . | head -3"),
    "<think>\nList them.\n</think>\n\nList the files.\n" + tool_call("bash", command="ls"),
    EMPTY_THINK + tool_call("submit"),
]
SCRIPTS = {"qwen2.5": rl_helpers.SCRIPT, "qwen3": QWEN3_SCRIPT}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    import protege.config as config_module
    import protege.model as model_module

    root = tmp_path_factory.mktemp("corpus")
    for module in (model_module, config_module):
        shutil.copy(module.__file__, root / Path(module.__file__).name)
    return root


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[str, Path]:
    tiny = rl_helpers.TINY.model_copy(update={"family": request.param})
    return request.param, build_tiny_model(tiny, tmp_path_factory.mktemp(request.param) / "model", [corpus])


@pytest.fixture(scope="module")
def tokenizer(family_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(family_dir[1])


@pytest.fixture(scope="module")
def family(family_dir) -> str:
    return family_dir[0]


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path, only=["protege-demo/moneyfmt"])
    return path


@pytest.fixture(scope="module")
def task():
    return {t.instance_id: t for t in load_task_set("demo:train")}["protege-demo__moneyfmt-1"]


# --------------------------------------------------------------------------------------------------
# The family, read off the tokenizer
# --------------------------------------------------------------------------------------------------


def test_the_family_is_read_off_the_tokenizers_own_template(family, tokenizer):
    from trl.chat_template_utils import qwen2_5_training_chat_template, qwen3_training_chat_template

    fmt = chat_format(tokenizer)
    assert fmt.family == family and fmt.reasoning == (family == "qwen3")
    training = {"qwen2.5": qwen2_5_training_chat_template, "qwen3": qwen3_training_chat_template}[family]
    assert fmt.training_template == training
    # Qwen2.5's own template is prefix-preserving and renders prompts; Qwen3's is not, so its training
    # variant (the same text, empty reasoning blocks kept) renders prompts on every path.
    assert fmt.render_template == (tokenizer.chat_template if family == "qwen2.5" else training)


def test_a_template_protege_cannot_parse_or_train_is_refused_in_one_line(tokenizer):
    foreign = copy.deepcopy(tokenizer)
    foreign.chat_template = (
        "{%- for m in messages %}{%- if m.role == 'assistant' %}{% generation %}{{ m.content }}"
        "{%- for c in m.tool_calls or [] %}CALL {{ c.function.name }}{%- endfor %}{% endgeneration %}"
        "{%- else %}{{ m.content }}{%- endif %}{%- endfor %}"
    )
    with pytest.raises(
        ChatFormatError, match=r"writes a tool call as .*CALL probe_tool.*`<tool_call>` JSON"
    ) as err:
        chat_format(foreign)
    assert "\n" not in str(err.value)
    foreign.chat_template = "{%- for m in messages %}{{ m.content }}{%- endfor %}"
    with pytest.raises(ChatFormatError, match="not one TRL can train on"):
        chat_format(foreign)
    foreign.chat_template = None
    with pytest.raises(ChatFormatError, match="has no chat template"):
        chat_format(foreign)


# --------------------------------------------------------------------------------------------------
# SFT: assistant-only targets, and the training text continues every inference prompt
# --------------------------------------------------------------------------------------------------


def test_sft_targets_are_exactly_the_protege_turns_and_extend_each_inference_prompt(family, tokenizer):
    trajectory = as_trajectory(chat_record(0, extra_turns=1))
    record = to_record(trajectory, TOOLS)
    fmt = chat_format(tokenizer)
    example = sft.render_example(tokenizer, fmt.training_template, record)
    ids, labels = example["input_ids"], example["labels"]
    starts = [
        i for i, label in enumerate(labels) if label != sft.IGNORE_INDEX and labels[i - 1] == sft.IGNORE_INDEX
    ]
    runs = []
    for start in starts:
        end = next((i for i in range(start, len(labels)) if labels[i] == sft.IGNORE_INDEX), len(labels))
        assert labels[start:end] == ids[start:end]
        runs.append(tokenizer.decode(ids[start:end]))
    policy = [m for m in record["messages"] if m["provenance"] == "policy"]
    think = EMPTY_THINK if family == "qwen3" else ""
    assert runs == [think + expected_target(m) for m in policy]
    assert not any(text in "".join(runs) for text in (SYSTEM, TASK, OBSERVATION, GUIDANCE, "<tool_response>"))
    # Each policy turn's target starts right where the agent's inference prompt for that turn ends.
    turns = [i for i, m in enumerate(trajectory.messages) if m.provenance == "policy"]
    for start, turn in zip(starts, turns, strict=True):
        prompt = prompt_ids(tokenizer, trajectory.messages[:turn], TOOLS)
        assert ids[: len(prompt)] == prompt and start == len(prompt)
    if family == "qwen3":  # why the render template is not Qwen3's own: it drops earlier empty think blocks
        chat = chat_messages(trajectory.messages[: turns[-1]])
        own = tokenizer.apply_chat_template(chat, tools=TOOLS, add_generation_prompt=True, tokenize=False)
        assert EMPTY_THINK not in own and not tokenizer.decode(ids).startswith(own)


# --------------------------------------------------------------------------------------------------
# One episode through eval, RL and SFT; one GRPO step
# --------------------------------------------------------------------------------------------------


def test_eval_rl_and_sft_render_one_episode_to_the_same_ids(
    family, tokenizer, repos, task, tmp_path, monkeypatch
):
    from protege.rl.rollout import run_rollouts
    from tests.agent.test_render_parity import eval_path, sft_path, target_positions
    from tests.test_rl_rollout import context

    monkeypatch.setattr(rl_helpers, "SCRIPT", SCRIPTS[family])  # what the replayed model and RL generate
    cfg = rl_cfg(repos, tmp_path)
    trajectory, eval_prompts = eval_path(cfg, tokenizer, task)
    assert trajectory.status == "submitted" and len(eval_prompts) == len(SCRIPTS[family])
    generator = ScriptedGenerator(tokenizer)
    [rollout] = run_rollouts(context(cfg, tokenizer, generator, tmp_path), [(task, 0)], workers=1)
    assert not rollout.failed, rollout.failure
    assert [call.prompt for call in generator.calls] == eval_prompts
    [example] = sft_path(cfg, tokenizer, trajectory, tmp_path)
    trace = rollout.trace
    assert example["input_ids"][: len(trace.sequence)] == trace.sequence
    trained = [len(trace.prompt_ids) + i for i, bit in enumerate(trace.env_mask) if bit]
    assert target_positions(example) == trained
    assert rollout.trajectory.phase == "rl1"


QWEN3_SOLO_SCRIPT = [
    EMPTY_THINK + "Find the definitions.\n" + tool_call("bash", command="grep -rn 'def ' . | head -3"),
    "<think>\nDone.\n</think>\n\n" + tool_call("submit"),
]
SOLO_SCRIPTS = {"qwen2.5": rl_helpers.SOLO_SCRIPT, "qwen3": QWEN3_SOLO_SCRIPT}
# Stage II: the rollout that never asks gets the -10 no-call penalty, so the group has two rewards.
ONE_TASK = (
    "rl.total_steps=2",
    "rl.stage_one_steps=1",
    "rl.tasks_per_step=1",
    "rl.group_size=2",
    "rl.rollout_workers=1",
    "tasks.train_ids=[protege-demo__moneyfmt-1]",
)


@pytest.fixture
def alternating(family, tokenizer, monkeypatch) -> rl_helpers.AlternatingGenerator:
    """Rollouts alternate between asking the expert and not (in stage II: two rewards, a non-zero advantage)."""
    monkeypatch.setattr(rl_helpers, "SCRIPT", SCRIPTS[family])
    monkeypatch.setattr(rl_helpers, "SOLO_SCRIPT", SOLO_SCRIPTS[family])
    return rl_helpers.AlternatingGenerator(tokenizer)


def test_grpo_trains_exactly_the_generated_tokens(
    family, family_dir, tokenizer, repos, tmp_path, alternating
):
    cfg = rl_cfg(repos, tmp_path, *ONE_TASK)
    plan = rl.plan_stage(cfg, 2, str(family_dir[1]), tmp_path / "out", None)
    built = rl.build_trainer(cfg, plan, tmp_path / "out", None, None, None, generator=alternating)
    batch = built.trainer._generate_and_score_completions([{"prompt": "protege-demo__moneyfmt-1"}] * 2)
    weights = (batch["completion_mask"] * batch["tool_mask"]).tolist()
    ids = batch["completion_ids"].tolist()
    trained = [tokenizer.decode([t for t, w in zip(ids[r], weights[r], strict=True) if w]) for r in range(2)]
    expected = ["".join(text + "<|im_end|>" for text in s) for s in (SCRIPTS[family], SOLO_SCRIPTS[family])]
    assert sorted(trained) == sorted(expected)


# Qwen2.5's real step is tests/test_rl.py's; here the second family's (about 30 s).
@pytest.mark.parametrize("family_dir", ["qwen3"], indirect=True)
def test_one_rl_step_runs_and_changes_the_weights(
    family, family_dir, tokenizer, repos, tmp_path, alternating
):
    from safetensors.torch import load_file

    cfg = rl_cfg(repos, tmp_path, *ONE_TASK)
    result = rl.run(cfg, 2, str(family_dir[1]), tmp_path / "rl2", generator=alternating)
    assert result["global_step"] == 1
    rows = [
        json.loads(line)
        for line in (tmp_path / "rl2" / "rollouts" / "step-00001.jsonl").read_text().splitlines()
    ]
    assert [r["phase"] for r in rows] == ["rl2", "rl2"] and [r["status"] for r in rows] == ["submitted"] * 2
    start = load_file(family_dir[1] / "model.safetensors")
    after = load_file(Path(result["model_dir"]) / "model.safetensors")
    assert any(not (after[name] == start[name]).all() for name in start)
