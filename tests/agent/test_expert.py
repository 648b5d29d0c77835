"""ask_expert against a local HTTP server speaking the Anthropic / OpenAI APIs (no paid API, no network).

The anthropic backend runs the real anthropic SDK with base_url=http://127.0.0.1:<port>.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from protege.agent.expert import (
    GOLD_PATCH_INSTRUCTION,
    SYSTEM_PROMPT,
    ExpertService,
    observation,
    render_message,
    wrap_guidance,
)
from protege.agent.expert_backends import oracle_guidance, parse_hunks
from protege.config import ExpertConfig, ExpertPrices
from protege.tasks import TaskInstance
from protege.trajectory import Message, ToolCall
from tests.agent.anthropic_mock import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    MockLLMServer,
    anthropic_error,
    anthropic_text,
    anthropic_tool_use,
    openai_error,
    openai_text,
)

KEY = "sk-test-123"
FAST_RETRY = {"retry-after-ms": "1"}  # the SDK honours it, so retries cost milliseconds

# A blank context line of a unified diff is a single space; spelled out so formatters keep it.
GOLD_PATCH = "\n".join(
    [
        "diff --git a/calc/ops.py b/calc/ops.py",
        "--- a/calc/ops.py",
        "+++ b/calc/ops.py",
        "@@ -1,8 +1,10 @@",
        " def add(a, b):",
        "     return a + b",
        " ",
        " ",
        " def divide(a, b):",
        "-    if b is None:",
        "-        return 0",
        "+    if b == 0:",
        '+        raise ZeroDivisionError("cannot divide by zero")',
        "+    if b is None:",
        '+        raise TypeError("divisor must be a number")',
        "     return a / b",
        "diff --git a/calc/__init__.py b/calc/__init__.py",
        "--- a/calc/__init__.py",
        "+++ b/calc/__init__.py",
        "@@ -1,2 +1,3 @@",
        " from calc.ops import add",
        "+from calc.ops import divide",
        ' __all__ = ["add"]',
        "",
    ]
)

TEST_PATCH = """\
diff --git a/tests/test_ops.py b/tests/test_ops.py
--- a/tests/test_ops.py
+++ b/tests/test_ops.py
@@ -1,1 +1,2 @@
 import calc
+import pytest
"""


@pytest.fixture
def task() -> TaskInstance:
    return TaskInstance(
        instance_id="calc__ops-1",
        repo="calc/ops",
        base_commit="0123456789abcdef",
        problem_statement="divide(1, 0) returns 0 instead of raising ZeroDivisionError.",
        patch=GOLD_PATCH,
        test_patch=TEST_PATCH,
        FAIL_TO_PASS=["tests/test_ops.py::test_divide_by_zero"],
    )


@pytest.fixture
def history() -> list[Message]:
    """A system prompt, the task, then 4 assistant/tool exchanges (10 messages)."""
    messages = [
        Message(role="system", provenance="system", content="SCAFFOLD-SYSTEM-PROMPT"),
        Message(role="user", provenance="task", content="TASK-MESSAGE"),
    ]
    for i in range(4):
        call = ToolCall(id=f"c{i}", name="bash", arguments={"command": f"grep -n divide step{i}.py"})
        messages.append(
            Message(role="assistant", provenance="policy", content=f"THOUGHT-{i}", tool_calls=[call])
        )
        messages.append(
            Message(role="tool", provenance="tool", content=f"OUTPUT-{i}", tool_call_id=f"c{i}", name="bash")
        )
    return messages


@pytest.fixture
def server():
    with MockLLMServer(api_key=KEY) as mock:
        yield mock


def anthropic_cfg(server: MockLLMServer, tmp_path: Path, **over) -> ExpertConfig:
    fields = {
        "backend": "anthropic",
        "model": "claude-test",
        "base_url": server.url,
        "timeout_s": 5.0,
        "max_retries": 2,
        "cache_mode": "off",
        "cache_dir": str(tmp_path / "cache"),
        "prices": ExpertPrices(input_per_mtok=3.0, output_per_mtok=15.0),
    }
    return ExpertConfig(**{**fields, **over})


def service(cfg: ExpertConfig, key: str | None = KEY) -> ExpertService:
    return ExpertService(cfg, api_key=key)


# --------------------------------------------------------------------------------------------------
# Compact context and reply
# --------------------------------------------------------------------------------------------------


def test_request_carries_problem_statement_last_five_messages_and_question(server, tmp_path, task, history):
    server.push(anthropic_text("Look at divide()."))
    expert = service(anthropic_cfg(server, tmp_path)).session(quota=6, cost_limit_usd=2.0)

    call = expert.ask("Where is the division handled?", history, task, step=7)

    assert server.request_count == 1
    sent = server.requests[0]
    assert sent.path == ANTHROPIC_PATH
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "claude-test"
    assert sent.body["max_tokens"] == 2048
    assert sent.body["system"] == SYSTEM_PROMPT
    [message] = sent.body["messages"]
    assert message["role"] == "user"
    last_five = history[-5:]
    expected = (
        f"<problem_statement>\n{task.problem_statement}\n</problem_statement>\n\n"
        '<recent_messages count="5">\n'
        + "\n\n".join(render_message(m) for m in last_five)
        + "\n</recent_messages>\n\n<question>\nWhere is the division handled?\n</question>"
    )
    assert message["content"] == expected
    # The sixth-most-recent message and everything older stay out; so does the gold patch.
    for absent in (
        "THOUGHT-1",
        "OUTPUT-0",
        "TASK-MESSAGE",
        "SCAFFOLD-SYSTEM-PROMPT",
        "ZeroDivisionError(",
        "diff --git",
    ):
        assert absent not in message["content"]
    for present in ("OUTPUT-1", "OUTPUT-2", "THOUGHT-3", "OUTPUT-3", "grep -n divide step3.py", "THOUGHT-2"):
        assert present in message["content"]
    # The trajectory records exactly what was sent.
    assert call.context == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": expected},
    ]
    assert (call.step, call.question, call.backend, call.model) == (
        7,
        "Where is the division handled?",
        "anthropic",
        "claude-test",
    )


def test_problem_statement_can_be_left_out(server, tmp_path, task, history):
    server.push(anthropic_text("ok"))
    cfg = anthropic_cfg(server, tmp_path, include_problem_statement=False, context_messages=2)
    service(cfg).session(6, 2.0).ask("q?", history, task, step=1)
    content = server.requests[0].body["messages"][0]["content"]
    assert "<problem_statement>" not in content and task.problem_statement not in content
    assert "OUTPUT-3" in content and "THOUGHT-3" in content and "OUTPUT-2" not in content


def test_reply_is_metered_and_wrapped(server, tmp_path, task, history):
    server.push(anthropic_text("Check the zero case in divide.", input_tokens=1000, output_tokens=200))
    expert = service(anthropic_cfg(server, tmp_path)).session(6, 2.0)

    call = expert.ask("What is wrong?", history, task, step=3)

    assert call.status == "ok" and call.error == ""
    assert call.reply == "Check the zero case in divide."
    assert (call.input_tokens, call.output_tokens) == (1000, 200)
    assert call.cost_usd == pytest.approx((1000 * 3.0 + 200 * 15.0) / 1e6)
    assert call.latency_s > 0 and not call.cache_hit
    assert expert.spent_usd == pytest.approx(call.cost_usd)
    assert observation(call) == wrap_guidance("Check the zero case in divide.")
    assert wrap_guidance("  hint \n") == "<expert_llm_guidance>\nhint\n</expert_llm_guidance>"


def test_gold_patch_mode_shows_the_patch_with_the_no_paste_instruction(server, tmp_path, task, history):
    server.push(anthropic_text("ok"))
    service(anthropic_cfg(server, tmp_path, gold_patch=True)).session(6, 2.0).ask("q?", history, task, step=1)
    body = server.requests[0].body
    assert GOLD_PATCH_INSTRUCTION in body["system"]
    assert GOLD_PATCH.strip() in body["messages"][0]["content"]
    assert body["messages"][0]["content"].endswith("<question>\nq?\n</question>")


# --------------------------------------------------------------------------------------------------
# Limits: quota, run budget, episode cost cap
# --------------------------------------------------------------------------------------------------


def test_seventh_call_is_refused_without_a_request(server, tmp_path, task, history):
    server.push(*(anthropic_text(f"answer {i}") for i in range(7)))
    expert = service(anthropic_cfg(server, tmp_path)).session(quota=6, cost_limit_usd=2.0)

    calls = [expert.ask(f"question {i}", history, task, step=i) for i in range(7)]

    assert [c.status for c in calls] == ["ok"] * 6 + ["quota_exceeded"]
    assert server.request_count == 6 and server.pending == 1
    assert "quota of 6" in calls[6].error and calls[6].reply == ""
    assert observation(calls[6]).startswith("ask_expert failed (quota_exceeded)")
    assert "<expert_llm_guidance>" not in observation(calls[6])


def test_run_budget_stops_calls_across_episodes(server, tmp_path, task, history):
    server.push(anthropic_text("first", input_tokens=1000, output_tokens=0), anthropic_text("never sent"))
    # $1 per input token: the first call costs $1000, far beyond the $0.01 budget.
    cfg = anthropic_cfg(server, tmp_path, run_budget_usd=0.01, prices=ExpertPrices(input_per_mtok=1e6))
    run = service(cfg)

    first = run.session(6, 1e9).ask("q1", history, task, step=1)
    second = run.session(6, 1e9).ask("q2", history, task, step=1)

    assert first.status == "ok" and run.spent_usd == pytest.approx(1000.0)
    assert second.status == "budget_exhausted"
    assert "budget of $0.01 is spent" in second.error
    assert server.request_count == 1


def test_episode_cost_cap_stops_calls(server, tmp_path, task, history):
    server.push(anthropic_text("a", input_tokens=1000, output_tokens=0), anthropic_text("never sent"))
    cfg = anthropic_cfg(server, tmp_path, prices=ExpertPrices(input_per_mtok=1000.0))  # $1 per call
    run = service(cfg)
    episode = run.session(6, cost_limit_usd=0.5)

    assert episode.ask("q1", history, task, step=1).status == "ok"
    capped = episode.ask("q2", history, task, step=2)

    assert capped.status == "cost_limit" and "cost cap of $0.50" in capped.error
    assert server.request_count == 1
    assert run.session(6, 0.5).ask("q3", history, task, step=1).status == "ok"  # a new episode may ask


def test_concurrent_episodes_share_one_meter(server, tmp_path, task, history):
    server.push(*(anthropic_text(f"a{i}", input_tokens=100 + i, output_tokens=10) for i in range(8)))
    run = service(anthropic_cfg(server, tmp_path))
    calls = []

    def episode(i: int) -> None:
        calls.append(run.session(6, 2.0).ask(f"q{i}", history, task, step=1))

    threads = [threading.Thread(target=episode, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [c.status for c in calls] == ["ok"] * 8
    assert run.spent_usd == pytest.approx(sum(c.cost_usd for c in calls))
    assert server.request_count == 8


# --------------------------------------------------------------------------------------------------
# Response cache
# --------------------------------------------------------------------------------------------------


def test_replay_answers_from_cache_with_zero_requests(server, tmp_path, task, history, monkeypatch):
    server.push(anthropic_text("recorded answer", input_tokens=500, output_tokens=50))
    recorded = service(anthropic_cfg(server, tmp_path, cache_mode="record")).session(6, 2.0)
    first = recorded.ask("Why does it fail?", history, task, step=2)
    assert first.status == "ok" and not first.cache_hit and server.request_count == 1

    # A new run in replay mode: no API key anywhere, no request.
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    replay = ExpertService(anthropic_cfg(server, tmp_path, cache_mode="replay")).session(6, 2.0)
    again = replay.ask("Why does it fail?", history, task, step=2)
    miss = replay.ask("A question never recorded", history, task, step=3)

    assert server.request_count == 1
    assert again.status == "ok" and again.cache_hit and again.cost_usd == 0.0
    assert again.reply == "recorded answer" and (again.input_tokens, again.output_tokens) == (500, 50)
    assert again.context == first.context
    assert miss.status == "error" and "not in cache (replay mode)" in miss.error


def test_record_mode_never_pays_twice(server, tmp_path, task, history):
    server.push(anthropic_text("once"), anthropic_text("never sent"))
    cfg = anthropic_cfg(server, tmp_path, cache_mode="record")
    service(cfg).session(6, 2.0).ask("same question", history, task, step=1)
    hit = service(cfg).session(6, 2.0).ask("same question", history, task, step=1)

    assert hit.cache_hit and hit.reply == "once" and server.request_count == 1
    entries = list((tmp_path / "cache").rglob("*.json"))
    assert len(entries) == 1 and not list((tmp_path / "cache").rglob(".tmp-*"))


def test_cache_key_covers_model_and_prompt(server, tmp_path, task, history):
    server.push(anthropic_text("a"), anthropic_text("b"), anthropic_text("c"))
    cfg = anthropic_cfg(server, tmp_path, cache_mode="record")
    service(cfg).session(6, 2.0).ask("q", history, task, step=1)
    service(cfg.model_copy(update={"model": "claude-other"})).session(6, 2.0).ask("q", history, task, step=1)
    service(cfg).session(6, 2.0).ask("q", history[:-1], task, step=1)
    assert server.request_count == 3


def test_cache_off_always_calls(server, tmp_path, task, history):
    server.push(anthropic_text("a"), anthropic_text("b"))
    cfg = anthropic_cfg(server, tmp_path, cache_mode="off")
    replies = [service(cfg).session(6, 2.0).ask("q", history, task, step=1).reply for _ in range(2)]
    assert replies == ["a", "b"] and server.request_count == 2
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------------------------------
# Retries and errors: never an exception
# --------------------------------------------------------------------------------------------------


def test_overloaded_529_is_retried(server, tmp_path, task, history):
    server.push(
        anthropic_error(529, "overloaded_error", "Overloaded", FAST_RETRY), anthropic_text("after retry")
    )
    call = (
        service(anthropic_cfg(server, tmp_path, max_retries=2))
        .session(6, 2.0)
        .ask("q", history, task, step=1)
    )

    assert call.status == "ok" and call.reply == "after retry"
    assert server.request_count == 2
    assert server.requests[1].headers["x-stainless-retry-count"] == "1"


def unreachable_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("scripted", "override", "expected"),
    [
        (
            [anthropic_error(529, "overloaded_error", "Overloaded", FAST_RETRY)] * 2,
            {"max_retries": 1},
            "OverloadedError (HTTP 529)",
        ),
        ([], {"max_retries": 0, "key": "wrong-key"}, "AuthenticationError (HTTP 401)"),
        ([anthropic_error(400, "invalid_request_error", "prompt is too long")], {}, "prompt is too long"),
        ([], {"max_retries": 0, "base_url": "unreachable"}, "connection error"),
    ],
    ids=["overloaded-after-retries", "auth", "bad-request", "unreachable"],
)
def test_unrecoverable_errors_become_status_error(
    server, tmp_path, task, history, scripted, override, expected
):
    server.push(*scripted)
    key = override.pop("key", KEY)
    if override.get("base_url") == "unreachable":
        override["base_url"] = unreachable_url()
    expert = service(anthropic_cfg(server, tmp_path, **override), key=key).session(6, 2.0)

    call = expert.ask("q", history, task, step=1)

    assert call.status == "error"
    assert expected in call.error
    assert call.reply == "" and call.cost_usd == 0.0
    assert observation(call).startswith("ask_expert failed (error): ")
    assert server.pending == 0


def test_timeout_becomes_status_error(server, tmp_path, task, history):
    slow = anthropic_text("too late")
    slow.delay_s = 1.0
    server.push(slow)
    call = (
        service(anthropic_cfg(server, tmp_path, timeout_s=0.2, max_retries=0))
        .session(6, 2.0)
        .ask("q", history, task, step=1)
    )
    assert call.status == "error" and "timed out after 0.2s" in call.error


def test_missing_api_key_is_a_clear_configuration_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_EXPERT_KEY", raising=False)
    cfg = ExpertConfig(backend="anthropic", api_key_env="MY_EXPERT_KEY", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="set MY_EXPERT_KEY"):
        ExpertService(cfg)


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible backend
# --------------------------------------------------------------------------------------------------


def openai_cfg(server: MockLLMServer, tmp_path: Path, **over) -> ExpertConfig:
    fields = {
        "backend": "openai",
        "model": "qwen-expert",
        "base_url": server.url + "/v1",
        "timeout_s": 5.0,
        "max_retries": 2,
        "retry_backoff_s": 0.0,
        "cache_mode": "off",
        "cache_dir": str(tmp_path / "cache"),
    }
    return ExpertConfig(**{**fields, **over})


def test_openai_backend_against_the_mock(server, tmp_path, task, history):
    server.push(
        openai_error(503, "busy"), openai_text("Look at divide.", prompt_tokens=800, completion_tokens=40)
    )
    expert = service(openai_cfg(server, tmp_path)).session(6, 2.0)

    call = expert.ask("Where?", history, task, step=4)

    assert call.status == "ok" and call.reply == "Look at divide." and call.backend == "openai"
    assert (call.input_tokens, call.output_tokens) == (800, 40)
    assert server.request_count == 2  # the 503 was retried
    sent = server.requests[1]
    assert sent.path == OPENAI_PATH and sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "qwen-expert" and sent.body["max_tokens"] == 2048
    assert sent.body["messages"] == call.context
    assert sent.body["messages"][1]["content"].endswith("<question>\nWhere?\n</question>")


def test_openai_backend_errors_become_status_error(server, tmp_path, task, history):
    server.push(openai_error(503, "busy"), openai_error(503, "still busy"))
    call = (
        service(openai_cfg(server, tmp_path, max_retries=1)).session(6, 2.0).ask("q", history, task, step=1)
    )
    assert call.status == "error" and "HTTP 503" in call.error and "still busy" in call.error
    wrong_key = (
        service(openai_cfg(server, tmp_path), key="nope").session(6, 2.0).ask("q", history, task, step=1)
    )
    assert wrong_key.status == "error" and "HTTP 401" in wrong_key.error


# --------------------------------------------------------------------------------------------------
# Oracle
# --------------------------------------------------------------------------------------------------


def added_lines(patch: str) -> list[str]:
    return [
        line[1:].strip()
        for line in patch.splitlines()
        if line.startswith("+") and not line.startswith("+++") and line[1:].strip()
    ]


def test_oracle_names_file_and_function_without_pasting_the_fix(tmp_path, task, history):
    cfg = ExpertConfig(backend="oracle", allow_oracle=True, model="oracle", cache_dir=str(tmp_path))
    call = ExpertService(cfg).session(6, 2.0).ask("What should I change?", history, task, step=2)

    assert call.status == "ok" and call.backend == "oracle" and call.cost_usd == 0.0
    assert call.input_tokens > 0 and call.output_tokens > 0
    reply = call.reply
    assert "`calc/ops.py`" in reply and "`divide`" in reply and "`calc/__init__.py`" in reply
    assert "ZeroDivisionError" in reply and "around line 6" in reply
    assert "tests/test_ops.py::test_divide_by_zero" in reply
    gold = added_lines(GOLD_PATCH)
    reply_lines = "\n".join(line.strip() for line in reply.splitlines())
    for i in range(len(gold) - 2):
        assert "\n".join(gold[i : i + 3]) not in reply_lines
    for line in gold:  # stronger: not even one added line verbatim
        assert line not in reply
    assert not list(tmp_path.rglob("*.json"))  # the free oracle bypasses the cache


def test_parse_hunks_reads_bodies_by_header_counts():
    patch = (
        "diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n"
        "@@ -3,2 +3,2 @@ class Report:\n"
        "--- old comment\n"
        "+-- new comment\n"
        " SELECT 1\n"
    )
    [hunk] = parse_hunks(patch)
    assert (hunk.path, hunk.line, hunk.scope) == ("q.sql", 3, "Report")
    assert hunk.removed == ["-- old comment"] and hunk.added == ["-- new comment"]


def test_oracle_guidance_for_a_pure_removal(task):
    patch = (
        "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n"
        "@@ -10,3 +10,2 @@ def load(path):\n"
        "     data = read(path)\n"
        "-    data = strip_cache(data)\n"
        "     return data\n"
    )
    text = oracle_guidance(task.model_copy(update={"patch": patch}))
    assert "in `load` around line 11" in text and "should go" in text and "`strip_cache`" in text


# --------------------------------------------------------------------------------------------------
# The mock itself (reused by the policy and synthesis tests for tool_use round trips)
# --------------------------------------------------------------------------------------------------


def test_mock_serves_tool_use_then_end_turn_to_the_real_sdk(server):
    import anthropic

    server.push(anthropic_tool_use("bash", {"command": "ls"}, text="Listing.", tool_use_id="toolu_1"))
    server.push(anthropic_text("Done."))
    client = anthropic.Anthropic(api_key=KEY, base_url=server.url, max_retries=0)
    messages = [{"role": "user", "content": "list files"}]
    tools = [{"name": "bash", "description": "run", "input_schema": {"type": "object"}}]

    first = client.messages.create(model="m", max_tokens=10, messages=messages, tools=tools)
    assert first.stop_reason == "tool_use"
    [text, tool] = first.content
    assert (text.text, tool.name, tool.input, tool.id) == ("Listing.", "bash", {"command": "ls"}, "toolu_1")
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.py"}]},
    ]
    second = client.messages.create(model="m", max_tokens=10, messages=messages, tools=tools)

    assert second.stop_reason == "end_turn" and second.content[0].text == "Done."
    assert server.requests[1].body["messages"][2]["content"][0]["tool_use_id"] == "toolu_1"
    assert server.requests[0].body["tools"][0]["name"] == "bash"


def one_line_patch(before: str, after: str) -> str:
    return (
        "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n"
        f"@@ -10,3 +10,3 @@ def load(path):\n     data = read(path)\n-{before}\n+{after}\n     return data\n"
    )


def oracle_reply(tmp_path: Path, history: list, on: TaskInstance, **flags: bool) -> str:
    """The oracle's reply to one question about `on`, with the ExpertConfig `flags` set."""
    cfg = ExpertConfig(backend="oracle", allow_oracle=True, model="oracle", cache_dir=str(tmp_path), **flags)
    return ExpertService(cfg).session(6, 2.0).ask("What should I change?", history, on, step=2).reply


def one_line_task(task: TaskInstance) -> TaskInstance:
    return task.model_copy(update={"patch": one_line_patch('    key = "a" - b', '    key = "a" + b')})


def test_oracle_quotes_a_one_line_change_only_when_asked(tmp_path, task, history):
    def reply(on: TaskInstance, **flags: bool) -> str:
        return oracle_reply(tmp_path, history, on, **flags)

    # The line as it is and as it should be, indentation kept, so an edit can take them as they stand.
    assert (
        '  Line 11 reads:\n```\n    key = "a" - b\n```\n  and should read:\n```\n    key = "a" + b\n```'
        in (reply(one_line_task(task), oracle_quotes_line=True))
    )
    assert '"a" + b' not in reply(one_line_task(task))
    # A change of several lines is never quoted: that would be pasting the fix.
    assert reply(task, oracle_quotes_line=True) == reply(task)
    for line in added_lines(GOLD_PATCH):
        assert line not in reply(task, oracle_quotes_line=True)


def test_oracle_writes_a_one_line_change_as_the_editor_call_only_when_asked(tmp_path, task, history):
    from protege.agent.qwen_format import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, parse_tool_calls

    def reply(on: TaskInstance, **flags: bool) -> str:
        return oracle_reply(tmp_path, history, on, **flags)

    # One line of the reply is the call's JSON exactly as the protégé writes a call: copied into a tool-call
    # block it is the edit that fixes the task.
    calls = [
        parse_tool_calls(f"{TOOL_CALL_OPEN}\n{line}\n{TOOL_CALL_CLOSE}")
        for line in reply(one_line_task(task), oracle_writes_call=True).splitlines()
        if line.startswith('{"name": ')
    ]
    assert calls == [
        [
            {
                "name": "str_replace_editor",
                "arguments": {
                    "command": "str_replace",
                    "path": "m.py",
                    "old_str": '    key = "a" - b',
                    "new_str": '    key = "a" + b',
                },
            }
        ]
    ]
    assert '"a" + b' not in reply(one_line_task(task))
    # A change of several lines is never written out: that would be pasting the fix.
    assert reply(task, oracle_writes_call=True) == reply(task)


@pytest.mark.parametrize(
    ("before", "after", "piece"),
    [
        ("    return w + h", "    return w * h", "`+` should be `*`"),
        ("    if len(row) != header:", "    if len(row) != len(header):", "`header` should be `len(header)`"),
        ("    return pick(a, b)", "    return pick(b, a)", "`a, b` should be `b, a`"),
        ("        if not ok:", "        if ok:", "`not` should go (after `if`)"),
        ("    end = start", "    end = start + 1", "`+ 1` is missing after `start`"),
        ("    total = compute_everything(a)", "    total = something_else_entirely(b, c)", ""),
    ],
)
def test_oracle_names_the_changed_piece_of_a_one_line_change(task, before, after, piece):
    text = oracle_guidance(task.model_copy(update={"patch": one_line_patch(before, after)}))
    assert (piece in text) if piece else ("should be" not in text and "is missing" not in text)
    assert after not in text
