"""RL rollouts: the append-only token trace (exact generated ids, environment tokens masked), sandbox start rate
limit and backoff, the rollout watchdog, and a killed sandbox failing only its own rollout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from protege.agent.expert import ExpertService
from protege.agent.protocols import SandboxError
from protege.agent.sandbox import open_sandbox
from protege.grading import grade
from protege.rl.judge import make_judge
from protege.rl.rollout import RolloutContext, SandboxGate, TokenTrace, run_rollouts
from protege.tasksets import load_task_set
from tests.rl_helpers import EXPERT_QUESTION, SCRIPT, KillingOpener, ScriptedGenerator, build_tiny, rl_cfg


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protege.demo import build_demo_repos

    path = tmp_path_factory.mktemp("repos")
    build_demo_repos(path, only=["protege-demo/moneyfmt", "protege-demo/csvcols"])
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("tiny")
    return AutoTokenizer.from_pretrained(build_tiny(tmp / "model", tmp / "corpus"))


@pytest.fixture(scope="module")
def tasks():
    return {t.instance_id: t for t in load_task_set("demo:train")}


def context(cfg, tokenizer, generator, tmp: Path, opener=open_sandbox) -> RolloutContext:
    expert = ExpertService(cfg.expert.model_copy(update={"gold_patch": False}))
    reward = cfg.rl.stage1
    return RolloutContext(
        cfg,
        reward,
        generator,
        tokenizer,
        "test",
        expert,
        make_judge(reward, expert),
        SandboxGate(opener, 0, 0, 0),
        tmp / "grading",
        grade,
        "rl1",
    )


def spans(trace: TokenTrace, flag: int) -> list[list[int]]:
    """Maximal runs of completion ids whose env_mask equals `flag`."""
    runs, current = [], []
    for token, mask in zip(trace.completion_ids, trace.env_mask, strict=True):
        if mask == flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_trace_holds_exactly_the_generated_ids_and_masks_every_observation(repos, tokenizer, tasks, tmp_path):
    cfg = rl_cfg(repos, tmp_path)
    generator = ScriptedGenerator(tokenizer)
    task = tasks["protege-demo__moneyfmt-1"]
    [rollout] = run_rollouts(context(cfg, tokenizer, generator, tmp_path), [(task, 0)], workers=1)

    assert not rollout.failed, rollout.failure
    trajectory, trace = rollout.trajectory, rollout.trace
    assert trajectory.status == "submitted"
    assert [c.question for c in trajectory.expert_calls] == [EXPERT_QUESTION]
    assert len(trace.completion_ids) == len(trace.env_mask) == len(trace.logprobs)

    # Policy tokens: every generated id, in order, nothing else (no re-tokenization of generated text).
    assert spans(trace, 1) == [call.output for call in generator.calls]
    assert [tokenizer.decode(ids[:-1]) for ids in spans(trace, 1)] == SCRIPT
    # Environment tokens: the tool observations and the expert's guidance, never trained on.
    environment = [tokenizer.decode(ids) for ids in spans(trace, 0)]
    assert len(environment) == len(SCRIPT) - 1
    assert "<expert_llm_guidance>" in environment[0] and "</expert_llm_guidance>" in environment[0]
    assert "def " in environment[1]  # the grep output
    assert all(text.rstrip().endswith("<|im_start|>assistant") for text in environment)
    assert all(flag == 0.0 for flag, mask in zip(trace.logprobs, trace.env_mask, strict=True) if not mask)
    # Each turn was generated from the sequence so far: the context sampled in is the context trained in.
    for call in generator.calls:
        assert trace.sequence[: len(call.prompt)] == call.prompt
        assert trace.sequence[len(call.prompt) : len(call.prompt) + len(call.output)] == call.output
    assert rollout.terms is not None and rollout.terms["expert_calls"] == 1.0
    assert trajectory.rewards == rollout.terms


def test_killed_sandbox_fails_only_its_rollout_with_the_reason(repos, tokenizer, tasks, tmp_path):
    # Opened in rollout order: a warm pool would hand the second sandbox opened (the victim) to whichever
    # rollout claims first, since the three share their opener's arguments.
    cfg = rl_cfg(repos, tmp_path, "agent.sandbox.prepare_ahead=0")
    ctx = context(cfg, tokenizer, ScriptedGenerator(tokenizer), tmp_path, opener=KillingOpener(victim=1))
    task = tasks["protege-demo__csvcols-1"]
    rollouts = run_rollouts(ctx, [(task, 0), (task, 1), (task, 2)], workers=1)

    assert [r.failed for r in rollouts] == [False, True, False]
    assert rollouts[1].failure.startswith("sandbox_error: ") and "killed mid-episode" in rollouts[1].failure
    assert rollouts[1].terms is None
    assert all(r.terms is not None for r in (rollouts[0], rollouts[2]))
    assert rollouts[1].trace.silenced().env_mask == [0] * len(rollouts[1].trace.env_mask)


def test_rollout_past_its_timeout_is_failed_and_the_batch_goes_on(repos, tokenizer, tasks, tmp_path):
    class Slow(ScriptedGenerator):
        def generate(self, prompt_ids, max_new_tokens, stop=None):
            if len(self.calls) == 0:
                stopped.append(stop.wait(timeout=30))  # a long turn, ended by the watchdog's stop
            return super().generate(prompt_ids, max_new_tokens, stop)

    stopped: list[bool] = []
    cfg = rl_cfg(repos, tmp_path, "rl.rollout_timeout_s=1.5")
    task = tasks["protege-demo__moneyfmt-1"]
    [late] = run_rollouts(context(cfg, tokenizer, Slow(tokenizer), tmp_path), [(task, 0)], workers=1)
    assert late.failed and late.failure.startswith("timeout: rollout still running after 2 s")
    assert late.trajectory.status == "timeout"
    deadline = time.monotonic() + 10
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped == [True]  # the turn in flight was told to stop, it did not run to its end


def test_sandbox_starts_are_spaced_and_retried_with_backoff():
    sleeps: list[float] = []
    failures = iter([SandboxError("no capacity"), OSError("pull failed")])

    def flaky_opener(*args):
        error = next(failures, None)
        if error is not None:
            raise error
        return "sandbox"

    gate = SandboxGate(flaky_opener, interval_s=0.0, retries=3, backoff_s=2.0, sleep=sleeps.append)
    assert gate.open("cfg") == "sandbox"
    assert sleeps == [2.0, 4.0]

    hopeless = SandboxGate(
        lambda *a: (_ for _ in ()).throw(SandboxError("down")), 0.0, 1, 1.0, sleep=sleeps.append
    )
    with pytest.raises(SandboxError, match="down"):
        hopeless.open()

    spaced: list[float] = []
    gate = SandboxGate(lambda *a: "ok", interval_s=10.0, retries=0, backoff_s=0.0, sleep=spaced.append)
    gate.open(), gate.open(), gate.open()
    assert (
        len(spaced) == 2
        and spaced[0] == pytest.approx(10.0, abs=0.5)
        and spaced[1] == pytest.approx(20.0, abs=0.5)
    )
