"""`protege rl --stage 1|2`: the RL phase (protege.rl) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protege.cli.common import CLIError, io_args, load_cfg, profile_args, tracker_and_store
from protege.rl import RLError, run
from protege.rl.plan import PHASES

# --------------------------------------------------------------------------------------------------
# CLI: `protege rl`
# --------------------------------------------------------------------------------------------------


def _rl_cli(args: argparse.Namespace) -> int:
    from protege.model import ModelResolveError

    cfg = load_cfg(args)
    phase = PHASES.get(args.stage)
    out = Path(args.out or Path(cfg.services.data_dir) / "runs" / cfg.run_name / str(phase))
    tracker, store = tracker_and_store(cfg, args.track, args.upload)
    try:
        result = run(cfg, args.stage, args.model, out, tracker, store)
    except (RLError, ModelResolveError) as err:
        raise CLIError(str(err)) from None
    keys = (
        "model_uri",
        "checkpoint_uri",
        "global_step",
        "reference_model_uri",
        "parent_checkpoint_uri",
        "dropped_tasks",
        "mlflow_run_id",
    )
    print(json.dumps({k: result[k] for k in keys}, indent=2, default=str))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege rl`."""

    rl = sub.add_parser("rl", help="agentic GRPO: stage 1 (loop reward) or stage 2 (+ follow-through)")
    rl.add_argument("--stage", type=int, choices=sorted(PHASES), required=True, help="curriculum stage")
    rl.add_argument(
        "--model", required=True, help="stage 1: the SFT model; stage 2: rl1's final model (dir or s3://)"
    )
    rl.add_argument("--out", help="output directory (default: <services.data_dir>/runs/<run_name>/rl<stage>)")
    io_args(rl)
    profile_args(rl)
    rl.set_defaults(func=_rl_cli)
