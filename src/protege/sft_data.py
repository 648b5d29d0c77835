"""The SFT dataset: the kept synthesis trajectories, in the one trajectory format, that SFT reads directly.

`sft.jsonl` holds one `protege.trajectory.Trajectory` record per kept episode (sorted by instance id and
attempt), read back with `read_trajectories`, so an unknown `format_version` is refused with the file, line
and version. Its wall-clock fields (started_at, wall_time_s, each action's duration_s, each expert call's
latency_s) are zeroed: they stay in synth's `trajectories.jsonl`, and without them the same episodes give
the same bytes and the same `digest` (sha256 of `sft.jsonl`) on every rerun. Key order is never sorted
(tool-call arguments render through `tojson` in their own order).

What SFT renders from a trajectory, `to_record`, is computed in memory when the file is read, never stored:

    {"id": "<instance_id>#<attempt>", "instance_id": ..., "attempt": ...,
     "messages": [{"role", "content", "provenance", ("tool_calls" | "tool_call_id", "name")}, ...],
     "tools": [<OpenAI function schemas of the agent's tools>],
     "meta": {"policy_backend", "policy_model", "expert_backend", "expert_model", "expert_calls",
              "steps", "policy_tokens", "expert_tokens", "cost_usd"}}

`messages` is protege.agent.render's HF chat conversion (the one the agent and RL render their prompts
with) plus each message's `provenance`; only `policy` messages are training targets (`target_mask`): the
system prompt, the task, tool observations and expert guidance (a tool message with provenance `expert`)
are context only (METHOD §4). SFT applies `agent.history_view` when it renders them
(protege.agent.render.training_conversations), so it trains on the view the agent is shown. `tools` are the
schemas the episodes were played with, in the agent's definition order, kept in the card (`tools`).

Beside it: `dataset_card.json` (what the run tried, kept and rejected, by reason; expert calls per
trajectory; tokens; cost; the tool schemas; the digest) and `README.md` (the same card, for people).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.store import sha256_file
from protege.trajectory import FORMAT_VERSION, Trajectory, TrajectoryFormatError, read_trajectories

DATASET_FILE = "sft.jsonl"
CARD_FILE = "dataset_card.json"
README_FILE = "README.md"
DATASET_FORMAT = f"protege-trajectory-v{FORMAT_VERSION}"
TARGET_PROVENANCE = "policy"
"""The only provenance SFT trains on."""


class DatasetError(TrajectoryFormatError):
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
    """What SFT renders of one trajectory (see module docstring); nothing time-dependent."""
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
            "policy_tokens": trajectory.policy_tokens,
            "expert_tokens": trajectory.expert_tokens,
            "cost_usd": round(trajectory.cost_usd, 6),
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


def build_card(
    kept: list[Trajectory], summary: dict[str, Any], digest: str, tools: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The dataset card: the run's `summary` (backends, tried, rejected by reason, ...) plus the
    kept set's expert calls, tokens and cost, the tool schemas SFT renders with, and the digest."""
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
        **({"tools": tools} if tools is not None else {}),
    }


def render_readme(card: dict[str, Any]) -> str:
    """The card as a short markdown page."""
    rejected = card.get("rejected_by_reason", {})
    lines = [
        "# protege SFT dataset (synth)",
        "",
        f"`{card['file']}`: {card['records']} trajectories, format `{card['format']}`, sha256 `{card['sha256']}`.",
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
            # Never sort_keys: key order is rendered (tool-call arguments through `tojson`).
            handle.write(without_clock(trajectory).model_dump_json() + "\n")
    digest = sha256_file(path)
    card = build_card(ordered, summary, digest, tools)
    card_path = out_dir / CARD_FILE
    # Top-level keys sorted, nested ones never: the tool schemas' key order is rendered into the prompt.
    card_path.write_text(json.dumps(dict(sorted(card.items())), indent=2) + "\n")
    readme_path = out_dir / README_FILE
    readme_path.write_text(render_readme(card))
    return DatasetExport(path, card_path, readme_path, digest, len(ordered), card)


def without_clock(trajectory: Trajectory) -> Trajectory:
    """The trajectory with its wall-clock fields zeroed (what the dataset stores; see module docstring)."""
    return trajectory.model_copy(
        update={
            "started_at": 0.0,
            "wall_time_s": 0.0,
            "actions": [a.model_copy(update={"duration_s": 0.0}) for a in trajectory.actions],
            "expert_calls": [c.model_copy(update={"latency_s": 0.0}) for c in trajectory.expert_calls],
        }
    )


def dataset_tools(path: str | Path) -> list[dict[str, Any]]:
    """The tool schemas of the dataset at `path` (its card's `tools`), else the agent's own."""
    card = Path(path).parent / CARD_FILE
    tools = json.loads(card.read_text()).get("tools") if card.is_file() else None
    if tools is None:
        from protege.agent.render import tool_schemas

        tools = tool_schemas()
    return tools


def read_dataset(path: str | Path) -> list[dict[str, Any]]:
    """What SFT renders of every trajectory of `path` (`to_record`, with the card's tool schemas). A bad line
    raises DatasetError naming the file, line and field (an unknown `format_version` among them)."""
    tools = dataset_tools(path)
    try:
        return [to_record(trajectory, tools) for trajectory in read_trajectories(path)]
    except TrajectoryFormatError as err:
        raise DatasetError(str(err)) from None
