"""The base model's chat format, read from its own tokenizer: the template every path renders with, the
training variant SFT masks with, and the way the model writes a tool call.

Nothing here is chosen by a flag: the family is the tokenizer's chat template (`chat_format(tokenizer)`).
- training template: the tokenizer's template when it already has `{% generation %}` markers and is
  prefix-preserving, else TRL's patched copy of it (`trl.chat_template_utils.get_training_chat_template`,
  which recognises a family by its published template, byte for byte);
- render template: the tokenizer's own template when it is prefix-preserving (rendering a turn never
  changes how earlier turns render: Qwen2.5), else the training template. Qwen3's own template drops an
  empty `<think></think>` block from every assistant turn but the last, so the context of turn k would not
  be what the model generated at turn k; TRL's Qwen3 training template always keeps it, renders the same
  text as the original wherever the original is prefix-preserving, and so is what the agent, RL and SFT
  all render with (one text, generation markers aside, for inference and training);
- tool calls: a probe call rendered through the template must come out as `<tool_call>` + JSON
  `{"name", "arguments"}` + `</tool_call>`, the format protege.agent.qwen_format parses (Qwen2.5 and Qwen3
  both write it); a template that writes calls any other way is refused with one line naming the model.

Reasoning (`<think>...</think>` in Qwen3) needs nothing of its own: the agent keeps the block in the
assistant turn's text and the template splits it back out when it renders the turn.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

PROBE_CALL = {"name": "probe_tool", "arguments": {"probe_arg": 1}}
"""The call rendered to read how the template writes tool calls."""
TOOL_CALL_BLOCK = '<tool_call>\n{"name": "probe_tool", "arguments": {"probe_arg": 1}}\n</tool_call>'
"""How a template protege can parse renders PROBE_CALL (qwen_format.render_tool_call's block)."""
REASONING_OPEN = "<think>"


class ChatFormatError(ValueError):
    """The base model's chat template cannot be used (none, untrainable, or an unparsed tool-call format)."""


@dataclass(frozen=True)
class ChatFormat:
    """What a base model's chat template means for protege (see module docstring)."""

    family: str
    """`qwen2.5` or `qwen3` when the template is that family's published one, else `other`."""
    render_template: str
    """The template the agent, RL and SFT render prompts and episodes with."""
    training_template: str
    """The render template's text with `{% generation %}` markers around each assistant turn (SFT's mask)."""
    reasoning: bool
    """Assistant turns open with a `<think>...</think>` block (Qwen3)."""


def _published_families() -> dict[str, str]:
    from trl.chat_template_utils import qwen2_5_chat_template, qwen3_chat_template

    return {qwen2_5_chat_template: "qwen2.5", qwen3_chat_template: "qwen3"}


def chat_format(tokenizer: Any) -> ChatFormat:
    """The chat format of `tokenizer`'s own chat template (cached per template text)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # a template shipped as named variants: `default` is the chat one
        template = template.get("default")
    name = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
    if not template:
        raise ChatFormatError(
            f"{name}: the tokenizer has no chat template (protege renders with the model's own)"
        )
    return _format_of(template, tokenizer, name)


_FORMATS: dict[str, ChatFormat] = {}
"""Chat formats by template text: reading one renders a few probes, every turn of every episode asks."""
_LOCK = threading.Lock()


def _format_of(template: str, tokenizer: Any, name: str) -> ChatFormat:
    with _LOCK:
        if template not in _FORMATS:
            _FORMATS[template] = _read_format(template, tokenizer, name)
        return _FORMATS[template]


def _read_format(template: str, tokenizer: Any, name: str) -> ChatFormat:
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving

    try:
        training = get_training_chat_template(tokenizer) or template
    except ValueError:
        raise ChatFormatError(
            f"{name}: its chat template is not one TRL can train on (no `{{% generation %}}` markers and no known "
            "training variant); known families include Qwen2.5 and Qwen3"
        ) from None
    render = template if is_chat_template_prefix_preserving(tokenizer) else training
    family = _published_families().get(template, "other")
    _check_tool_calls(render, name, family)
    return ChatFormat(family, render, training, REASONING_OPEN in _render_probe(render))


def _render_probe(template: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    chat = [
        {"role": "user", "content": "probe"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": PROBE_CALL}]},
    ]
    tools = [{"type": "function", "function": {"name": "probe_tool", "parameters": {"type": "object"}}}]
    rendered, _ = render_jinja_template(conversations=[chat], tools=tools, chat_template=template)
    return rendered[0]


def _check_tool_calls(template: str, name: str, family: str) -> None:
    text = _render_probe(template)
    if TOOL_CALL_BLOCK not in text:
        call = text[text.rfind("probe") - 200 :].strip() if "probe_tool" in text else "(the call is dropped)"
        raise ChatFormatError(
            f"{name}: its chat template ({family}) writes a tool call as {json.dumps(call[-160:])}; protege parses "
            f"`<tool_call>` JSON blocks (Qwen2.5 and Qwen3 families)"
        )
