"""`protege tasks validate|list|verify` (and the task-making commands): task sets as the user sees them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protege.cli.common import CLIError, count, load_cfg, print_error, profile_args
from protege.verify import InstanceVerdict, _outcome, verify_task_set


def _tasks_validate(args: argparse.Namespace) -> int:
    from protege.tasksets import TaskSetError, load_task_set

    try:
        tasks = load_task_set(args.path)
    except TaskSetError as err:
        print_error(str(err))
        return 1
    repos = len({t.repo for t in tasks})
    print(f"{args.path}: {len(tasks)} valid task instance(s) from {repos} repo(s)")
    return 0


def _tasks_list(args: argparse.Namespace) -> int:
    from protege.tasksets import load_task_set

    tasks = load_task_set(args.path)
    print(f"{'instance_id':<40} {'repo':<32} {'F2P':>4} {'P2P':>4}  base_commit")
    for task in tasks:
        print(
            f"{task.instance_id:<40} {task.repo:<32} {len(task.FAIL_TO_PASS):>4} "
            f"{len(task.PASS_TO_PASS):>4}  {task.base_commit[:12]}"
        )
    return 0


def _tasks_verify(args: argparse.Namespace) -> int:
    # PATH is optional, so a lone `KEY=VALUE` lands in it; one that is no file is the override it looks like.
    if args.path and "=" in args.path and not Path(args.path).exists():
        args.overrides, args.path = [args.path, *args.overrides], None

    return run_cli(args)


def add_cli(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tasks", help="inspect and check task sets").add_subparsers(
        dest="cmd", required=True
    )
    forms = "a .jsonl/.json/.parquet file, a save_to_disk dir, a swebench task-repo dir, s3://..., or demo:train|eval|all"
    validate = group.add_parser("validate", help="check every instance of a task set; name each bad one")
    validate.add_argument("path", help=forms)
    validate.set_defaults(func=_tasks_validate)
    listing = group.add_parser("list", help="list the instances of a task set")
    listing.add_argument("path", help=forms)
    listing.set_defaults(func=_tasks_list)
    verify = group.add_parser(
        "verify", help="grade every instance's gold patch (must resolve) and an empty patch (must not)"
    )
    verify.add_argument("path", nargs="?", help=forms + " (default: the profile's train and eval sets)")
    verify.add_argument("--workers", type=count(1), help="gradings in parallel (default: eval.workers)")
    verify.add_argument(
        "--backend",
        choices=["local", "docker", "kubernetes"],
        help="grading backend (default: agent.sandbox.backend)",
    )
    profile_args(verify)
    verify.set_defaults(func=_tasks_verify)


# --------------------------------------------------------------------------------------------------
# CLI: `protege tasks verify` (registered in protege.cli._add_tasks)
# --------------------------------------------------------------------------------------------------


def _print_progress(total: int) -> Callable[[InstanceVerdict], None]:
    seen = []

    def show(verdict: InstanceVerdict) -> None:
        seen.append(verdict.instance_id)
        state = "ok" if verdict.ok else "BROKEN: " + "; ".join(verdict.problems)
        print(
            f"[{len(seen)}/{total}] {verdict.instance_id}: gold {_outcome(verdict.gold)} "
            f"({verdict.gold.duration_s:.1f}s), empty {_outcome(verdict.empty)} ({verdict.empty.duration_s:.1f}s)  {state}",
            flush=True,
        )

    return show


def run_cli(args: Any) -> int:
    """`protege tasks verify [PATH] [--profile P] [--workers N]`: exit 1 when any instance is broken."""
    from protege.tasksets import ensure_local_repos, load_task_set

    if getattr(args, "backend", None):  # --backend is agent.sandbox.backend=..., applied last
        args.overrides = [*args.overrides, f"agent.sandbox.backend={args.backend}"]
    cfg = load_cfg(args)
    sources = [args.path] if args.path else list(dict.fromkeys([cfg.tasks.train, cfg.tasks.eval]))
    repos_dir = Path(cfg.tasks.repos_dir)
    broken = 0
    for source in sources:
        tasks = load_task_set(source, hf_split=cfg.tasks.hf_split)  # a TaskSetError is bad input: exit 2
        if cfg.agent.sandbox.backend == "local":
            ensure_local_repos(tasks, source, repos_dir, error=CLIError)
        print(
            f"verifying {len(tasks)} instance(s) of {source} ({cfg.agent.sandbox.backend} backend)",
            flush=True,
        )
        report = verify_task_set(tasks, cfg, repos_dir, args.workers, on_verdict=_print_progress(len(tasks)))
        print(report.table())
        broken += len(report.broken)
    return 1 if broken else 0
