"""The Qwen tool-call format: render and parse `<tool_call>{json}</tool_call>` blocks.

The Qwen2.5 and Qwen3 chat templates write an assistant turn's calls as

    <reasoning text>
    <tool_call>
    {"name": "bash", "arguments": {"command": "ls"}}
    </tool_call><|im_end|>

(Qwen3 opens the turn with a `<think>...</think>` block, which stays in the reasoning text: its template
splits it back out) and a model trained on it answers the same way. protege.agent.chat_format refuses a
base model whose template writes calls any other way. `split_completion` turns a decoded completion back into
its reasoning text and its calls; a block that is not a well-formed call comes back as an error entry
(never dropped, never raised) so the agent loop can count it as a format error and tell the model why.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
END_OF_TURN = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

# Non-greedy body up to the next close tag; a block left open at the end of the text (generation cut by
# max_new_tokens) is matched by the `$` alternative so it can be reported instead of silently ignored.
_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(" + re.escape(TOOL_CALL_CLOSE) + r"|\Z)", re.S)


def tool_call_json(name: str, arguments: dict[str, Any]) -> str:
    """One call's JSON exactly as the Qwen2.5 chat template writes it inside the block (jinja's `tojson`)."""
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def render_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """The block exactly as the Qwen2.5 chat template renders one call."""
    return f"{TOOL_CALL_OPEN}\n{tool_call_json(name, arguments)}\n{TOOL_CALL_CLOSE}"


def _parse_block(body: str, closed: bool) -> dict[str, Any]:
    raw = body.strip()
    if not closed:
        return {"error": f"unterminated {TOOL_CALL_OPEN} block (no {TOOL_CALL_CLOSE})", "raw": raw}
    try:
        call = json.loads(raw)
    except json.JSONDecodeError as err:
        return {"error": f"tool call is not valid JSON: {err.msg} at char {err.pos}", "raw": raw}
    if not isinstance(call, dict):
        return {"error": f"tool call must be a JSON object, got {type(call).__name__}", "raw": raw}
    name = call.get("name")
    if not isinstance(name, str) or not name.strip():
        return {"error": 'tool call has no "name" string', "raw": raw}
    arguments = call.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        # Some models emit the arguments object JSON-encoded as a string (OpenAI wire style); accept it.
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            return {"error": f'"arguments" of {name} is a string that is not JSON: {err.msg}', "raw": raw}
    if not isinstance(arguments, dict):
        return {
            "error": f'"arguments" of {name} must be an object, got {type(arguments).__name__}',
            "raw": raw,
        }
    return {"name": name.strip(), "arguments": arguments}


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Every `<tool_call>` block of `text`, in order.

    Each entry is either `{"name": str, "arguments": dict}` or, for a malformed block (bad JSON, not an
    object, no name, non-object arguments, missing close tag), `{"error": reason, "raw": block text}`.
    Whitespace around and inside the tags does not matter. Text without blocks gives `[]`.
    """
    return [_parse_block(match.group(1), bool(match.group(2))) for match in _BLOCK.finditer(text)]


def split_completion(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(reasoning text, calls): the text outside the blocks, stripped of end-of-turn tokens, and
    `parse_tool_calls(text)`."""
    content = _BLOCK.sub("", text)
    for marker in (END_OF_TURN, END_OF_TEXT):
        content = content.replace(marker, "")
    return content.strip(), parse_tool_calls(text)
