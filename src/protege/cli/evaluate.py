"""`protege eval` and `protege report`: the evaluation phase (protege.evaluate) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protege.cli.common import CLIError, io_args, load_cfg, profile_args, tracker_and_store
from protege.evaluate import PHASE, EvalError, run, write_report

# --------------------------------------------------------------------------------------------------
# CLI: `protege eval`, `protege report`
# --------------------------------------------------------------------------------------------------


def expert_overrides(spec: str) -> list[str]:
    """`--expert BACKEND[:MODEL]` as config overrides (`anthropic:claude-opus-4-1`, `oracle`)."""
    backend, _, model = spec.partition(":")
    if not backend:
        raise EvalError(f"--expert '{spec}': expected BACKEND[:MODEL], e.g. anthropic:claude-sonnet-4-5")
    return [f"expert.backend={backend}"] + ([f"expert.model={model}"] if model else [])


def _eval_cli(args: argparse.Namespace) -> int:

    try:
        if args.expert:
            args.overrides = expert_overrides(args.expert) + list(args.overrides)
        cfg = load_cfg(args)
        out = Path(args.out or Path(cfg.services.data_dir) / "runs" / cfg.run_name / PHASE)
        tracker, store = tracker_and_store(cfg, args.track, args.upload)
        from protege.evaluate.serving import served_policy

        with served_policy(cfg, args.model, store, out) as served:
            result = run(served, args.model, out, tracker, store, script=args.script)
    except EvalError as err:
        raise CLIError(str(err)) from None
    print(
        json.dumps(
            {"out_dir": result["out_dir"], "uri": result["uri"], "metrics": result["metrics"]}, indent=2
        )
    )
    return 0


def _report_cli(args: argparse.Namespace) -> int:
    from protege.evaluate.report import ReportError

    try:
        paths = write_report(Path(args.path))
    except (ReportError, OSError) as err:
        raise CLIError(f"{args.path}: {err}") from None
    summary = json.loads(paths["report_json"].read_text())["summary"]
    print(
        f"Pass@1 {summary['pass_at_1']:.4f} [{summary['pass_at_1_ci_low']:.4f}, {summary['pass_at_1_ci_high']:.4f}]"
        f" over {summary['episodes']} episode(s)"
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege eval` and `protege report`."""

    evaluate = sub.add_parser("eval", help="evaluate a policy on the eval split: grade, report, log")
    evaluate.add_argument(
        "--model", required=True, help="policy model: a local dir, an s3:// URI, an HF id or `tiny`"
    )
    evaluate.add_argument("--expert", help="expert as BACKEND[:MODEL], e.g. anthropic:claude-sonnet-4-5")
    evaluate.add_argument("--script", help="scripted policy only: gold, empty, or a JSON script file")
    evaluate.add_argument(
        "--out", help="results directory (default: <services.data_dir>/runs/<run_name>/eval)"
    )
    io_args(evaluate)
    profile_args(evaluate)
    evaluate.set_defaults(func=_eval_cli)
    report = sub.add_parser("report", help="re-render report.json and report.md from a results directory")
    report.add_argument("path", help="results directory of an eval run (predictions, trajectories, grades)")
    report.set_defaults(func=_report_cli)
