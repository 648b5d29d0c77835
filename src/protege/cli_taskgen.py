"""`protege tasks generate` and `protege tasks mine` (protege.taskgen): parsers and handlers.

Kept beside protege.cli until the CLI package lands (issue 12); then it moves into protege.cli.tasks.
"""

from __future__ import annotations

import argparse

from protege.cli import CLIError, _profile_args, count, load_cfg


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
    generate.add_argument("--python", help="interpreter of the tests' environment (default: this one)")
    _profile_args(generate)
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
    mine.add_argument("--python", help="interpreter of the tests' environment (default: this one)")
    _profile_args(mine)
    mine.set_defaults(func=_tasks_mine)


def add_taskgen_commands(group: argparse._SubParsersAction) -> None:
    _add_tasks_generate(group)
    _add_tasks_mine(group)
