"""Policy backends: how the visible history becomes the next assistant turn (the `Policy` protocol).

- `ScriptedPolicy`: replays a fixed list of turns (tests, demos); deterministic, free.
- `TransformersPolicy`: an in-process HF model; renders the chat template with the tool schemas,
  generates, and returns the exact generated ids, prompt ids and per-token logprobs (RL trains on
  these; the text is decoded from the ids, never re-tokenised).
- `OpenAIChatPolicy` (vLLM's server) and `AnthropicPolicy` (Claude acting through `tool_use`) live in
  `api_policies.py`.

`protege.agent.policy_choice.make_policy` picks one by `PolicyConfig.backend`.
A policy raises `ContextOverflow` when the prompt no longer fits and `PolicyError` when it cannot
produce a turn at all; an unparsable turn is not an error but a `PolicyTurn` with `format_error`.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from protege.agent.protocols import PolicyTurn
from protege.agent.qwen_format import render_tool_call, split_completion
from protege.agent.render import chat_messages, prompt_ids
from protege.config import PolicyConfig
from protege.trajectory import Message, ToolCall


class PolicyError(RuntimeError):
    """The policy could not produce a turn (server down, script exhausted); the episode ends as policy_error."""


class ContextOverflow(PolicyError):
    """The prompt no longer fits the context window; the episode ends as context_overflow."""


# --------------------------------------------------------------------------------------------------
# Shared: message conversion and completion parsing
# --------------------------------------------------------------------------------------------------


def to_chat_messages(messages: Sequence[Message], *, arguments_as_json: bool) -> list[dict[str, Any]]:
    """OpenAI-style chat messages (protege.agent.render.chat_messages, the one conversion every path uses).
    `arguments_as_json`: tool-call arguments as a JSON string (the API's wire format) rather than a dict."""
    return chat_messages(messages, arguments_as_json=arguments_as_json)


def parse_completion(text: str, call_ids: itertools.count, **fields: Any) -> PolicyTurn:
    """A PolicyTurn from a Qwen2.5-format completion: its calls, or the first malformed block's reason."""
    _, entries = split_completion(text)
    errors = [entry["error"] for entry in entries if "error" in entry]
    calls = [
        ToolCall(id=f"call_{next(call_ids)}", name=entry["name"], arguments=entry["arguments"])
        for entry in entries
        if "error" not in entry
    ]
    return PolicyTurn(text=text, tool_calls=calls, format_error=errors[0] if errors else "", **fields)


# --------------------------------------------------------------------------------------------------
# Scripted
# --------------------------------------------------------------------------------------------------


def _check_script_item(index: int, item: Any) -> dict[str, Any]:
    where = f"script turn {index}"
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = sorted(set(item) - {"tool", "arguments", "thought", "text", "cost_usd"})
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(unknown)} (known: tool, arguments, thought, text, cost_usd)"
        )
    if ("tool" in item) == ("text" in item):
        raise ValueError(f"{where}: give exactly one of `tool` (a call) or `text` (a raw completion)")
    if "tool" in item and not isinstance(item.get("arguments", {}), dict):
        raise ValueError(f"{where}: `arguments` must be an object")
    return item


class ScriptedPolicy:
    """Replays a list of turns in order. Each turn is `{"tool": name, "arguments": {...}, "thought": "..."}`
    (rendered as a Qwen2.5 completion and parsed back, like a model's) or `{"text": "<raw completion>"}`
    (parsed as is: how tests provoke format errors); either may carry `cost_usd` (to exercise the
    cost cap). Asking for a turn after the last raises PolicyError."""

    name = "scripted"

    def __init__(self, turns: Sequence[dict[str, Any]], model: str = "script") -> None:
        self.turns = [_check_script_item(i, item) for i, item in enumerate(turns)]
        self.model = model
        self._next = 0
        self._ids = itertools.count()

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedPolicy:
        """A script from a JSON file holding a list of turns (or `{"turns": [...]}`)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read the policy script: {err}") from None
        turns = data.get("turns") if isinstance(data, dict) else data
        if not isinstance(turns, list):
            raise ValueError(f"{path}: a policy script is a JSON list of turns")
        try:
            return cls(turns, model=str(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        if self._next >= len(self.turns):
            raise PolicyError(f"the policy script is exhausted after {len(self.turns)} turn(s)")
        item = self.turns[self._next]
        self._next += 1
        if "text" in item:
            text = str(item["text"])
        else:
            thought = str(item.get("thought", "")).strip()
            call = render_tool_call(str(item["tool"]), item.get("arguments", {}))
            text = f"{thought}\n{call}" if thought else call
        return parse_completion(text, self._ids, cost_usd=float(item.get("cost_usd", 0.0)))


# --------------------------------------------------------------------------------------------------
# In-process transformers
# --------------------------------------------------------------------------------------------------


def generated_logprobs(out: Any, prompt_len: int, temperature: float) -> tuple[list[int], list[float]]:
    """From a one-sequence `generate(..., return_dict_in_generate=True, output_logits=True)` result: the ids
    generated after the prompt and log-softmax(logits / temperature) of each (the sampling distribution)."""
    import torch

    generated = out.sequences[0, prompt_len:]
    logits = torch.stack(out.logits, dim=1)[0].float() / temperature
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, generated[:, None]).squeeze(-1)
    return generated.tolist(), logprobs.tolist()


class TransformersPolicy:
    """An HF causal LM in this process. The turn's `token_ids` are exactly the generated ids (the end-of-turn
    token included when generated), `text` is their decode without that final end token, `logprobs` are
    log-softmax(logits / T) of each generated id (T = temperature, 1 when greedy)."""

    name = "transformers"

    def __init__(self, model: Any, tokenizer: Any, cfg: PolicyConfig, model_id: str = "") -> None:
        self.hf_model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.model = model_id or str(getattr(model, "name_or_path", ""))
        self._ids = itertools.count()

    def prompt_ids(self, messages: list[Message], tools: list[dict[str, Any]]) -> list[int]:
        """The chat template rendered with the tools and the generation prompt, as token ids
        (protege.agent.render.prompt_ids: the same render as RL's and SFT's)."""
        return prompt_ids(self.tokenizer, messages, tools)

    def generate(self, messages: list[Message], tools: list[dict[str, Any]]) -> PolicyTurn:
        import torch

        prompt = self.prompt_ids(messages, tools)
        room = self.cfg.context_window - len(prompt)
        if room <= 0:
            raise ContextOverflow(
                f"prompt of {len(prompt)} tokens fills the context window of {self.cfg.context_window}"
            )
        options: dict[str, Any] = {"do_sample": self.cfg.temperature > 0}
        if self.cfg.temperature > 0:
            options["temperature"] = self.cfg.temperature
        device = self.hf_model.device
        input_ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            out = self.hf_model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=min(self.cfg.max_new_tokens, room),
                return_dict_in_generate=True,
                output_logits=True,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **options,
            )
        ids, logprobs = generated_logprobs(out, len(prompt), self.cfg.temperature or 1.0)
        body = ids[:-1] if ids and ids[-1] == self.tokenizer.eos_token_id else ids
        text = self.tokenizer.decode(body, skip_special_tokens=False)
        return parse_completion(
            text,
            self._ids,
            token_ids=ids,
            prompt_ids=prompt,
            logprobs=logprobs,
            input_tokens=len(prompt),
            output_tokens=len(ids),
        )
