"""A toy RL environment for the learning tests: the reward depends on one observable choice only.

Every episode has two turns. The first is a choice between two tool calls that share their first tokens and
part at one token: ask the expert (`ASK`) or run `ls` (`LOOK`). The second is always `submit`. The sandbox
is an in-memory stand-in (every command prints the same line, the diff is empty) and grading never resolves,
so under a reward config whose only non-zero term is the no-expert-call penalty, R_total is 0 after asking
and the penalty after not asking: a function of the first turn's choice alone.

`BranchGenerator` is the policy's generator: at the first turn it samples the choice from the *trained
model's own* next-token distribution at the token where the two calls part (renormalised over the two
tokens), and returns the chosen turn's ids with the model's log-probabilities. Everything else is the real
path: protege.rl builds the GRPOTrainer, protege.rl.step and protege.rl.rollout play each episode with the real Agent,
tools, oracle expert and hidden judge, render it append-only with `env_mask`, and protege.rl.rewards scores it.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

from protege.agent.protocols import CommandResult
from tests.rl_helpers import ASSISTANT, tool_call

ASK = "Next step.\n" + tool_call("ask_expert", question="Where is the bug?")
LOOK = "Next step.\n" + tool_call("bash", command="ls")
SUBMIT = "Done.\n" + tool_call("submit")
TOY_REPO = "toy/choice"

_DIFF = "diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1 +1 @@\n-x = {old}\n+x = {new}\n"


def write_toy_tasks(directory: Path, count: int = 2) -> tuple[Path, Path]:
    """A JSONL task set of `count` toy instances and the repos dir holding their (empty) repository."""
    directory.mkdir(parents=True, exist_ok=True)
    repos = directory / "repos"
    (repos / TOY_REPO.replace("/", "__")).mkdir(parents=True, exist_ok=True)
    path = directory / "toy.jsonl"
    rows = [
        {
            "instance_id": f"toy__choice-{n}",
            "repo": TOY_REPO,
            "base_commit": "0" * 40,
            "problem_statement": f"The value of x in a.py should be {n + 1}, not {n}.",
            "patch": _DIFF.format(old=n, new=n + 1),
            "test_patch": _DIFF.format(old=0, new=0),
            "FAIL_TO_PASS": ["test_a.py::test_x"],
        }
        for n in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, repos


class ToySandbox:
    """The Sandbox protocol in memory: every command succeeds with one line, nothing ever changes."""

    workdir = "/testbed"

    def __init__(self, *args: Any) -> None:
        self.commands: list[str] = []

    def run(self, command: str, timeout: float | None = None) -> CommandResult:
        self.commands.append(command)
        return CommandResult(output="a.py\n", exit_code=0)

    def read_file(self, path: str) -> str:
        return "x = 0\n"

    def write_file(self, path: str, content: str) -> None:
        return None

    def diff(self) -> str:
        return ""

    def close(self) -> None:
        return None


class _Graded:
    resolved, failure_reason, detail, duration_s = False, "tests_failed", "", 0.0


def toy_grade(*args: Any, **kwargs: Any) -> _Graded:
    """protege.grading.grade's signature: the toy task is never resolved (R_correct is 0 for every choice)."""
    return _Graded()


def parting_token(tokenizer: Any, first: str, second: str) -> tuple[list[int], int, int]:
    """(shared prefix ids, first's token, second's token) at the first token where the two texts part."""
    a = tokenizer.encode(first, add_special_tokens=False)
    b = tokenizer.encode(second, add_special_tokens=False)
    n = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return a[:n], a[n], b[n]


def choice_probability(model: Any, tokenizer: Any, prompt_ids: list[int], temperature: float = 1.0) -> float:
    """P(ASK | prompt) under `model`, renormalised over the two tokens where ASK and LOOK part."""
    import torch

    prefix, ask, look = parting_token(tokenizer, ASK, LOOK)
    with torch.no_grad():
        ids = torch.tensor([prompt_ids + prefix], device=model.device)
        logits = model(input_ids=ids).logits[0, -1].float() / temperature
    pair = torch.softmax(logits[[ask, look]], dim=0)
    return float(pair[0])


def sequence_logprobs(
    model: Any, prompt_ids: list[int], ids: list[int], temperature: float = 1.0
) -> list[float]:
    """log p(ids[i] | prompt, ids[:i]) under softmax(logits / temperature), as a sampler reports them."""
    import torch

    with torch.no_grad():
        full = torch.tensor([prompt_ids + ids], device=model.device)
        logits = model(input_ids=full).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    logps = torch.log_softmax(logits, dim=-1)
    return logps.gather(1, torch.tensor(ids, device=logps.device).unsqueeze(1)).squeeze(1).tolist()


class BranchGenerator:
    """A protege.rl.rollout.Generator: turn 0 is ASK or LOOK, drawn from `model`'s own probability of the
    parting token; turn 1 is SUBMIT. Set `model` (the trainer's) before the first step. Records the first
    turn's prompts (`first_prompts`) and each choice (`choices`: True = asked). Seeded; one rollout worker."""

    def __init__(self, tokenizer: Any, seed: int, temperature: float = 1.0) -> None:
        self.tokenizer, self.temperature, self.model = tokenizer, temperature, None
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.first_prompts: list[list[int]] = []
        self.choices: list[bool] = []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        assert self.model is not None, "BranchGenerator.model is the trainer's model: set it before training"
        with self.lock:
            was_training = self.model.training
            self.model.eval()
            try:
                if self.tokenizer.decode(prompt_ids).count(ASSISTANT) == 1:
                    p_ask = choice_probability(self.model, self.tokenizer, prompt_ids, self.temperature)
                    asked = self.rng.random() < p_ask
                    self.first_prompts.append(list(prompt_ids))
                    self.choices.append(asked)
                    ids = self._ids(ASK if asked else LOOK)
                else:
                    ids = self._ids(SUBMIT)
                return ids, sequence_logprobs(self.model, prompt_ids, ids, self.temperature)
            finally:
                self.model.train(was_training)
