"""`protege` command line. Each command group is one `_add_<group>` function; handlers import lazily so
`protege --help` stays fast (torch/trl/mlflow load only for the commands that need them)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from protege.config import ConfigError


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _profile_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile", default="local", help="config profile: local or cluster (default: local)"
    )
    parser.add_argument("--config", dest="config_file", help="YAML file merged over the profile")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied last, e.g. rl.group_size=4",
    )


def load_cfg(args: argparse.Namespace):
    from protege.config import load_config

    return load_config(args.profile, args.config_file, args.overrides)


def tracker_and_store(cfg, track: bool, upload: bool) -> tuple:
    """The phase CLIs' I/O edges: an MLflow Tracker if `track`, an S3 store if `upload` (else None)."""
    tracker = store = None
    if track:
        from protege.tracking import Tracker

        tracker = Tracker(cfg.tracking)
    if upload:
        from protege.store import S3ArtifactStore

        store = S3ArtifactStore.from_config(cfg.store)
    return tracker, store


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from protege.config import public_dict

    cfg = load_cfg(args)
    print(yaml.safe_dump(public_dict(cfg), sort_keys=False, allow_unicode=True), end="")
    return 0


def _add_config(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("config", help="show and check configuration").add_subparsers(
        dest="cmd", required=True
    )
    show = group.add_parser("show", help="print the resolved config of a profile (secrets masked)")
    _profile_args(show)
    show.set_defaults(func=_config_show)


# --------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------


def _tasks_validate(args: argparse.Namespace) -> int:
    from protege.tasksets import TaskSetError, load_task_set

    try:
        tasks = load_task_set(args.path)
    except TaskSetError as err:
        print(str(err), file=sys.stderr)
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
    from protege.verify import run_cli

    return run_cli(args)


def _add_tasks(sub: argparse._SubParsersAction) -> None:
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
    verify.add_argument("--workers", type=int, help="gradings in parallel (default: eval.workers)")
    verify.add_argument(
        "--backend",
        choices=["local", "docker", "kubernetes"],
        help="grading backend (default: agent.sandbox.backend)",
    )
    _profile_args(verify)
    verify.set_defaults(func=_tasks_verify)


# --------------------------------------------------------------------------------------------------
# Command groups are added here, one line each.
# --------------------------------------------------------------------------------------------------

COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [_add_config, _add_tasks]


def _register_optional_groups() -> None:
    # Groups living next to their modules (services, agent, model, ...) register themselves here.
    import importlib

    from protege import cli_groups

    for name in cli_groups.MODULES:
        add = importlib.import_module(name).add_cli
        if add not in COMMAND_GROUPS:
            COMMAND_GROUPS.append(add)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protege",
        description="SWE-Protégé: train a small model into a SWE agent that knows when to ask an expert.",
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _register_optional_groups()
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
