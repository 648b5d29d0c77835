"""`protege model ...`: building and inspecting base models (protege.model) from the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from protege.cli.common import load_cfg, profile_args
from protege.model import build_tiny_model, read_manifest, resolve_model

# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _init_tiny(args: argparse.Namespace) -> int:

    cfg = load_cfg(args)
    start = time.monotonic()
    if args.out:
        out = build_tiny_model(cfg.model.tiny, Path(args.out))
    else:
        out = resolve_model("tiny", Path(cfg.model.cache_dir), tiny=cfg.model.tiny)
    manifest = read_manifest(out)
    print(f"parameters: {manifest['parameters']:,}")
    print(f"vocab size: {manifest['vocab_size']}")
    print(f"corpus files: {manifest['corpus_files']}")
    print(f"time: {time.monotonic() - start:.1f} s")
    print(f"model dir: {out}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege model init-tiny`."""

    group = sub.add_parser("model", help="build and inspect models").add_subparsers(dest="cmd", required=True)
    init = group.add_parser("init-tiny", help="build the tiny local Qwen2 model and its tokenizer")
    init.add_argument(
        "--out", help="output directory (default: model.cache_dir/tiny-<digest>, reused if built)"
    )
    profile_args(init)
    init.set_defaults(func=_init_tiny)
