"""SFT throughput on CPU: tokens/s of `protege.sft.run` training the tiny model (the `local` profile's
model) on synthetic agent chats of the synth export's shape. Steady-state speed: the first logged step
(warm-up, allocator growth) is left out of the median."""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

RESULT = "sft_cpu"
RECORDS = 16
STEPS = 8
PER_DEVICE_BATCH = 4
TURNS = 4
"""Tool-calling turns per synthetic chat (each with an observation)."""


def _tools() -> list[dict]:
    return [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a command.",
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
        },
    ]


def _record(index: int) -> dict:
    messages = [
        {"role": "system", "content": "You are a software engineering agent.", "provenance": "system"},
        {"role": "user", "content": f"Tests fail in module{index}.py; fix the bug.", "provenance": "task"},
    ]
    for turn in range(TURNS):
        call = {
            "type": "function",
            "function": {
                "name": "bash",
                "arguments": {"command": f"grep -n def module{index}.py | head -{turn + 5}"},
            },
        }
        messages.append(
            {
                "role": "assistant",
                "content": f"Step {turn}: inspect.",
                "tool_calls": [call],
                "provenance": "policy",
            }
        )
        observation = "\n".join(f"{n}:def function_{n}(a, b): return a - b" for n in range(12))
        messages.append({"role": "tool", "name": "bash", "content": observation, "provenance": "tool"})
    messages.append({"role": "assistant", "content": "Fixed the subtraction.", "provenance": "policy"})
    return {"id": f"bench-{index}", "messages": messages, "tools": _tools()}


def run() -> dict:
    from protege import sft
    from protege.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        (data / "sft.jsonl").write_text("".join(json.dumps(_record(i)) + "\n" for i in range(RECORDS)))
        cfg = load_config(
            "local",
            overrides=[
                f"model.cache_dir={root / 'models'}",
                "sft.deepspeed=",
                f"sft.max_steps={STEPS}",
                f"sft.per_device_batch_size={PER_DEVICE_BATCH}",
                f"sft.global_batch_size={PER_DEVICE_BATCH}",
                f"sft.save_steps={STEPS}",
                "sft.logging_steps=1",
            ],
        )
        result = sft.run(cfg, str(data), root / "out")
    steps = [h for h in result["history"] if "tokens_per_s" in h]
    steady = [h["tokens_per_s"] for h in steps[1:]] or [h["tokens_per_s"] for h in steps]
    return {
        "model": "tiny (protege.config.TinyModelConfig defaults)",
        "records": RECORDS,
        "steps": STEPS,
        "batch": PER_DEVICE_BATCH,
        "tokens_per_step": result["data"]["tokens"] * PER_DEVICE_BATCH // RECORDS,
        "tokens_per_s_median": round(statistics.median(steady), 1),
        "warmup_tokens_per_s": round(steps[0]["tokens_per_s"], 1) if steps else None,
        "tokens_per_s_per_step": [round(s, 1) for s in steady],
        "loss_first": result["metrics"]["loss_first"],
        "loss_last": result["metrics"]["loss_last"],
    }
