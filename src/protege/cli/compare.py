"""`protege compare`: variants of the acting agent on one task set (protege.compare) from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from protege.cli.common import CLIError, io_args, load_cfg, profile_args, tracker_and_store


def _compare_cli(args: argparse.Namespace) -> int:
    from protege.compare import CompareError, run
    from protege.compare.spec import SpecError, load_spec
    from protege.config import load_config

    cfg = load_cfg(args)
    run_name = args.run_name or f"{cfg.run_name}-compare-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out = Path(args.out or Path(cfg.services.data_dir) / "runs" / run_name)
    try:
        spec = load_spec(args.variants, cfg)
        if args.reference:
            if args.reference not in {v.name for v in spec.variants}:
                raise SpecError(f"--reference {args.reference!r} is not a variant of {args.variants}")
            spec.reference = args.reference
        tracker, store = tracker_and_store(cfg, args.track, args.upload)
        result = run(
            spec,
            lambda extra: load_config(args.profile, args.config_file, list(args.overrides) + extra),
            out,
            exclusions=args.exclusions or "",
            tracker=tracker,
            store=store,
            run_name=run_name,
        )
    except (SpecError, CompareError) as err:
        raise CLIError(str(err)) from None
    print(Path(result["paths"]["md"]).read_text())
    print(
        json.dumps(
            {"out_dir": str(out), "mlflow_run_id": result["mlflow_run_id"], **result["paths"]}, indent=2
        )
    )
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege compare`."""
    compare = sub.add_parser(
        "compare", help="run or gather variants of the agent on one task set; one table with paired tests"
    )
    compare.add_argument(
        "--variants", required=True, help="variants file (YAML/JSON; see protege.compare.spec)"
    )
    compare.add_argument(
        "--exclusions", help="exclusion list: instance_id -> reason (default: compare.exclusions)"
    )
    compare.add_argument(
        "--reference", help="variant the paired differences are against (default: the file's)"
    )
    compare.add_argument("--out", help="output directory (default: <services.data_dir>/runs/<run name>)")
    compare.add_argument(
        "--run-name", help="name of the comparison run (default: <run_name>-compare-<UTC time>)"
    )
    io_args(compare)
    profile_args(compare)
    compare.set_defaults(func=_compare_cli)
