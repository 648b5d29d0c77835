"""`protege synth`: trajectory synthesis (protege.synth) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protege.cli.common import CLIError, count, io_args, load_cfg, profile_args, tracker_and_store
from protege.synth import PHASE, SynthError, run

# --------------------------------------------------------------------------------------------------
# CLI: `protege synth`
# --------------------------------------------------------------------------------------------------


def _synth_cli(args: argparse.Namespace) -> int:

    overrides = list(args.overrides)
    if args.tasks:
        overrides.append(f"tasks.train={args.tasks}")
    if args.ids:
        overrides.append(f"tasks.train_ids=[{args.ids}]")
    args.overrides = overrides
    cfg = load_cfg(args)
    out = Path(args.out or Path(cfg.services.data_dir) / "runs" / cfg.run_name / PHASE)
    tracker, store = tracker_and_store(cfg, args.track, args.upload)
    try:
        result = run(cfg, out, tracker, store, max_episodes=args.max_episodes)
    except SynthError as err:
        raise CLIError(str(err)) from None
    print(json.dumps({k: result[k] for k in ("out_dir", "dataset", "digest", "uri", "metrics")}, indent=2))
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege synth`."""

    synth = sub.add_parser("synth", help="synthesise expert-augmented trajectories and the SFT dataset")
    synth.add_argument("--tasks", help="training task set (overrides tasks.train), e.g. demo:train or a file")
    synth.add_argument("--ids", help="comma-separated instance ids to keep (overrides tasks.train_ids)")
    synth.add_argument("--out", help="output directory (default: <services.data_dir>/runs/<run_name>/synth)")
    synth.add_argument("--max-episodes", type=count(1), help="stop after N new episodes (resume later)")
    io_args(synth)
    profile_args(synth)
    synth.set_defaults(func=_synth_cli)
