"""Policy backends: scripted replay, in-process transformers (exact ids), OpenAI-compatible and Anthropic servers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from protege.agent import qwen_format
from protege.agent.api_policies import AnthropicPolicy, OpenAIChatPolicy, to_anthropic_messages
from protege.agent.policies import (
    ContextOverflow,
    PolicyError,
    ScriptedPolicy,
    TransformersPolicy,
    to_chat_messages,
)
from protege.agent.policy_choice import make_policy
from protege.agent.tools import TOOL_SCHEMAS
from protege.config import PolicyConfig, TinyModelConfig, load_config
from protege.trajectory import Message, ToolCall
from tests.agent.anthropic_mock import (
    Canned,
    MockLLMServer,
    anthropic_error,
    anthropic_tool_use,
    openai_error,
    openai_text,
)

HISTORY = [
    Message(role="system", provenance="system", content="You fix bugs."),
    Message(role="user", provenance="task", content="add() subtracts"),
    Message(
        role="assistant",
        provenance="policy",
        content="Look.",
        tool_calls=[ToolCall(id="c1", name="bash", arguments={"command": "ls"})],
    ),
    Message(role="tool", provenance="tool", content="a.py", tool_call_id="c1", name="bash"),
    Message(
        role="assistant",
        provenance="policy",
        content="",
        tool_calls=[ToolCall(id="c2", name="ask_expert", arguments={"question": "where?"})],
    ),
    Message(
        role="tool",
        provenance="expert",
        content="<expert_llm_guidance>\nadd\n</expert_llm_guidance>",
        tool_call_id="c2",
        name="ask_expert",
    ),
    Message(role="user", provenance="tool", content="Format error: no tool call"),
]


# --------------------------------------------------------------------------------------------------
# Scripted
# --------------------------------------------------------------------------------------------------


def test_scripted_policy_replays_calls_and_raw_text_then_is_exhausted() -> None:
    policy = ScriptedPolicy(
        [
            {"tool": "bash", "arguments": {"command": "ls"}, "thought": "List files.", "cost_usd": 0.25},
            {"text": "no call here"},
        ]
    )
    first = policy.generate([], TOOL_SCHEMAS)
    assert first.text.startswith("List files.\n<tool_call>")
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("bash", {"command": "ls"})]
    assert first.cost_usd == 0.25 and first.format_error == ""
    second = policy.generate([], TOOL_SCHEMAS)
    assert second.tool_calls == [] and second.text == "no call here"
    with pytest.raises(PolicyError, match="exhausted after 2 turn"):
        policy.generate([], TOOL_SCHEMAS)


@pytest.mark.parametrize(
    ("turns", "phrase"),
    [
        (["bash"], "script turn 0: expected an object"),
        ([{"tool": "bash"}, {"tool": "bash", "text": "x"}], "script turn 1: give exactly one of"),
        ([{}], "script turn 0: give exactly one of"),
        ([{"tool": "bash", "args": {}}], "unknown key(s) args"),
        ([{"tool": "bash", "arguments": ["ls"]}], "`arguments` must be an object"),
    ],
)
def test_bad_scripts_name_the_turn(turns: list, phrase: str) -> None:
    with pytest.raises(ValueError) as err:
        ScriptedPolicy(turns)
    assert phrase in str(err.value)


def test_script_file_and_make_policy(tmp_path: Path) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"turns": [{"tool": "submit"}]}))
    cfg = load_config("local", overrides=["agent.policy.backend=scripted"])
    policy = make_policy(cfg, str(script))
    assert isinstance(policy, ScriptedPolicy) and policy.generate([], []).tool_calls[0].name == "submit"
    with pytest.raises(ValueError, match="needs a script file"):
        make_policy(cfg, None)
    script.write_text("{not json")
    with pytest.raises(ValueError, match="s.json: cannot read the policy script"):
        ScriptedPolicy.from_file(script)


# --------------------------------------------------------------------------------------------------
# Message conversion
# --------------------------------------------------------------------------------------------------


def test_chat_messages_in_openai_form() -> None:
    wire = to_chat_messages(HISTORY, arguments_as_json=True)
    assert wire[2]["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"command": "ls"}'},
    }
    assert wire[3] == {"role": "tool", "content": "a.py", "tool_call_id": "c1", "name": "bash"}
    templated = to_chat_messages(HISTORY, arguments_as_json=False)
    assert templated[2]["tool_calls"][0]["function"]["arguments"] == {"command": "ls"}


def test_anthropic_messages_use_tool_use_and_tool_result_blocks() -> None:
    system, chat = to_anthropic_messages(HISTORY)
    assert system == "You fix bugs."
    assert [m["role"] for m in chat] == ["user", "assistant", "user", "assistant", "user"]
    assert chat[1]["content"] == [
        {"type": "text", "text": "Look."},
        {"type": "tool_use", "id": "c1", "name": "bash", "input": {"command": "ls"}},
    ]
    assert chat[2]["content"] == [{"type": "tool_result", "tool_use_id": "c1", "content": "a.py"}]
    assert chat[3]["content"] == [
        {"type": "tool_use", "id": "c2", "name": "ask_expert", "input": {"question": "where?"}}
    ]
    # The expert's tool_result and the following format-error text share one user turn.
    assert [b["type"] for b in chat[4]["content"]] == ["tool_result", "text"]


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible server (vLLM) on loopback
# --------------------------------------------------------------------------------------------------


def _vllm_reply(tool_calls: list | None, content: str = "") -> Canned:
    canned = openai_text(content, prompt_tokens=40, completion_tokens=3)
    choice = canned.body["choices"][0]
    if tool_calls is not None:
        choice["message"]["tool_calls"] = tool_calls
    choice["token_ids"] = [5, 6, 7]
    choice["logprobs"] = {"content": [{"token": f"token_id:{i}", "logprob": -0.5} for i in (5, 6, 7)]}
    canned.body["prompt_token_ids"] = [1, 2, 3]
    return canned


def test_openai_policy_sends_tools_and_returns_exact_ids() -> None:
    call = {"id": "x1", "type": "function", "function": {"name": "bash", "arguments": '{"command": "ls"}'}}
    with MockLLMServer() as server:
        server.push(_vllm_reply([call], content="Listing."))
        policy = OpenAIChatPolicy(PolicyConfig(base_url=server.url, max_retries=0), "qwen-7b", api_key="k")
        turn = policy.generate(HISTORY, TOOL_SCHEMAS)
    body = server.requests[0].body
    assert server.requests[0].path == "/v1/chat/completions"
    assert server.requests[0].headers["authorization"] == "Bearer k"
    assert body["model"] == "qwen-7b" and body["tools"] == TOOL_SCHEMAS
    assert body["messages"] == to_chat_messages(HISTORY, arguments_as_json=True)
    assert body["return_token_ids"] is True and body["logprobs"] is True
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [("x1", "bash", {"command": "ls"})]
    assert turn.text == "Listing."
    assert (turn.token_ids, turn.prompt_ids, turn.logprobs) == ([5, 6, 7], [1, 2, 3], [-0.5, -0.5, -0.5])
    assert (turn.input_tokens, turn.output_tokens, turn.cost_usd) == (40, 3, 0.0)


def test_openai_policy_parses_qwen_blocks_when_the_server_has_no_tool_parser() -> None:
    text = "Run it.\n" + qwen_format.render_tool_call("bash", {"command": "pytest"})
    with MockLLMServer() as server:
        server.push(_vllm_reply(None, content=text))
        turn = OpenAIChatPolicy(PolicyConfig(base_url=server.url + "/v1"), "m").generate(
            HISTORY, TOOL_SCHEMAS
        )
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [("bash", {"command": "pytest"})]


def test_openai_policy_errors_retries_and_context_overflow() -> None:
    with MockLLMServer() as server:
        server.push(openai_error(503, "busy"), openai_text("ok"))
        turn = OpenAIChatPolicy(PolicyConfig(base_url=server.url, max_retries=1), "m").generate(HISTORY, [])
        assert turn.text == "ok" and server.request_count == 2  # one retry on a 503
        server.push(
            openai_error(400, "This model's maximum context length is 32768 tokens", "BadRequestError")
        )
        with pytest.raises(ContextOverflow):
            OpenAIChatPolicy(PolicyConfig(base_url=server.url), "m").generate(HISTORY, [])
        server.push(openai_error(401, "bad key", "auth"))
        with pytest.raises(PolicyError, match="HTTP 401"):
            OpenAIChatPolicy(PolicyConfig(base_url=server.url), "m").generate(HISTORY, [])
        assert server.request_count == 4  # a 400/401 is not retried
    bad_args = {"id": "x", "type": "function", "function": {"name": "bash", "arguments": "{oops"}}
    with MockLLMServer() as server:
        server.push(_vllm_reply([bad_args]))
        turn = OpenAIChatPolicy(PolicyConfig(base_url=server.url), "m").generate(HISTORY, [])
    assert turn.tool_calls == [] and "not valid JSON" in turn.format_error


# --------------------------------------------------------------------------------------------------
# Anthropic Messages API on loopback (the real SDK)
# --------------------------------------------------------------------------------------------------


def test_anthropic_policy_acts_through_tool_use_and_is_metered() -> None:
    cfg = PolicyConfig(max_retries=0, max_new_tokens=512)
    with MockLLMServer(api_key="test-key") as server:
        server.push(
            anthropic_tool_use(
                "bash",
                {"command": "pytest -q"},
                text="Test.",
                tool_use_id="tu1",
                input_tokens=1000,
                output_tokens=100,
            )
        )
        policy = AnthropicPolicy(
            cfg.model_copy(update={"base_url": server.url}), "claude-x", api_key="test-key"
        )
        turn = policy.generate(HISTORY, TOOL_SCHEMAS)
        server.push(
            anthropic_error(400, "invalid_request_error", "prompt is too long: 300000 tokens > 200000")
        )
        with pytest.raises(ContextOverflow):
            policy.generate(HISTORY, TOOL_SCHEMAS)
    body = server.requests[0].body
    assert body["model"] == "claude-x" and body["max_tokens"] == 512
    assert body["system"] == "You fix bugs."
    assert (body["system"], body["messages"]) == to_anthropic_messages(HISTORY)
    assert [t["name"] for t in body["tools"]] == ["bash", "str_replace_editor", "submit", "ask_expert"]
    assert body["tools"][0]["input_schema"] == TOOL_SCHEMAS[0]["function"]["parameters"]
    assert turn.text == "Test."
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [
        ("tu1", "bash", {"command": "pytest -q"})
    ]
    assert turn.cost_usd == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6)


# --------------------------------------------------------------------------------------------------
# In-process transformers on the tiny model
# --------------------------------------------------------------------------------------------------

# As small as the builder allows: these tests check plumbing (exact ids, logprobs), not quality.
TINY = TinyModelConfig(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.model import build_tiny_model

    corpus = tmp_path_factory.mktemp("corpus")
    shutil.copy(qwen_format.__file__, corpus / "qwen_format.py")  # the tokenizer only needs some text
    return build_tiny_model(TINY, tmp_path_factory.mktemp("tiny") / "model", [corpus])


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    from protege.model import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(tiny_dir, "float32", "cpu")
    return model.eval(), tokenizer


def test_make_policy_fetches_an_s3_model_through_the_store(tiny_dir: Path, store, tmp_path: Path) -> None:
    from protege.model import ModelResolveError

    uri = store.uri("policies/model")
    store.upload_dir(tiny_dir, uri)
    cfg = load_config("local", overrides=[f"model.base={uri}", f"model.cache_dir={tmp_path}"])
    with pytest.raises(ModelResolveError, match="needs an artifact store"):
        make_policy(cfg)
    policy = make_policy(cfg, store=store)
    assert isinstance(policy, TransformersPolicy) and policy.model == uri  # trajectories record the URI


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_transformers_policy_returns_the_exact_generated_ids(tiny, temperature: float) -> None:
    import torch

    model, tokenizer = tiny
    cfg = PolicyConfig(max_new_tokens=12, temperature=temperature, context_window=8192)
    policy = TransformersPolicy(model, tokenizer, cfg, model_id="tiny")
    torch.manual_seed(0)
    turn = policy.generate(HISTORY, TOOL_SCHEMAS)
    assert turn.token_ids and len(turn.token_ids) <= 12
    assert turn.prompt_ids == policy.prompt_ids(HISTORY, TOOL_SCHEMAS)
    body = turn.token_ids[:-1] if turn.token_ids[-1] == tokenizer.eos_token_id else turn.token_ids
    assert tokenizer.decode(body, skip_special_tokens=False) == turn.text
    assert (turn.input_tokens, turn.output_tokens) == (len(turn.prompt_ids), len(turn.token_ids))
    # The logprobs are those of the model for exactly these ids (teacher-forced re-scoring agrees).
    ids = torch.tensor([turn.prompt_ids + turn.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(turn.prompt_ids) - 1 : -1].float() / (temperature or 1.0)
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(turn.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(turn.logprobs), expected, atol=1e-4)


def test_transformers_policy_context_overflow(tiny) -> None:
    model, tokenizer = tiny
    policy = TransformersPolicy(model, tokenizer, PolicyConfig(context_window=256))
    long = [*HISTORY, Message(role="user", provenance="task", content="word " * 400)]
    with pytest.raises(ContextOverflow, match="context window of 256"):
        policy.generate(long, TOOL_SCHEMAS)


def test_tiny_model_in_the_agent_loop_records_exact_ids_and_ends_with_a_status(tiny, tmp_path: Path) -> None:
    from protege.agent.agent import Agent
    from protege.config import AgentConfig
    from tests.agent.test_tools import open_toy

    model, tokenizer = tiny
    with open_toy(tmp_path) as (sandbox, task):
        # An untrained model writes no well-formed tool call: the episode ends on format errors.
        policy = TransformersPolicy(model, tokenizer, PolicyConfig(max_new_tokens=8), model_id="tiny")
        trajectory = Agent(AgentConfig(max_format_errors=2), policy, sandbox, task).run()
        overflowing = TransformersPolicy(model, tokenizer, PolicyConfig(context_window=256), model_id="tiny")
        overflow = Agent(AgentConfig(), overflowing, sandbox, task).run()
    assert trajectory.status == "format_errors" and trajectory.policy_backend == "transformers"
    turns = [m for m in trajectory.messages if m.provenance == "policy"]
    assert len(turns) == 2 and all(m.token_ids and len(m.logprobs or []) == len(m.token_ids) for m in turns)
    assert trajectory.policy_output_tokens == sum(len(m.token_ids or []) for m in turns)
    assert overflow.status == "context_overflow" and "context window of 256" in overflow.status_detail
