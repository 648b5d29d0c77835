"""What the history view costs (protege.agent.render, `agent.history_view`), measured on an SFT dataset:

    python -m bench.history_view_cost --dataset .protege/runs/<run>/synth/sft [--profile local] [KEY=VALUE ...]

Per view (`full`, `collapsed`): SFT examples, their tokens (the training cost; `collapsed` needs one example
per policy turn), the longest example, and on the inference side the prompt tokens of every policy turn
(summed: the prefill an agent without a prefix cache pays; longest: the context window it needs).
Written to `bench/results/history_view_cost.json`. The tokenizer is the profile's base model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.sft_format_check import to_messages

RESULT = "history_view_cost"
VIEWS = ("full", "collapsed")


def measure(cfg: Any, dataset: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from protege.agent.chat_format import chat_format
    from protege.agent.render import policy_view, prompt_ids, tool_schemas
    from protege.model import resolve_model
    from protege.sft import build_examples, load_dataset

    model_dir = resolve_model(cfg.model.base, Path(cfg.model.cache_dir), None, tiny=cfg.model.tiny)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = chat_format(tokenizer).training_template
    data = load_dataset(dataset, Path(cfg.services.data_dir) / "bench")
    keep = cfg.agent.keep_last_observations
    result: dict[str, Any] = {"records": len(data.records), "keep_last_observations": keep}
    for view in VIEWS:
        examples, report = build_examples(tokenizer, template, data.records, 10**7, "drop", view, keep)
        prompts = []
        for record in data.records:
            messages = to_messages(record)
            for i, message in enumerate(messages):
                if message.provenance == "policy":
                    shown = policy_view(messages[:i], view, keep)
                    prompts.append(len(prompt_ids(tokenizer, shown, tool_schemas())))
        result[view] = {
            "sft_examples": len(examples),
            "sft_tokens": report["tokens"],
            "sft_target_tokens": report["target_tokens"],
            "sft_longest_example": max(len(e["input_ids"]) for e in examples),
            "policy_turns": len(prompts),
            "prompt_tokens_sum": sum(prompts),
            "prompt_tokens_max": max(prompts),
        }
    return result


def main(argv: list[str]) -> int:
    from protege.config import load_config

    parser = argparse.ArgumentParser(
        prog="python -m bench.history_view_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, help="the synth SFT export (directory or sft.jsonl)")
    parser.add_argument("--profile", default="local", help="config profile (default local)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    args = parser.parse_args(argv)
    result = measure(load_config(args.profile, overrides=args.overrides), args.dataset)
    out = Path(__file__).parent / "results" / f"{RESULT}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
