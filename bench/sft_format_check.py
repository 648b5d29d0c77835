"""After SFT: does the model answer its own training prompts with one well-formed tool call, in the agent's render?

    python -m bench.sft_format_check --model .protege/runs/<run>/sft/model \\
        --dataset .protege/runs/<run>/synth/sft [--turns 24] [--profile local] [KEY=VALUE ...]

For a sample of the policy turns of the SFT dataset (evenly spread over every record, `--turns` of them), the
context the agent would show at that turn (protege.agent.render.policy_view under `agent.history_view`, the
tool schemas in definition order) goes through the agent's own `TransformersPolicy` (greedy, the profile's
`agent.policy.max_new_tokens`), and the completion is parsed as the agent parses it. Reported: the share of
turns with exactly one well-formed tool call, the share calling the same tool as the trajectory did, the
format errors seen and the start of the first failed completions. Written to `bench/results/sft_format_check.json` with the machine's load.
Not part of `make bench` (it needs a trained model): run it after `make demo`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

RESULT = "sft_format_check"
SAMPLES, SAMPLE_CHARS = 3, 160
"""The first few failed completions are kept (their first characters), to see what the model does instead."""


def to_messages(record: dict[str, Any]) -> list[Any]:
    """The record's chat dicts back as trajectory Messages (what the agent's history holds)."""
    from protege.trajectory import Message, ToolCall

    messages = []
    for item in record["messages"]:
        calls = [
            ToolCall(id=c.get("id", ""), name=c["function"]["name"], arguments=c["function"]["arguments"])
            for c in item.get("tool_calls", [])
        ]
        messages.append(
            Message(
                role=item["role"],
                provenance=item["provenance"],
                content=item["content"],
                tool_calls=calls,
                tool_call_id=item.get("tool_call_id", ""),
                name=item.get("name", ""),
            )
        )
    return messages


def sample_turns(records: list[dict[str, Any]], count: int) -> list[tuple[str, list[Any], Any]]:
    """(record id, history before the turn, the turn) for `count` policy turns spread evenly over all."""
    turns = []
    for record in records:
        messages = to_messages(record)
        turns += [(record["id"], messages[:i], m) for i, m in enumerate(messages) if m.provenance == "policy"]
    if count >= len(turns):
        return turns
    return [turns[round(i * (len(turns) - 1) / max(count - 1, 1))] for i in range(count)]


def check(cfg: Any, model_dir: str, dataset: str, count: int) -> dict[str, Any]:
    """Generate each sampled turn with the agent's policy and count well-formed single tool calls."""
    from protege.agent.policies import TransformersPolicy
    from protege.agent.render import policy_view, tool_schemas
    from protege.model import load_model_and_tokenizer
    from protege.sft import load_dataset

    data = load_dataset(dataset, Path(model_dir).parent / "format-check")
    model, tokenizer = load_model_and_tokenizer(Path(model_dir), "float32", "cpu", "sdpa")
    policy_cfg = cfg.agent.policy.model_copy(update={"temperature": 0.0})
    policy = TransformersPolicy(model.eval(), tokenizer, policy_cfg, model_id=model_dir)
    well_formed = same_tool = 0
    errors: Counter[str] = Counter()
    seconds, failures = [], []
    samples = sample_turns(data.records, count)
    for _rid, history, turn in samples:
        view = policy_view(history, cfg.agent.history_view, cfg.agent.keep_last_observations)
        started = time.monotonic()
        out = policy.generate(view, tool_schemas())
        seconds.append(time.monotonic() - started)
        ok = not out.format_error and len(out.tool_calls) == 1
        well_formed += ok
        expected = turn.tool_calls[0].name if turn.tool_calls else None
        same_tool += ok and out.tool_calls[0].name == expected
        if not ok:
            errors[out.format_error or f"{len(out.tool_calls)} tool calls"] += 1
            failures.append(out.text[:SAMPLE_CHARS])
    return {
        "model": model_dir,
        "dataset_digest": data.digest,
        "history_view": cfg.agent.history_view,
        "turns": len(samples),
        "well_formed": well_formed,
        "well_formed_share": well_formed / max(len(samples), 1),
        "same_tool_share": same_tool / max(len(samples), 1),
        "format_errors": dict(errors.most_common()),
        "failed_samples": failures[:SAMPLES],
        "seconds_per_turn": sum(seconds) / max(len(seconds), 1),
        "load_average_1m": os.getloadavg()[0],
    }


def main(argv: list[str]) -> int:
    from protege.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m bench.sft_format_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", required=True, help="the SFT model directory (<run>/sft/model)")
    parser.add_argument("--dataset", required=True, help="the synth SFT export (directory or sft.jsonl)")
    parser.add_argument("--turns", type=int, default=24, help="policy turns to sample (default 24)")
    parser.add_argument("--profile", default="local", help="config profile (default local)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_args(argv)
    result = check(load_config(args.profile, overrides=args.overrides), args.model, args.dataset, args.turns)
    out = Path(__file__).parent / "results" / f"{RESULT}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
