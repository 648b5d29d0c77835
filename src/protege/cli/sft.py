"""`protege sft`: the SFT phase (protege.sft) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protege.cli.common import CLIError, io_args, load_cfg, profile_args, tracker_and_store
from protege.sft import PHASE, SFTError, run

# --------------------------------------------------------------------------------------------------
# CLI: `protege sft`
# --------------------------------------------------------------------------------------------------


def _sft_cli(args: argparse.Namespace) -> int:
    import yaml

    from protege import launch

    cfg = load_cfg(args)
    if args.emit_trainjob:
        manifest = launch.trainjob_manifest(cfg, args.dataset, args.profile, list(args.overrides))
        Path(args.emit_trainjob).write_text(yaml.safe_dump(manifest, sort_keys=False))
        print(f"wrote TrainJob {manifest['metadata']['name']} to {args.emit_trainjob}")
        return 0
    out = Path(args.out or Path(cfg.services.data_dir) / "runs" / cfg.run_name / PHASE)
    # Only rank 0 tracks: other ranks of a torchrun relaunch must not open MLflow runs.
    tracker, store = tracker_and_store(cfg, args.track and launch.is_world_main(), args.upload)
    try:
        result = run(cfg, args.dataset, out, tracker, store)
    except SFTError as err:
        raise CLIError(str(err)) from None
    if launch.is_world_main():
        keys = ("model_dir", "model_uri", "model_id", "global_step", "metrics")
        print(json.dumps({k: result[k] for k in keys}, indent=2, default=str))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege sft`."""

    sft = sub.add_parser("sft", help="supervised fine-tuning of the protégé on the synth export")
    sft.add_argument("--dataset", required=True, help="the synth SFT export: a .jsonl, a directory, or s3://")
    sft.add_argument("--out", help="output directory (default: <services.data_dir>/runs/<run_name>/sft)")
    io_args(sft)
    sft.add_argument("--emit-trainjob", metavar="FILE", help="write a Kubeflow TrainJob manifest and exit")
    profile_args(sft)
    sft.set_defaults(func=_sft_cli)
