"""`protege tasks validate|list|verify|generate|mine`: task sets as the user sees them, and the commands
that make task instances from a repository (protege.taskgen)."""

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


def _import_progress() -> Callable[[int, int | None], None]:
    """Rows read, the rate and (when the total is known) the ETA, on stderr."""
    import sys
    import time

    started = time.monotonic()

    def show(read: int, total: int | None) -> None:
        rate = read / max(time.monotonic() - started, 1e-6)
        eta = f", ETA {(total - read) / rate:.0f}s" if total and rate else ""
        of = f"/{total}" if total else ""
        print(f"  read {read}{of} row(s), {rate:.0f} rows/s{eta}", file=sys.stderr, flush=True)

    return show


def _tasks_import(args: argparse.Namespace) -> int:
    import sys

    from protege.tasksets import import_task_set

    report = import_task_set(args.source, args.out, split=args.split, progress=_import_progress())
    for problem in report.refused:
        print(f"refused {problem}", file=sys.stderr)
    read = ", ".join(f"{k} {v}" for k, v in report.origin.tags().items())
    print(
        f"{args.source}{f' ({read})' if read else ''}: wrote {report.written} row(s) to {report.out}, "
        f"refused {len(report.refused)}"
    )
    return 1 if report.refused or not report.written else 0


def _tasks_verify(args: argparse.Namespace) -> int:
    # PATH is optional, so a lone `KEY=VALUE` lands in it; one that is no file is the override it looks like.
    if args.path and "=" in args.path and not Path(args.path).exists():
        args.overrides, args.path = [args.path, *args.overrides], None

    return run_cli(args)


def _tasks_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from protege.taskgen.generate import GenerateOptions, generate

    # REPO takes every positional; the `KEY=VALUE` ones that are no path are the overrides they look like
    overrides = [r for r in args.repos if "=" in r and not Path(r).exists()]
    args.repos = [r for r in args.repos if r not in overrides]
    args.overrides = [*overrides, *args.overrides]
    if not args.repos:
        raise CLIError(
            "protege tasks generate: name at least one REPO (a git repository, demo:<name>, demo:all)"
        )
    cfg = load_cfg(args)
    opts = GenerateOptions(
        n=args.n,
        out=Path(args.out),
        repos_dir=Path(cfg.tasks.repos_dir),
        seed=args.seed,
        split=args.split,
        eval_fraction=args.eval_fraction,
        timeout_s=args.timeout,
        python=args.python or "",
        environments=cfg.agent.sandbox.environments,
        **({"workers": args.workers} if args.workers else {}),
    )
    manifest = generate(args.repos, opts)
    print(f"{'repo':<32} {'mutations':>9} {'tried':>6} {'valid':>6} {'train':>6} {'eval':>5}")
    for repo, run in manifest["runs"].items():
        sides = manifest["per_repo"].get(repo, {"train": 0, "eval": 0})
        print(
            f"{repo:<32} {run['candidates']:>9} {run['tried']:>6} {sides['train'] + sides['eval']:>6} "
            f"{sides['train']:>6} {sides['eval']:>5}{'  ' + run['error'] if run.get('error') else ''}"
        )
    for side in ("train", "eval"):
        info = manifest[side]
        print(
            f"{side}: {info['instances']} instance(s) from {len(info['repos'])} repo(s), "
            f"{info['functions']} function(s) -> {Path(args.out) / info['file']} (sha256 {info['sha256'][:12]})"
        )
    return 1 if any(run.get("error") for run in manifest["runs"].values()) else 0


def _tasks_mine(args: argparse.Namespace) -> int:
    from pathlib import Path

    from protege.taskgen.mine import MineOptions, mine

    cfg = load_cfg(args)
    opts = MineOptions(
        out=Path(args.out) if args.out else None,
        repos_dir=Path(cfg.tasks.repos_dir),
        issue=args.issue,
        repo_name=args.repo_name,
        timeout_s=args.timeout,
        python=args.python or "",
        environments=cfg.agent.sandbox.environments,
    )
    report = mine(args.repo, args.commits, opts)
    return 0 if report.mined else 1


def _add_tasks_generate(group: argparse._SubParsersAction) -> None:
    generate = group.add_parser(
        "generate",
        help="make task instances by injecting small bugs that some test catches (SWE-smith style)",
    )
    generate.add_argument(
        "repos", nargs="+", metavar="REPO", help="a git repository, demo:<name> or demo:all"
    )
    generate.add_argument(
        "--n", type=count(1), default=40, help="valid instances per repository (default 40)"
    )
    generate.add_argument("--out", default=".protege/tasks/generated", help="output directory (resumable)")
    generate.add_argument("--workers", type=count(1), help="test runs in parallel (default: CPU count)")
    generate.add_argument("--seed", type=int, default=0, help="order of mutations and the split (default 0)")
    generate.add_argument(
        "--split",
        choices=["repo", "function"],
        default="repo",
        help="hold out whole repositories (default) or whole functions for eval",
    )
    generate.add_argument("--eval-fraction", type=float, default=0.25, help="share held out (default 0.25)")
    generate.add_argument(
        "--timeout", type=float, default=0.0, help="seconds per test run (default: 5x baseline + 10)"
    )
    generate.add_argument(
        "--python", help="interpreter that runs the tests (default: the repository's environment)"
    )
    profile_args(generate)
    generate.set_defaults(func=_tasks_generate)


def _add_tasks_mine(group: argparse._SubParsersAction) -> None:
    mine = group.add_parser(
        "mine", help="make task instances from fix commits: tests that fail before and pass after"
    )
    mine.add_argument("repo", metavar="REPO", help="a git repository or demo:<name>")
    mine.add_argument("commits", metavar="COMMIT", help="a fix commit, or a range A..B (every commit in it)")
    mine.add_argument("--issue", help="file holding the problem statement (default: the commit message)")
    mine.add_argument(
        "--out", help="JSONL file the instances are merged into (default .protege/tasks/mined-<repo>.jsonl)"
    )
    mine.add_argument(
        "--repo-name", help="owner/name written as the instances' repo (default local/<dirname>)"
    )
    mine.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (default 300)")
    mine.add_argument(
        "--python", help="interpreter that runs the tests (default: the repository's environment)"
    )
    profile_args(mine)
    mine.set_defaults(func=_tasks_mine)


def add_cli(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("tasks", help="inspect and check task sets").add_subparsers(
        dest="cmd", required=True
    )
    forms = (
        "a .jsonl/.json/.parquet file, a save_to_disk dir, a swebench task-repo dir, a copy of a hub dataset "
        "repo, s3://..., an HF dataset id owner/name[@revision][:split], or demo:train|eval|all"
    )
    validate = group.add_parser("validate", help="check every instance of a task set; name each bad one")
    validate.add_argument("path", help=forms)
    validate.set_defaults(func=_tasks_validate)
    listing = group.add_parser("list", help="list the instances of a task set")
    listing.add_argument("path", help=forms)
    listing.set_defaults(func=_tasks_list)
    imports = group.add_parser(
        "import",
        help="normalise a task set in any published schema (swebench 5.x, SWE-bench, SWE-Gym, SWE-smith) into "
        "a local JSONL; name each refused row",
    )
    imports.add_argument("source", help=forms)
    imports.add_argument("--out", required=True, help="the JSONL file to write (swebench 5.x columns)")
    imports.add_argument(
        "--split", default="", help="split of a hub dataset (default: its only split, else test)"
    )
    imports.set_defaults(func=_tasks_import)
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
    _add_tasks_generate(group)
    _add_tasks_mine(group)


# --------------------------------------------------------------------------------------------------
# CLI: `protege tasks verify` (registered in protege.cli._add_tasks)
# --------------------------------------------------------------------------------------------------


def _print_progress(total: int) -> Callable[[InstanceVerdict], None]:
    seen = []

    def show(verdict: InstanceVerdict) -> None:
        seen.append(verdict.instance_id)
        state = "ok" if verdict.ok else "BROKEN: " + "; ".join(verdict.problems)
        if verdict.gold is None or verdict.empty is None:
            print(f"[{len(seen)}/{total}] {verdict.instance_id}: not graded  {state}", flush=True)
            return
        print(
            f"[{len(seen)}/{total}] {verdict.instance_id}: gold {_outcome(verdict.gold)} "
            f"({verdict.gold.duration_s:.1f}s), empty {_outcome(verdict.empty)} ({verdict.empty.duration_s:.1f}s)  {state}",
            flush=True,
        )

    return show


def run_cli(args: Any) -> int:
    """`protege tasks verify [PATH] [--profile P] [--workers N]`: exit 1 when any instance is broken."""
    from protege.environments import user_specs
    from protege.tasksets import RowProblem, ensure_local_repos, load_task_set, split_of

    if getattr(args, "backend", None):  # --backend is agent.sandbox.backend=..., applied last
        args.overrides = [*args.overrides, f"agent.sandbox.backend={args.backend}"]
    cfg = load_cfg(args)
    user_specs(cfg.agent.sandbox.environments)  # a bad spec file is bad input for the whole run: exit 2
    sources = [args.path] if args.path else list(dict.fromkeys([cfg.tasks.train, cfg.tasks.eval]))
    repos_dir = Path(cfg.tasks.repos_dir)
    broken = 0
    for source in sources:
        # A source that cannot be read is bad input (TaskSetError: exit 2); a row that cannot become an
        # instance (e.g. no eval script and no test patch to derive one from) is one broken instance.
        refused: list[RowProblem] = []
        tasks = load_task_set(source, split=split_of(cfg.tasks, source), refused=refused)
        unloadable: dict[str, list[str]] = {}
        for problem in refused:
            unloadable.setdefault(problem.instance_id or problem.where, []).append(
                f"{problem.field}: {problem.reason}"
            )
        if cfg.agent.sandbox.backend in ("local", "docker") and source.startswith("demo:"):
            ensure_local_repos(tasks, source, repos_dir, error=CLIError)  # others: one broken instance each
        print(
            f"verifying {len(tasks) + len(unloadable)} instance(s) of {source} ({cfg.agent.sandbox.backend} backend)",
            flush=True,
        )
        report = verify_task_set(
            tasks,
            cfg,
            repos_dir,
            args.workers,
            on_verdict=_print_progress(len(tasks) + len(unloadable)),
            unloadable=unloadable,
        )
        print(report.table())
        broken += len(report.broken)
    return 1 if broken else 0
