"""SFT throughput and model FLOPs utilisation (MFU) on a GPU, for the cluster's model size.

    python bench/gpu_sft_mfu.py [--seq-len 32768] [--steps 5] [--layers 28] [--peak-tflops 989]

A randomly initialised Qwen2 model with the Qwen2.5-Coder-7B configuration (hidden 3584, 28 layers, 28
heads, 4 KV heads, intermediate 18944, vocab 152064, untied head), bf16 weights, activation
checkpointing, flash_attention_2 when installed (else sdpa), fused AdamW, one 32k-token sequence per
step: the phase's per-GPU work at the paper's max length. Prints and writes JSON
(`bench/results/gpu_sft_mfu.json`): tokens/s per GPU, step time, peak memory, MFU.

Model FLOPs per token (PaLM, appendix B): 6·N + 12·L·d·T, with N the parameters doing matmuls (all but
the input embedding), L layers, d the attention width (heads × head dim), T the sequence length.
Recomputation by checkpointing is not counted (that would be hardware FLOPs utilisation). The causal
mask halves the attention work actually done; `mfu_causal_attention` counts only that half. Peak: the
GPU's dense bf16 tensor-core TFLOPs (table below, or --peak-tflops). Lower --layers to fit smaller GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

QWEN25_CODER_7B = {
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "H800": 989.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "B200": 2250.0,
}
"""Dense bf16 tensor-core peak by GPU name fragment (vendor datasheets, SXM parts)."""
RESULT = Path(__file__).parent / "results" / "gpu_sft_mfu.json"


def flops_per_token(n_matmul_params: int, layers: int, attn_width: int, seq_len: int, causal: bool) -> float:
    attention = 12 * layers * attn_width * seq_len
    return 6 * n_matmul_params + (attention / 2 if causal else attention)


def peak_tflops(name: str, override: float | None) -> float:
    if override:
        return override
    for fragment, tflops in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return tflops
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def attention_kernel() -> str:
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def build_model(layers: int, attn: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**{**QWEN25_CODER_7B, "num_hidden_layers": layers}, attn_implementation=attn)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model


def measure(seq_len: int, steps: int, warmup: int, layers: int, peak_override: float | None) -> dict:
    import torch

    attn = attention_kernel()
    model = build_model(layers, attn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    vocab = model.config.vocab_size
    times = []
    for step in range(warmup + steps):
        ids = torch.randint(0, vocab, (1, seq_len), device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    embedding = model.get_input_embeddings().weight.numel()
    n_matmul = sum(p.numel() for p in model.parameters()) - embedding
    width = model.config.num_attention_heads * (model.config.hidden_size // model.config.num_attention_heads)
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, peak_override) * 1e12
    tokens_per_s = seq_len / step_s
    mfu = {
        c: tokens_per_s * flops_per_token(n_matmul, layers, width, seq_len, c) / peak for c in (False, True)
    }
    return {
        "gpu": name,
        "gpus_visible": torch.cuda.device_count(),
        "attention": attn,
        "dtype": "bfloat16",
        "activation_checkpointing": True,
        "seq_len": seq_len,
        "layers": layers,
        "parameters": n_matmul + embedding,
        "matmul_parameters": n_matmul,
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s_per_gpu": round(tokens_per_s, 1),
        "peak_bf16_tflops": peak / 1e12,
        "mfu": round(mfu[False], 4),
        "mfu_causal_attention": round(mfu[True], 4),
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "torch": torch.__version__,
        "host": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=32768)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--layers", type=int, default=QWEN25_CODER_7B["num_hidden_layers"])
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense bf16 peak")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_sft_mfu needs a CUDA GPU")
    result = measure(args.seq_len, args.steps, args.warmup, args.layers, args.peak_tflops)
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
