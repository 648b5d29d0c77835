"""Shared by the RL tests: a tiny model, a scripted generator and a sandbox opener that kills one sandbox."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import protege.config as config_module
import protege.model as model_module
from protege.agent.protocols import SandboxError
from protege.agent.sandbox import open_sandbox
from protege.config import TinyModelConfig, load_config

TINY = TinyModelConfig(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
ASSISTANT = "<|im_start|>assistant"
EXPERT_QUESTION = "Which function holds the bug?"


def tool_call(name: str, **arguments: Any) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


# One episode: ask the expert, look around twice, submit. Each turn is text plus exactly one tool call.
SCRIPT = [
    "I should ask for a pointer first.\n" + tool_call("ask_expert", question=EXPERT_QUESTION),
    "Find the definitions.\n" + tool_call("bash", command="grep -rn 'def ' . | head -3"),
    "List the files.\n" + tool_call("bash", command="ls"),
    "Done.\n" + tool_call("submit"),
]


def build_tiny(dest: Path, corpus_dir: Path) -> Path:
    """The tiny model with a tokenizer trained on two source files (fast)."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for module in (model_module, config_module):
        shutil.copy(module.__file__, corpus_dir / Path(module.__file__).name)
    return model_module.build_tiny_model(TINY, dest, [corpus_dir])


def rl_cfg(repos: Path, tmp: Path, *overrides: str):
    """The local profile on prebuilt demo repositories, everything written under `tmp`."""
    return load_config(
        "local",
        overrides=[
            f"tasks.repos_dir={repos}",
            f"services.data_dir={tmp / 'data'}",
            f"model.cache_dir={tmp / 'cache'}",
            f"eval.grade_logs_dir={tmp / 'grading'}",
            "run_name=rl-test",
            *overrides,
        ],
    )


@dataclass
class Call:
    prompt: list[int]
    output: list[int]


@dataclass
class ScriptedGenerator:
    """A protege.rl.rollout.Generator that plays SCRIPT: the turn is the number of assistant turns already in
    the prompt. Records every call (thread-safe)."""

    tokenizer: Any
    script: list[str] = field(default_factory=lambda: list(SCRIPT))
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        turn = self.tokenizer.decode(prompt_ids).count(ASSISTANT) - 1
        text = self.script[min(turn, len(self.script) - 1)]
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        with self.lock:
            self.calls.append(Call(list(prompt_ids), ids))
        return ids, [-1.0] * len(ids)


class KillingOpener:
    """open_sandbox, except that the `victim`-th sandbox opened (0-based) is killed after its first command:
    the real sandbox is closed (processes killed, tree removed) and every later command fails."""

    def __init__(self, victim: int) -> None:
        self.victim, self.opened, self.lock = victim, 0, threading.Lock()

    def __call__(self, cfg: Any, task: Any, repos_dir: Path) -> Any:
        sandbox = open_sandbox(cfg, task, repos_dir)
        with self.lock:
            number, self.opened = self.opened, self.opened + 1
        return _Doomed(sandbox) if number == self.victim else sandbox


class _Doomed:
    def __init__(self, real: Any) -> None:
        self.real, self.workdir, self.commands = real, real.workdir, 0

    def run(self, command: str, timeout: float | None = None) -> Any:
        self.commands += 1
        if self.commands > 1:
            self.real.close()
            raise SandboxError("sandbox killed mid-episode (test)")
        return self.real.run(command, timeout)

    def read_file(self, path: str) -> str:
        return self.real.read_file(path)

    def read_path(self, path: str) -> tuple[str, str]:
        return self.real.read_path(path)

    def write_file(self, path: str, content: str, exclusive: bool = False) -> None:
        self.real.write_file(path, content, exclusive)

    def edit_file(self, path: str, old: str | None, new: str, line: int | None) -> tuple[str, bool]:
        return self.real.edit_file(path, old, new, line)

    def diff(self) -> str:
        return self.real.diff()

    def close(self) -> None:
        self.real.close()

    def __enter__(self) -> _Doomed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SOLO_SCRIPT = [
    "Find the definitions.\n" + tool_call("bash", command="grep -rn 'def ' . | head -3"),
    "Done.\n" + tool_call("submit"),
]


class AlternatingGenerator(ScriptedGenerator):
    """Episodes alternate between SCRIPT (asks the expert) and SOLO_SCRIPT (does not), so a group of two gets two
    different rewards and GRPO a non-zero advantage. Deterministic with one rollout worker."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.episodes = 0

    def generate(
        self, prompt_ids: list[int], max_new_tokens: int, stop: Any = None
    ) -> tuple[list[int], list[float]]:
        prompt = self.tokenizer.decode(prompt_ids)
        turn = prompt.count(ASSISTANT) - 1
        if turn == 0:
            self.episodes += 1
            solo = self.episodes % 2 == 0
        else:
            solo = EXPERT_QUESTION not in prompt
        script = SOLO_SCRIPT if solo else SCRIPT
        text = script[min(turn, len(script) - 1)]
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        with self.lock:
            self.calls.append(Call(list(prompt_ids), ids))
        return ids, [-1.0] * len(ids)
