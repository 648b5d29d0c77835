"""SFT dataset export: kept trajectories, rendered by the Qwen2.5 template, targets only on the protégé's turns."""

from __future__ import annotations

import json

import pytest

from protege.agent.tools import TOOL_SCHEMAS
from protege.sft_data import DatasetError, export_dataset, read_dataset, target_mask, to_record
from protege.trajectory import KNOWN_VERSIONS, ExpertCall, Message, ToolCall, Trajectory


def trajectory(
    instance_id: str = "acme__calc-1", attempt: int = 0, reply: str = "Look at `calc.py`."
) -> Trajectory:
    ask = ToolCall(id="call_1", name="ask_expert", arguments={"question": "where is x set?"})
    edit = ToolCall(id="call_2", name="bash", arguments={"command": "sed -i s/1/2/ calc.py"})
    return Trajectory(
        instance_id=instance_id,
        attempt=attempt,
        phase="synth",
        policy_backend="oracle-teacher",
        expert_backend="oracle",
        status="submitted",
        wall_time_s=12.5,
        started_at=1700000000.0,
        messages=[
            Message(role="system", provenance="system", content="You fix issues."),
            Message(role="user", provenance="task", content="x should be 2"),
            Message(role="assistant", provenance="policy", content="Ask first.", tool_calls=[ask]),
            Message(
                role="tool",
                provenance="expert",
                content=f"<expert_llm_guidance>\n{reply}\n</expert_llm_guidance>",
                tool_call_id="call_1",
                name="ask_expert",
            ),
            Message(role="assistant", provenance="policy", content="Edit.", tool_calls=[edit]),
            Message(
                role="tool", provenance="tool", content="(no output)", tool_call_id="call_2", name="bash"
            ),
        ],
        expert_calls=[
            ExpertCall(step=1, question="where is x set?", reply=reply, input_tokens=40, output_tokens=9)
        ],
    )


def test_record_is_hf_chat_format_with_provenance_and_only_policy_turns_are_targets():
    record = to_record(trajectory(), TOOL_SCHEMAS)
    assert record["id"] == "acme__calc-1#0"
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
    call = record["messages"][2]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "ask_expert", "arguments": {"question": "where is x set?"}},
    }
    assert record["messages"][3]["provenance"] == "expert" and record["messages"][3]["name"] == "ask_expert"
    assert target_mask(record) == [False, False, True, False, True, False]
    assert record["meta"]["expert_calls"] == 1 and record["meta"]["expert_tokens"] == 49
    assert {t["function"]["name"] for t in record["tools"]} >= {
        "bash",
        "str_replace_editor",
        "submit",
        "ask_expert",
    }
    assert "wall_time_s" not in json.dumps(record) and "1700000000" not in json.dumps(record)


def test_qwen25_template_renders_tool_calls_and_expert_guidance():
    from transformers.utils.chat_template_utils import render_jinja_template

    from protege.model import qwen25_chat_template

    record = to_record(trajectory(), TOOL_SCHEMAS)
    rendered, _ = render_jinja_template(
        conversations=[record["messages"]], tools=record["tools"], chat_template=qwen25_chat_template()
    )
    text = rendered[0]
    assert (
        '<tool_call>\n{"name": "ask_expert", "arguments": {"question": "where is x set?"}}\n</tool_call>'
        in text
    )
    assert "<tool_response>\n<expert_llm_guidance>" in text
    assert '"name": "str_replace_editor"' in text  # the tool schemas are in the system prompt


def test_export_is_sorted_deterministic_and_carded(tmp_path):
    summary = {
        "teacher_backend": "oracle",
        "teacher_model": "oracle",
        "expert_backend": "oracle",
        "expert_model": "oracle",
        "expert_gold_patch": True,
        "tasks_tried": 2,
        "episodes": 3,
        "rejected_by_reason": {"unresolved": 1},
    }
    kept = [trajectory("b__b-1"), trajectory("a__a-1", attempt=1), trajectory("a__a-1")]
    first = export_dataset(kept, tmp_path / "one", TOOL_SCHEMAS, summary)
    slower = [t.model_copy(update={"wall_time_s": 99.0}) for t in reversed(kept)]
    second = export_dataset(slower, tmp_path / "two", TOOL_SCHEMAS, summary)
    assert first.digest == second.digest and len(first.digest) == 64
    assert [r["id"] for r in read_dataset(first.path)] == ["a__a-1#0", "a__a-1#1", "b__b-1#0"]
    card = json.loads(first.card_path.read_text())
    assert card["records"] == 3 and card["sha256"] == first.digest
    assert card["rejected_by_reason"] == {"unresolved": 1}
    assert card["expert_calls_per_trajectory"]["mean"] == 1.0 and card["expert_calls_histogram"] == {"1": 3}
    assert card["tokens"]["expert"] == 3 * 49
    assert "rejected: unresolved 1" in first.readme_path.read_text()
    changed = export_dataset(
        [trajectory(reply="Look at `other.py`.")], tmp_path / "three", TOOL_SCHEMAS, summary
    )
    assert changed.digest != first.digest


def test_read_dataset_names_the_bad_line_and_field(tmp_path):
    path = tmp_path / "sft.jsonl"
    good = trajectory().model_dump_json()
    bad = {"format_version": 1, "instance_id": "x", "messages": [{"role": "user"}]}
    path.write_text(good + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DatasetError, match=r"sft.jsonl:2: messages\[0\] has no content, provenance"):
        read_dataset(path)
    path.write_text(good + "\n{oops\n")
    with pytest.raises(DatasetError, match="sft.jsonl:2: not valid JSON"):
        read_dataset(path)


def test_an_unknown_format_version_is_refused_naming_the_file_line_and_version(tmp_path):
    path = tmp_path / "sft.jsonl"
    future = json.loads(trajectory().model_dump_json()) | {"format_version": 99}
    path.write_text(trajectory().model_dump_json() + "\n" + json.dumps(future) + "\n")
    with pytest.raises(DatasetError) as refused:
        read_dataset(path)
    message = str(refused.value)
    assert (
        message
        == f"{path}:2: unknown trajectory format_version 99 (this protege reads {list(KNOWN_VERSIONS)})"
    )
    assert "\n" not in message


def test_the_dataset_holds_trajectories_without_wall_clock_and_sft_reads_them_back(tmp_path):
    from protege.trajectory import read_trajectories

    export = export_dataset([trajectory()], tmp_path, TOOL_SCHEMAS, {})
    (stored,) = read_trajectories(export.path)
    assert stored.wall_time_s == stored.started_at == 0.0 and stored.messages == trajectory().messages
    (record,) = read_dataset(export.path)
    assert record == to_record(trajectory(), TOOL_SCHEMAS)
