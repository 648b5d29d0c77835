"""The pipeline from the command line: `protege compile|submit|schedule` (KFP, protege.pipeline.compile)
and `protege run` / `protege demo` (the whole pipeline locally through kfp.local, protege.pipeline.local).

There is one end-to-end chain, the pipeline: `make demo` = `make setup`, `protege services up`,
`protege demo` (= `protege run --profile local`).

    make demo
    protege demo sft.max_steps=20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from protege.cli.common import CLIError, count, profile_args


def _compile_cli(args: argparse.Namespace) -> int:
    from protege.pipeline.compile import compile_pipeline, is_stale

    target = Path(args.output)
    if args.check:
        if is_stale(target):
            print(f"{target} is stale: run `protege compile` and commit it", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    compile_pipeline(target, args.images)
    print(f"wrote {target}" + (f" (images tagged {args.images})" if args.images else ""))
    return 0


def _submit_cli(args: argparse.Namespace) -> int:
    from protege.pipeline.compile import submit

    result = submit(args)
    print(f"submitted run {getattr(result, 'run_id', result)} in experiment '{args.experiment}'")
    return 0


def _schedule_cli(args: argparse.Namespace) -> int:
    from protege.pipeline.compile import kfp_cron, schedule

    result = schedule(args)
    print(f"scheduled recurring run {getattr(result, 'recurring_run_id', result)} on '{kfp_cron(args.cron)}'")
    return 0


def _run_args(parser: argparse.ArgumentParser) -> None:
    from protege.config import PipelineConfig

    parser.add_argument("--host", help="KFP API endpoint (default: kfp.Client's, e.g. in-cluster)")
    defaults = PipelineConfig()
    parser.add_argument(
        "--namespace",
        default=defaults.namespace,
        help=f"namespace of the run, where the RBAC and Secrets live (default: {defaults.namespace})",
    )
    parser.add_argument(
        "--service-account",
        dest="service_account",
        default=defaults.service_account,
        help=f"service account the steps run as (default: {defaults.service_account}, manifests/base/rbac.yaml)",
    )
    parser.add_argument("--experiment", default=PipelineConfig().name, help="KFP experiment")
    parser.add_argument(
        "--profile", default="cluster", help="config profile the steps load (default: cluster)"
    )
    parser.add_argument("--base-model", dest="base_model", help="override model.base")
    parser.add_argument("--train-tasks", dest="train_tasks", help="override tasks.train (e.g. s3://...)")
    parser.add_argument("--eval-tasks", dest="eval_tasks", help="override tasks.eval")
    parser.add_argument("--expert-model", dest="expert_model", help="override expert.model")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="dotted override (repeatable)"
    )
    parser.add_argument("--gpu-type", dest="gpu_type", help="accelerator resource, e.g. nvidia.com/gpu")
    parser.add_argument("--gpu-count", dest="gpu_count", type=count(1), help="accelerators per GPU step")
    parser.add_argument("--gpu-node-selector", dest="gpu_node_selector", help="JSON object of node labels")
    parser.add_argument("--gpu-tolerations", dest="gpu_tolerations", help="JSON list of tolerations")


def default_run_name(base: str) -> str:
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def run_cli(args: argparse.Namespace) -> int:
    """Check services, run the pipeline locally, print the summary; 0 when every step succeeded."""
    from protege.config import load_config
    from protege.pipeline.local import (
        PIPELINE_ROOT,
        TASKS,
        RunError,
        check_services,
        collect,
        fail_parent_run,
        file_overrides,
        parse_params,
        pipeline_arguments,
        run_pipeline,
    )
    from protege.pipeline.summary import render
    from protege.store import S3ArtifactStore

    try:
        params = parse_params(args.param)
        overrides = file_overrides(args.config_file) + list(args.overrides)
        cfg = load_config(args.profile, None, overrides)
        run_name = args.run_name or default_run_name(cfg.run_name)
        cfg = cfg.model_copy(update={"run_name": run_name})
        check_services(cfg)
    except RunError as err:
        raise CLIError(str(err)) from None
    S3ArtifactStore.from_config(cfg.store).ensure_bucket()
    root = Path(cfg.services.data_dir) / PIPELINE_ROOT
    print(
        f"protege run: pipeline of this checkout under kfp.local, profile '{args.profile}', run '{run_name}'"
    )
    print(
        f"  MLflow {cfg.tracking.uri}, artifacts s3://{cfg.store.bucket}/{run_name}/ on {cfg.store.endpoint}"
    )
    run = run_pipeline(pipeline_arguments(args.profile, overrides, run_name, params), root)
    print(render(collect(cfg, run), args.profile))
    if not run.succeeded:
        failed = [task for task in TASKS if run.clock.step(task)[0] == "FAILURE"]
        failure = f"local run {run_name}: {', '.join(failed) or 'a step'} failed"
        fail_parent_run(cfg, run.outputs["sft"].get("parent_run_id", ""), failure)
        print(f"a step failed (its log is above); fix it, then resume: protege run --run-name {run_name} ...")
    return 0 if run.succeeded else 1


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `protege run` (also `protege demo`): profile, config, overrides, run name, --param."""
    from protege.pipeline.local import PIPELINE_PARAMS

    profile_args(parser)
    parser.add_argument("--run-name", dest="run_name", help="run name (default: <run_name>-<UTC time>)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"pipeline parameter, repeatable ({', '.join(PIPELINE_PARAMS)})",
    )


def add_cli(sub: argparse._SubParsersAction) -> None:
    """`protege compile`, `protege submit`, `protege schedule`, `protege run` and its alias `protege demo`."""
    from protege.pipeline.compile import PIPELINE_YAML

    comp = sub.add_parser("compile", help="compile the KFP pipeline into pipelines/protege_pipeline.yaml")
    comp.add_argument("--check", action="store_true", help="exit 1 when the committed YAML is stale")
    comp.add_argument("--output", default=str(PIPELINE_YAML), help=argparse.SUPPRESS)
    comp.add_argument(
        "--images",
        metavar="TAG",
        help="tag of the agent/trainer images, e.g. the git SHA `make images` built",
    )
    comp.set_defaults(func=_compile_cli)
    run = sub.add_parser("submit", help="start one pipeline run on a KFP cluster")
    _run_args(run)
    run.add_argument("--run-name", dest="run_name", help="name of the KFP run")
    run.set_defaults(func=_submit_cli)
    sched = sub.add_parser("schedule", help="create a KFP recurring run (scheduled retraining)")
    _run_args(sched)
    sched.add_argument("--cron", required=True, help="cron expression, 5 fields (Unix) or 6 (KFP)")
    sched.add_argument("--name", default="protege-retrain", help="name of the recurring run")
    sched.set_defaults(func=_schedule_cli)
    run = sub.add_parser(
        "run", help="run the whole Kubeflow pipeline locally through kfp.local (needs `protege services up`)"
    )
    add_run_args(run)
    run.set_defaults(func=run_cli)
    demo = sub.add_parser(
        "demo",
        help="= `protege run`: the whole pipeline locally through kfp.local (needs `protege services up`)",
    )
    add_run_args(demo)
    demo.set_defaults(func=run_cli)
