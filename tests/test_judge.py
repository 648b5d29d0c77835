"""The hidden judge: the expert judge against a loopback Anthropic mock, and the offline heuristic judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protege.agent.expert import ExpertService
from protege.config import ExpertConfig, ExpertPrices, RewardConfig
from protege.rl.judge import (
    FOLLOW_RUBRIC,
    JUDGE_SYSTEM,
    RETRY_NOTE,
    WARRANT_RUBRIC,
    ExpertJudge,
    HeuristicJudge,
    annotate,
    guidance_targets,
    make_judge,
    parse_answer,
    segment,
)
from protege.rl.rewards import score_trajectory
from protege.trajectory import Action, ExpertCall, Message, ToolCall, Trajectory
from tests.agent.anthropic_mock import MockLLMServer, anthropic_error, anthropic_text
from tests.test_rewards import GOLD, TASK

KEY = "sk-judge-test"
QUESTION = "Why does divide(1, 0) return 0?"
GUIDANCE = (
    "Look at `divide` in calc/ops.py: the zero case returns 0. Run `python -m pytest tests/test_ops.py`."
)
EXPERT_SAW = "<problem_statement>\ndivide bug\n</problem_statement>\n\n<question>\nWhy does divide(1, 0) return 0?\n</question>"


def answer(score: float, reason: str = "fine") -> str:
    return json.dumps({"score": score, "reason": reason})


def bash(step: int, command: str, exit_code: int = 0, base: str = "python") -> Action:
    return Action(
        step=step, tool="bash", arguments={"command": command}, base_command=base, exit_code=exit_code
    )


def editor(step: int, command: str, path: str, error: str = "", **more: str) -> Action:
    base = "navigate" if command == "view" else f"str_replace_editor {command}"
    return Action(
        step=step,
        tool="str_replace_editor",
        arguments={"command": command, "path": path, **more},
        base_command=base,
        error=error,
    )


def ask_action(step: int) -> Action:
    return Action(step=step, tool="ask_expert", arguments={"question": QUESTION}, base_command="ask_expert")


def call(step: int, reply: str = GUIDANCE, status: str = "ok") -> ExpertCall:
    context = [{"role": "system", "content": "expert system"}, {"role": "user", "content": EXPERT_SAW}]
    return ExpertCall(step=step, question=QUESTION, context=context, reply=reply, status=status)


def episode() -> Trajectory:
    """Two failing test runs, a call, a segment that opens and edits calc/ops.py, then a final call."""
    actions = [
        bash(1, "python -m pytest -q", exit_code=1),
        bash(2, "python -m pytest -q", exit_code=1),
        ask_action(3),
        editor(4, "view", "/testbed/calc/ops.py"),
        editor(
            5,
            "str_replace",
            "/testbed/calc/ops.py",
            old_str="def divide(a, b):",
            new_str="def divide(a, b):\n",
        ),
        ask_action(6),
    ]
    messages = [
        Message(role="user", provenance="task", content="fix divide"),
        Message(
            role="assistant",
            provenance="policy",
            content="",
            tool_calls=[ToolCall(id="c3", name="ask_expert", arguments={"question": QUESTION})],
        ),
        Message(
            role="tool",
            provenance="expert",
            content=f"<expert_llm_guidance>\n{GUIDANCE}\n</expert_llm_guidance>",
            tool_call_id="c3",
            name="ask_expert",
        ),
    ]
    return Trajectory(
        instance_id=TASK.instance_id,
        actions=actions,
        expert_calls=[call(3), call(6)],
        messages=messages,
        patch=GOLD,
    )


# --------------------------------------------------------------------------------------------------
# Expert judge against the mock Anthropic API
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def server():
    with MockLLMServer(api_key=KEY) as mock:
        yield mock


def expert_judge(server: MockLLMServer, tmp_path: Path, cache_mode: str = "off") -> ExpertJudge:
    cfg = ExpertConfig(
        backend="anthropic",
        model="claude-judge",
        base_url=server.url,
        timeout_s=5.0,
        max_retries=0,
        cache_mode=cache_mode,
        cache_dir=str(tmp_path / "cache"),
        prices=ExpertPrices(input_per_mtok=3.0, output_per_mtok=15.0),
    )
    return ExpertJudge(RewardConfig(), ExpertService(cfg, api_key=KEY))


def user_text(server: MockLLMServer, index: int) -> str:
    return server.requests[index].body["messages"][0]["content"]


def test_well_formed_answers_score_both_rubrics_and_stay_hidden(server, tmp_path):
    # Call 3: warranted then follow-through; call 6 is the last action: warranted only.
    server.push(
        anthropic_text(answer(0.9, "SECRET-REASON-A"), input_tokens=1000, output_tokens=100),
        anthropic_text(answer(0.6, "SECRET-REASON-B")),
        anthropic_text(answer(0.2, "SECRET-REASON-C")),
    )
    judge = expert_judge(server, tmp_path)
    traj = episode()
    messages_before = [m.model_dump() for m in traj.messages]

    terms = score_trajectory(traj, TASK, RewardConfig(), resolved=True, judge=judge)

    assert server.request_count == 3 and server.pending == 0
    assert [(c.warranted, c.follow_through) for c in traj.expert_calls] == [(0.9, 0.6), (0.2, None)]
    # warrant mean (0.9 + -1)/2 = -0.05; R_follow = 0.6
    assert terms["warrant_mean"] == pytest.approx(-0.05) and terms["r_follow"] == pytest.approx(0.6)
    warrant, follow = user_text(server, 0), user_text(server, 1)
    assert server.requests[0].body["system"] == JUDGE_SYSTEM
    assert WARRANT_RUBRIC in warrant and QUESTION in warrant and EXPERT_SAW in warrant
    assert FOLLOW_RUBRIC in follow and QUESTION in follow and GUIDANCE in follow
    assert "step 4: str_replace_editor" in follow and "step 5: str_replace_editor" in follow
    assert (
        "ask_expert" not in follow.split("<actions_after_guidance")[1]
    )  # the segment stops at the next call
    # Hidden: the agent-visible history is untouched and no judge text reaches it.
    assert [m.model_dump() for m in traj.messages] == messages_before
    assert not any("SECRET-REASON" in m.content for m in traj.messages)
    assert judge.requests == 3 and judge.malformed == 0
    assert judge.cost_usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6 + 2 * (100 * 3 + 20 * 15) / 1e6)
    assert traj.extra["judge"] == "expert"


def test_malformed_answer_is_retried_once_then_used(server, tmp_path):
    # record mode: the retry must not be answered from the cache with the same bad answer
    server.push(
        anthropic_text("Sure! I'd say about 0.7."), anthropic_text("```json\n" + answer(0.7) + "\n```")
    )
    judge = expert_judge(server, tmp_path, cache_mode="record")
    traj = episode()
    score = judge.warranted(traj.expert_calls[0], traj.actions[:2], traj, TASK)
    assert score == 0.7
    assert server.request_count == 2 and judge.malformed == 0
    retry = user_text(server, 1)
    assert (
        retry.startswith(user_text(server, 0))
        and RETRY_NOTE.split("(")[0] in retry
        and "not a JSON object" in retry
    )


def test_twice_malformed_scores_neutral_and_is_counted(server, tmp_path):
    server.push(anthropic_text("no idea"), anthropic_text(answer(1.5)))
    judge = expert_judge(server, tmp_path)
    traj = episode()
    assert judge.follow_through(traj.expert_calls[0], segment(traj, traj.expert_calls[0]), traj, TASK) == 0.5
    assert server.request_count == 2 and judge.malformed == 1 and judge.failed == 0
    assert "not a JSON object" in user_text(server, 1)  # the retry said what was wrong with the first answer
    assert judge.counters()["judge_malformed"] == 1.0


def test_failed_requests_score_neutral_and_are_counted_apart(server, tmp_path):
    server.push(
        anthropic_error(400, "invalid_request_error", "bad"),
        anthropic_error(400, "invalid_request_error", "bad"),
    )
    judge = expert_judge(server, tmp_path)
    traj = episode()
    assert judge.warranted(traj.expert_calls[0], traj.actions[:2], traj, TASK) == 0.5
    assert (judge.failed, judge.malformed, server.request_count) == (1, 0, 2)


@pytest.mark.parametrize(
    ("text", "score", "problem"),
    [
        ('{"score": 0.25, "reason": "ok"}', 0.25, ""),
        ('```json\n{"score": 1, "reason": "ok"}\n```', 1.0, ""),
        ('{"score": true, "reason": "ok"}', None, "`score` must be a number"),
        ('{"score": -0.1, "reason": "ok"}', None, "must lie in [0, 1]"),
        ('{"score": 0.5}', None, "`reason` must be a string"),
        ("[0.5]", None, "not a JSON object"),
        ("score: 0.5", None, "not a JSON object"),
    ],
)
def test_parse_answer(text, score, problem):
    got, why = parse_answer(text)
    assert got == score and problem in why and (why == "") == (score is not None)


def test_make_judge_picks_by_config(tmp_path):
    assert isinstance(make_judge(RewardConfig(judge="heuristic")), HeuristicJudge)
    with pytest.raises(ValueError, match="needs the run's ExpertService"):
        make_judge(RewardConfig(judge="expert"))
    oracle = ExpertService(ExpertConfig(backend="oracle", allow_oracle=True, cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="expert.backend is 'oracle'"):
        make_judge(RewardConfig(judge="expert"), oracle)


# --------------------------------------------------------------------------------------------------
# Heuristic judge
# --------------------------------------------------------------------------------------------------

HEURISTIC = HeuristicJudge(RewardConfig())  # K 5, stall signals 2, follow hits 2


@pytest.mark.parametrize(
    ("before", "expected"),
    [
        ([], 0.0),  # asked before doing anything
        ([bash(1, "ls", base="navigate"), editor(2, "view", "a.py")], 0.5),  # navigate, navigate: 1 repeat
        ([bash(1, "python t.py", exit_code=1), editor(2, "create", "b.py")], 0.5),  # 1 error
        (
            [
                editor(1, "str_replace", "a.py", error="old_str not found"),
                bash(2, "python t.py", exit_code=2),
            ],
            1.0,
        ),
        ([bash(i, "python t.py") for i in range(1, 4)], 1.0),  # python x3: 2 repeats
        # the only error lies outside the last K=5 non-expert actions; the asks in between do not count
        (
            [bash(1, "make", exit_code=1, base="make"), editor(2, "view", "a.py"), ask_action(3)]
            + [
                editor(4, "create", "b.py"),
                bash(5, "python b.py"),
                editor(6, "view", "b.py"),
                bash(7, "git diff", base="git diff"),
                bash(8, "python b.py"),
            ],
            0.0,
        ),
    ],
)
def test_heuristic_warranted(before, expected):
    traj = episode()
    assert HEURISTIC.warranted(traj.expert_calls[0], before, traj, TASK) == expected


@pytest.mark.parametrize(
    ("following", "expected"),
    [
        ([bash(4, "ls", base="navigate")], 0.0),
        # targets: divide, python -m pytest tests/test_ops.py, calc/ops.py, tests/test_ops.py; need 2 hits
        ([editor(4, "view", "/testbed/calc/ops.py")], 0.5),
        ([bash(4, "cd calc && cat ops.py", base="navigate")], 0.5),  # by basename
        (
            [
                editor(4, "view", "/testbed/calc/ops.py"),
                bash(5, "grep -n divide calc/ops.py", base="navigate"),
            ],
            1.0,
        ),
        (
            [bash(4, "python -m pytest tests/test_ops.py")],
            1.0,
        ),  # the suggested command names the test file too
    ],
)
def test_heuristic_follow_through(following, expected):
    traj = episode()
    assert HEURISTIC.follow_through(traj.expert_calls[0], following, traj, TASK) == expected


def test_guidance_without_targets_is_neutral():
    traj = episode()
    vague = call(3, reply="Think harder about the edge cases.")
    assert HEURISTIC.follow_through(vague, [bash(4, "ls", base="navigate")], traj, TASK) == 0.5


def test_guidance_targets():
    assert guidance_targets(GUIDANCE, 3) == [
        "divide",
        "python -m pytest tests/test_ops.py",
        "calc/ops.py",
        "tests/test_ops.py",
    ]
    assert guidance_targets("set `x` to 0.5 in `a`", 3) == []


def test_annotate_with_heuristic_on_a_constructed_trajectory():
    traj = episode()
    traj.expert_calls.append(call(7, status="quota_exceeded"))
    traj.actions.append(ask_action(7))
    annotate(traj, TASK, HEURISTIC)
    first, last, refused = traj.expert_calls
    # two failing python runs (2 errors + 1 repeat) -> u 1; the segment views and edits calc/ops.py with
    # `def divide` -> 2 hits -> f 1
    assert (first.warranted, first.follow_through) == (1.0, 1.0)
    # before call 6 (K=5, asks excluded): fail, fail, view, str_replace -> 2 errors + 1 repeat -> 1.0;
    # followed at once by another call: no segment
    assert (last.warranted, last.follow_through) == (1.0, None)
    assert (refused.warranted, refused.follow_through) == (None, None)  # refused calls are not judged
    assert traj.extra["judge"] == "heuristic"
    again = episode()
    annotate(again, TASK, HEURISTIC)
    assert [c.warranted for c in again.expert_calls] == [first.warranted, last.warranted]  # deterministic
