"""The SFT dataset: kept synthesis trajectories as chat records the protégé's template renders.

One JSONL record per kept trajectory (`sft.jsonl`, sorted by instance id and attempt):

    {"id": "<instance_id>#<attempt>", "instance_id": ..., "attempt": ...,
     "messages": [{"role", "content", "provenance", ("tool_calls" | "tool_call_id", "name")}, ...],
     "tools": [<OpenAI function schemas of the agent's tools>],
     "meta": {"policy_backend", "policy_model", "expert_backend", "expert_model", "expert_calls",
              "steps", "policy_tokens", "expert_tokens", "cost_usd"}}

`messages` is the HF chat format: assistant tool calls as `{"type": "function", "function": {"name",
"arguments": <dict>}}` (the Qwen2.5 template writes them with `tojson` inside `<tool_call>` tags),
tool observations as `role: tool` messages. `provenance` says who produced each message; only
`policy` messages are training targets (`target_mask`): the system prompt, the task, tool
observations and expert guidance (a tool message with provenance `expert`) are context only
(METHOD §4). Messages are the full record of the episode (observations as inserted, i.e. already
truncated to the agent's cap); SFT applies `agent.history_view` when it renders them
(protege.agent.render.training_conversations), so it trains on the view the agent is shown. `tools` are
written in the agent's definition order and no key is ever sorted: key order is part of the rendered
prompt. Nothing time-dependent is exported, so the same trajectories give the same bytes and
the same `digest` (sha256 of `sft.jsonl`).

Beside it: `dataset_card.json` (what the run tried, kept and rejected, by reason; expert calls per
trajectory; tokens; cost; the digest) and `README.md` (the same card, for people).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.store import sha256_file
from protege.trajectory import Trajectory

DATASET_FILE = "sft.jsonl"
CARD_FILE = "dataset_card.json"
README_FILE = "README.md"
DATASET_FORMAT = "protege-sft-chat-v1"
TARGET_PROVENANCE = "policy"
"""The only provenance SFT trains on."""


class DatasetError(ValueError):
    """An SFT dataset file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class DatasetExport:
    """Where the export went and what it holds."""

    path: Path
    card_path: Path
    readme_path: Path
    digest: str
    records: int
    card: dict[str, Any]


def chat_messages(trajectory: Trajectory) -> list[dict[str, Any]]:
    """The trajectory's messages in HF chat format, each with its provenance.

    protege.agent.render's conversion, the one the agent and RL render their prompts with (a test compares
    the three paths token for token); provenance is placed right after role/content.
    """
    from protege.agent.render import chat_messages as render_chat

    chat = render_chat(trajectory.messages)
    return [
        {"role": item["role"], "content": item["content"], "provenance": message.provenance, **item}
        for item, message in zip(chat, trajectory.messages, strict=True)
    ]


def to_record(trajectory: Trajectory, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """One dataset record (see module docstring); nothing time-dependent."""
    return {
        "id": f"{trajectory.instance_id}#{trajectory.attempt}",
        "instance_id": trajectory.instance_id,
        "attempt": trajectory.attempt,
        "messages": chat_messages(trajectory),
        "tools": tools,
        "meta": {
            "policy_backend": trajectory.policy_backend,
            "policy_model": trajectory.policy_model,
            "expert_backend": trajectory.expert_backend,
            "expert_model": trajectory.expert_model,
            "expert_calls": len(trajectory.expert_calls),
            "steps": trajectory.steps,
            "policy_tokens": trajectory.policy_input_tokens + trajectory.policy_output_tokens,
            "expert_tokens": trajectory.expert_tokens,
            "cost_usd": round(trajectory.policy_cost_usd + trajectory.expert_cost_usd, 6),
        },
    }


def target_mask(record: dict[str, Any]) -> list[bool]:
    """Per message: is it a training target (only the protégé's own turns are)."""
    return [m.get("provenance") == TARGET_PROVENANCE for m in record["messages"]]


def _distribution(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": round(statistics.fmean(values), 4),
        "median": float(statistics.median(values)),
        "min": float(min(values)),
        "max": float(max(values)),
    }


def build_card(kept: list[Trajectory], summary: dict[str, Any], digest: str) -> dict[str, Any]:
    """The dataset card: the run's `summary` (backends, tried, rejected by reason, ...) plus the
    kept set's expert calls, tokens and cost, and the digest."""
    calls = [len(t.expert_calls) for t in kept]
    return {
        "format": DATASET_FORMAT,
        "file": DATASET_FILE,
        "sha256": digest,
        "records": len(kept),
        **summary,
        "expert_calls_per_trajectory": _distribution([float(c) for c in calls]),
        "expert_calls_histogram": {str(k): v for k, v in sorted(Counter(calls).items())},
        "steps_per_trajectory": _distribution([float(t.steps) for t in kept]),
        "tokens": {
            "policy_input": sum(t.policy_input_tokens for t in kept),
            "policy_output": sum(t.policy_output_tokens for t in kept),
            "expert": sum(t.expert_tokens for t in kept),
        },
        "cost_usd": {
            "policy": round(sum(t.policy_cost_usd for t in kept), 6),
            "expert": round(sum(t.expert_cost_usd for t in kept), 6),
        },
        "targets": f"messages with provenance '{TARGET_PROVENANCE}' only",
    }


def render_readme(card: dict[str, Any]) -> str:
    """The card as a short markdown page."""
    rejected = card.get("rejected_by_reason", {})
    lines = [
        "# protege SFT dataset (synth)",
        "",
        f"`{card['file']}`: {card['records']} chat record(s), format `{card['format']}`, sha256 `{card['sha256']}`.",
        "",
        f"- teacher: {card.get('teacher_backend', '?')} (`{card.get('teacher_model', '?')}`)",
        f"- expert: {card.get('expert_backend', '?')} (`{card.get('expert_model', '?')}`), gold patch shown: "
        f"{card.get('expert_gold_patch', '?')}",
        f"- tasks tried: {card.get('tasks_tried', '?')}, episodes: {card.get('episodes', '?')}, "
        f"kept: {card['records']}",
        "- rejected: " + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none"),
        f"- expert calls per trajectory: mean {card['expert_calls_per_trajectory']['mean']}, "
        f"histogram {card['expert_calls_histogram']}",
        f"- tokens: {card['tokens']}",
        f"- cost (USD, kept trajectories): {card['cost_usd']}",
        f"- training targets: {card['targets']}",
        "",
    ]
    return "\n".join(lines)


def export_dataset(
    kept: list[Trajectory], out_dir: str | Path, tools: list[dict[str, Any]], summary: dict[str, Any]
) -> DatasetExport:
    """Write `sft.jsonl` (sorted by instance id, attempt), the card and the README into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = sorted(kept, key=lambda t: (t.instance_id, t.attempt))
    path = out_dir / DATASET_FILE
    with path.open("w") as handle:
        for trajectory in ordered:
            # Never sort_keys: key order is rendered (tool schemas in the system prompt, tool-call arguments
            # through `tojson`), so the record keeps the agent's order and SFT renders the agent's tokens.
            handle.write(json.dumps(to_record(trajectory, tools), ensure_ascii=False) + "\n")
    digest = sha256_file(path)
    card = build_card(ordered, summary, digest)
    card_path = out_dir / CARD_FILE
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    readme_path = out_dir / README_FILE
    readme_path.write_text(render_readme(card))
    return DatasetExport(path, card_path, readme_path, digest, len(ordered), card)


def read_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Every record of an SFT JSONL file, checked for the fields SFT relies on."""
    path = Path(path)
    records = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON: {err.msg}") from None
            for key in ("id", "messages", "tools"):
                if key not in record:
                    raise DatasetError(f"{where}: record has no `{key}`")
            for index, message in enumerate(record["messages"]):
                missing = [k for k in ("role", "content", "provenance") if k not in message]
                if missing:
                    raise DatasetError(f"{where}: messages[{index}] has no {', '.join(missing)}")
            records.append(record)
    return records
