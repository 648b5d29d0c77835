"""Train what you infer: the agent at inference (eval's path), an RL rollout and the SFT example render the
same trajectory to the same token ids, turn by turn, for the tiny model's chat template and for the
Qwen2.5(-Coder)-Instruct template, under each history view (protege.agent.render).

Each path runs its own code: the eval path is `Agent` + `TransformersPolicy` (its HF model replaced by a
replayer of the script, since no weights can be downloaded), the RL path is `run_rollouts` with
`TracePolicy`, the SFT path is the synth export (`export_dataset`, the JSONL file) read back and rendered by
`protege.sft.build_examples` with the training template."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from protege import rl, sft
from protege.agent.agent import Agent
from protege.agent.expert import ExpertService
from protege.agent.policies import TransformersPolicy
from protege.agent.sandbox import open_sandbox
from protege.agent.tools import TOOL_SCHEMAS
from protege.rl import RLError
from protege.rl.rollout import check_history_view, run_rollouts
from protege.sft_data import export_dataset, read_dataset
from protege.tasksets import load_task_set
from tests.rl_helpers import SCRIPT, ScriptedGenerator, build_tiny, rl_cfg
from tests.test_rl_rollout import context

# The chat template of Qwen/Qwen2.5-Coder-7B-Instruct's tokenizer_config.json (the same text as the other
# Qwen2.5-Instruct models), embedded because nothing can be downloaded here.
QWEN25_CODER_INSTRUCT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == '
    '"assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path, only=["protege-demo/moneyfmt"])
    return path


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("tiny")
    return AutoTokenizer.from_pretrained(build_tiny(tmp / "model", tmp / "corpus"))


@pytest.fixture(scope="module")
def task():
    return {t.instance_id: t for t in load_task_set("demo:train")}["protege-demo__moneyfmt-1"]


@pytest.fixture(params=["tiny", "qwen2.5-coder-instruct"])
def tokenizer(request, tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)
    if request.param != "tiny":
        tok.chat_template = QWEN25_CODER_INSTRUCT_TEMPLATE
    return tok


class ReplayModel:
    """Stands in for the HF model behind TransformersPolicy: `generate` returns the script's next turn as
    the ids a model would have produced (the same ids ScriptedGenerator gives RL)."""

    def __init__(self, tokenizer: Any) -> None:
        self.replay = ScriptedGenerator(tokenizer)
        self.device = "cpu"
        self.vocab = len(tokenizer)

    def generate(self, input_ids: Any, max_new_tokens: int, **_: Any) -> Any:
        import torch

        ids, _ = self.replay.generate(input_ids[0].tolist(), max_new_tokens)
        logits = tuple(torch.zeros(1, self.vocab) for _ in ids)
        return SimpleNamespace(sequences=torch.cat([input_ids, torch.tensor([ids])], dim=1), logits=logits)


def eval_path(cfg, tokenizer, task) -> tuple[Any, list[list[int]]]:
    """An episode as eval plays it (Agent + TransformersPolicy); the trajectory and every turn's prompt ids."""
    policy = TransformersPolicy(ReplayModel(tokenizer), tokenizer, cfg.agent.policy, model_id="replay")
    expert = ExpertService(cfg.expert.model_copy(update={"gold_patch": False}))
    session = expert.session(cfg.agent.expert_quota, cfg.agent.cost_limit_usd)
    with open_sandbox(cfg.agent.sandbox, task, Path(cfg.tasks.repos_dir)) as sandbox:
        agent = Agent(cfg.agent, policy, sandbox, task, session, phase="eval")
        trajectory = agent.run()
    return trajectory, [turn.prompt_ids for turn in agent.turns]


def sft_path(cfg, tokenizer, trajectory, tmp: Path) -> list[dict[str, list[int]]]:
    """The trajectory through the synth export's file and SFT's renderer (training template)."""
    from trl.chat_template_utils import get_training_chat_template

    export = export_dataset([trajectory], tmp / "export", TOOL_SCHEMAS, {})
    template = get_training_chat_template(tokenizer) or tokenizer.chat_template
    examples, report = sft.build_examples(
        tokenizer,
        template,
        read_dataset(export.path),
        10**6,
        "error",
        view=cfg.agent.history_view,
        keep_last=cfg.agent.keep_last_observations,
    )
    assert report["trained_on"] == 1
    return examples


def target_positions(example: dict[str, list[int]]) -> list[int]:
    return [i for i, label in enumerate(example["labels"]) if label != sft.IGNORE_INDEX]


def test_full_view_renders_identically_for_eval_rl_and_sft(repos, tokenizer, task, tmp_path):
    cfg = rl_cfg(repos, tmp_path)
    assert cfg.agent.history_view == "full"
    trajectory, eval_prompts = eval_path(cfg, tokenizer, task)
    assert trajectory.status == "submitted" and len(eval_prompts) == len(SCRIPT)

    generator = ScriptedGenerator(tokenizer)
    [rollout] = run_rollouts(context(cfg, tokenizer, generator, tmp_path), [(task, 0)], workers=1)
    assert not rollout.failed, rollout.failure
    rl_prompts = [call.prompt for call in generator.calls]

    [example] = sft_path(cfg, tokenizer, trajectory, tmp_path)
    ids = example["input_ids"]
    assert rl_prompts == eval_prompts
    for prompt in eval_prompts:
        assert ids[: len(prompt)] == prompt
    # The whole RL sequence starts the SFT example (which goes on with the submit tool's observation), and
    # SFT's targets are exactly the tokens RL trains on (env_mask 1): the protégé's text, calls and end token.
    trace = rollout.trace
    assert ids[: len(trace.sequence)] == trace.sequence
    trained = [len(trace.prompt_ids) + i for i, bit in enumerate(trace.env_mask) if bit]
    assert target_positions(example) == trained


def test_collapsed_view_trains_each_turn_on_the_agents_view(repos, tokenizer, task, tmp_path):
    cfg = rl_cfg(repos, tmp_path, "agent.history_view=collapsed", "agent.keep_last_observations=1")
    trajectory, eval_prompts = eval_path(cfg, tokenizer, task)
    examples = sft_path(cfg, tokenizer, trajectory, tmp_path)
    assert len(examples) == len(eval_prompts) == len(SCRIPT)
    assert "Old environment output:" in tokenizer.decode(eval_prompts[-1])  # the view did collapse something
    turns = [m for m in trajectory.messages if m.provenance == "policy"]
    for example, prompt, turn in zip(examples, eval_prompts, turns, strict=True):
        ids = example["input_ids"]
        assert ids[: len(prompt)] == prompt
        # one target per example: this turn's generated ids, from the end of its prompt
        assert target_positions(example) == list(range(len(prompt), len(prompt) + len(turn.token_ids)))
        assert ids[len(prompt) : len(prompt) + len(turn.token_ids)] == turn.token_ids
    with pytest.raises(ValueError, match="agent.history_view=collapsed: RL rollouts need `full`"):
        check_history_view(cfg)
    with pytest.raises(RLError, match="agent.history_view=collapsed"):  # the phase refuses before any work
        rl.run(cfg, 1, str(tmp_path / "no-model"), tmp_path / "rl1")


def test_qwen25_coder_template_gets_trl_training_variant(tiny_tokenizer):
    """SFT swaps in trl's training template (generation markers) for the real model's template: the text
    must be the one trl recognises, or SFT would find no assistant spans on a cluster."""
    from trl.chat_template_utils import get_training_chat_template, qwen2_5_training_chat_template

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = QWEN25_CODER_INSTRUCT_TEMPLATE
    assert get_training_chat_template(tok) == qwen2_5_training_chat_template
