"""Parsing Qwen2.5 `<tool_call>` blocks: well-formed calls in any whitespace, every malformed kind reported."""

from __future__ import annotations

import pytest

from protege.agent.qwen_format import parse_tool_calls, render_tool_call, split_completion

BASH_LS = {"name": "bash", "arguments": {"command": "ls"}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no calls here", []),
        ('<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>', [BASH_LS]),
        ('<tool_call>{"name":"bash","arguments":{"command":"ls"}}</tool_call>', [BASH_LS]),
        (
            '  <tool_call> \n\t {"name": " bash ", "arguments": {"command": "ls"}}  \n </tool_call>  ',
            [BASH_LS],
        ),
        ('<tool_call>{"name": "bash", "arguments": "{\\"command\\": \\"ls\\"}"}</tool_call>', [BASH_LS]),
        ('<tool_call>{"name": "submit"}</tool_call>', [{"name": "submit", "arguments": {}}]),
        (
            '<tool_call>{"name": "submit", "arguments": null}</tool_call>',
            [{"name": "submit", "arguments": {}}],
        ),
        (
            'a<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>b'
            '<tool_call>{"name": "submit", "arguments": {}}</tool_call><|im_end|>',
            [BASH_LS, {"name": "submit", "arguments": {}}],
        ),
    ],
)
def test_well_formed_calls(text: str, expected: list[dict]):
    assert parse_tool_calls(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tool_call>{"name": "bash", "arguments": {"command": "ls"}</tool_call>', "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", "must be a JSON object, got list"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'no "name"'),
        ('<tool_call>{"name": 3}</tool_call>', 'no "name"'),
        (
            '<tool_call>{"name": "bash", "arguments": ["ls"]}</tool_call>',
            '"arguments" of bash must be an object',
        ),
        ('<tool_call>{"name": "bash", "arguments": "ls -la"}</tool_call>', "string that is not JSON"),
        ('<tool_call>\n{"name": "bash", "arguments": {"comm', "unterminated <tool_call>"),
    ],
)
def test_malformed_calls_are_reported_with_their_text(text: str, reason: str):
    [entry] = parse_tool_calls(text)
    assert reason in entry["error"]
    assert entry["raw"] and entry["raw"] in text


def test_a_bad_block_does_not_hide_a_good_one():
    text = '<tool_call>{oops}</tool_call>\n<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call>'
    first, second = parse_tool_calls(text)
    assert "error" in first and second == BASH_LS


def test_split_completion_separates_reasoning_from_calls():
    arguments = {"path": "a.py", "old_str": 'x = "é"\n', "new_str": "x = 1\n"}
    text = f"I will edit.\n{render_tool_call('str_replace_editor', arguments)}<|im_end|>"
    assert split_completion(text) == (
        "I will edit.",
        [{"name": "str_replace_editor", "arguments": arguments}],
    )
    assert split_completion("Done.<|im_end|><|endoftext|>") == ("Done.", [])


def test_render_matches_the_qwen25_template_layout():
    assert render_tool_call("bash", {"command": "ls"}) == (
        '<tool_call>\n{"name": "bash", "arguments": {"command": "ls"}}\n</tool_call>'
    )
