"""The policy's context, rendered once for every path: the agent at inference, RL rollouts and SFT.

What the protégé reads at a turn is fixed by three things, and each lives here only:
- the tool schemas, `TOOL_SCHEMAS` in the agent's definition order (a key-sorted copy renders different
  tokens: JSON keys in the system prompt and in every tool call's arguments come out in dict order);
- the history view (`agent.history_view`): `full` keeps every observation as inserted (already truncated
  to `agent.observation_max_chars`); `collapsed` is METHOD §1's processing, tool observations older than the
  last `agent.keep_last_observations` become a one-line placeholder, expert guidance never does;
- the chat template applied to `chat_messages` (HF chat dicts: tool-call arguments as dicts, which the
  Qwen templates write with `tojson` in their own key order): the base tokenizer's own, or its
  prefix-preserving training variant where the own one rewrites earlier turns (Qwen3;
  protege.agent.chat_format decides, from the tokenizer, never from a flag).

The default view is `full`, in both profiles. Why: a GRPO rollout is one append-only token sequence (each
turn is generated from the sequence that holds every earlier turn, protege.rl.rollout), so its importance
ratio is exact only when no earlier observation is rewritten; with `full` the agent, RL and SFT all see
that same sequence and SFT trains a whole trajectory as one example. `collapsed` is supported for SFT
(one example per policy turn, each with the view the agent had at that turn) and evaluation; RL refuses
it (its per-turn samples would need a trainer that takes several sequences per rollout).
The cost of `full` is context length (measured on the demo in README "History view").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from protege.agent.chat_format import chat_format
from protege.agent.tools import TOOL_SCHEMAS
from protege.trajectory import Message

HistoryView = Literal["full", "collapsed"]
COLLAPSED_TEMPLATE = "Old environment output: ({lines} lines omitted)"
"""What an older tool observation becomes in the collapsed view (SWE-agent's placeholder)."""
OBSERVATION = "tool"
"""Provenance of an observation the collapsed view may shorten (expert guidance has provenance `expert`)."""
POLICY = "policy"
CONTEXT_TURN = "policy-context"
"""Provenance given to an earlier policy turn inside a per-turn SFT example: shown, not a target."""


def tool_schemas() -> list[dict[str, Any]]:
    """The tool schemas every path renders, in the agent's definition order."""
    return TOOL_SCHEMAS


def collapsed_indices(provenances: Sequence[str], keep_last: int) -> set[int]:
    """Positions of the observations the collapsed view shortens: all but the last `keep_last` tool ones."""
    observations = [i for i, p in enumerate(provenances) if p == OBSERVATION]
    return set(observations[: max(len(observations) - keep_last, 0)])


def placeholder(content: str) -> str:
    return COLLAPSED_TEMPLATE.format(lines=len(content.splitlines()))


def process_history(messages: list[Message], keep_last: int) -> list[Message]:
    """The collapsed view of `messages`: tool observations (provenance `tool`) older than the last
    `keep_last` become a one-line placeholder; expert guidance and every other message stay whole."""
    collapse = collapsed_indices([m.provenance for m in messages], keep_last)
    return [
        m.model_copy(update={"content": placeholder(m.content)}) if i in collapse else m
        for i, m in enumerate(messages)
    ]


def policy_view(messages: list[Message], view: HistoryView, keep_last: int) -> list[Message]:
    """What the policy is shown of `messages` under `view` (see module docstring)."""
    return process_history(messages, keep_last) if view == "collapsed" else list(messages)


def chat_messages(messages: Sequence[Message], *, arguments_as_json: bool = False) -> list[dict[str, Any]]:
    """OpenAI-style chat messages. `arguments_as_json`: tool-call arguments as a JSON string (the wire
    format of the API) rather than a dict (what HF chat templates render with `tojson`)."""
    chat: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.tool_calls:
            item["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(call.arguments) if arguments_as_json else call.arguments,
                    },
                }
                for call in message.tool_calls
            ]
        if message.role == "tool":
            item["tool_call_id"] = message.tool_call_id
            item["name"] = message.name
        chat.append(item)
    return chat


def render_text(
    tokenizer: Any,
    chat: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    *,
    generation_prompt: bool,
    template: str | None = None,
) -> str:
    """The text of `chat` (HF chat dicts) with `tools` under the tokenizer's render template
    (protege.agent.chat_format); `template` overrides it (SFT passes the training variant with generation
    markers, which renders the same text)."""
    return tokenizer.apply_chat_template(
        chat,
        tools=tools or None,
        add_generation_prompt=generation_prompt,
        tokenize=False,
        chat_template=template or chat_format(tokenizer).render_template,
    )


def prompt_ids(tokenizer: Any, messages: list[Message], tools: list[dict[str, Any]]) -> list[int]:
    """Token ids of the prompt for the next assistant turn after `messages` (already the policy's view)."""
    text = render_text(tokenizer, chat_messages(messages), tools, generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------------------------------
# SFT: records (HF chat dicts with provenance) to training conversations under the view
# --------------------------------------------------------------------------------------------------


def training_conversations(
    chat: list[dict[str, Any]], view: HistoryView, keep_last: int
) -> list[list[dict[str, Any]]]:
    """The conversations SFT trains on for one trajectory's chat messages (each with `provenance`).

    `full`: the trajectory itself, every policy turn a target (each turn's context is exactly the prefix
    before it, which is the agent's and RL's context). `collapsed`: one conversation per policy turn: the
    collapsed view of the history before that turn (what the agent was shown) followed by the turn, the only
    target (earlier policy turns get provenance `policy-context`)."""
    if view == "full":
        return [chat]
    conversations = []
    for end, message in enumerate(chat):
        if message.get("provenance") != POLICY:
            continue
        history = chat[:end]
        collapse = collapsed_indices([str(m.get("provenance")) for m in history], keep_last)
        shown = [_shown(m, i in collapse) for i, m in enumerate(history)]
        conversations.append([*shown, message])
    return conversations


def _shown(message: dict[str, Any], collapse: bool) -> dict[str, Any]:
    if collapse:
        return {**message, "content": placeholder(message["content"])}
    if message.get("provenance") == POLICY:
        return {**message, "provenance": CONTEXT_TURN}
    return message
