"""`protege` command line. Each command group is one `_add_<group>` function; handlers import lazily so
`protege --help` stays fast (torch/trl/mlflow load only for the commands that need them).

Every error reaches the user as one line naming the bad item (file, instance, field, value) and an exit
code (EXIT_CODES); a traceback only with `--debug`. Options may stand anywhere among the positionals
(`protege tasks verify demo:all --workers 1 eval.workers=2`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from protege.config import ConfigError

EXIT_CODES = """exit codes:
  0    success
  1    the command ran and found problems (tasks validate/verify, services status, compile --check)
  2    bad input: an argument, config field, task file or model path (the message names it)
  3    a service or phase failed while running (S3, MLflow, sandbox, training; the message says which)
  4    an unexpected internal error: rerun with --debug for the traceback
  130  interrupted (Ctrl-C)
"""
BAD_INPUT, FAILED, INTERNAL, INTERRUPTED = 2, 3, 4, 130
# OSErrors that mean "the path you gave is wrong", as opposed to the machine or network failing.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse with options allowed anywhere among the positionals (intermixed parsing) in every leaf
    command, and usage errors on one line (`error: protege tasks verify: ... (see ... --help)`)."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        # A parser holding subcommands cannot intermix (argparse refuses); its leaves can. The
        # intermixed parse calls parse_known_args itself, hence the flag.
        if self._intermixing or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:  # named here, where the user can look the command's options up
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(BAD_INPUT)


def count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum (`--workers 0` or `--max-episodes -3` is a usage error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


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
        _print_error(str(err))
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
    import time

    started = time.monotonic()

    def show(read: int, total: int | None) -> None:
        rate = read / max(time.monotonic() - started, 1e-6)
        eta = f", ETA {(total - read) / rate:.0f}s" if total and rate else ""
        of = f"/{total}" if total else ""
        print(f"  read {read}{of} row(s), {rate:.0f} rows/s{eta}", file=sys.stderr, flush=True)

    return show


def _tasks_import(args: argparse.Namespace) -> int:
    from protege.tasksets import import_task_set

    report = import_task_set(args.source, args.out, split=args.split, progress=_import_progress())
    for problem in report.refused:
        print(f"refused {problem}", file=sys.stderr)
    origin = report.origin
    read = ", ".join(f"{k} {v}" for k, v in origin.tags().items())
    print(
        f"{args.source}{f' ({read})' if read else ''}: wrote {report.written} row(s) to {report.out}, "
        f"refused {len(report.refused)}"
    )
    return 1 if report.refused or not report.written else 0


def _tasks_verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from protege.verify import run_cli

    # PATH is optional, so a lone `KEY=VALUE` lands in it; one that is no file is the override it looks like.
    if args.path and "=" in args.path and not Path(args.path).exists():
        args.overrides, args.path = [args.path, *args.overrides], None

    return run_cli(args)


def _add_tasks(sub: argparse._SubParsersAction) -> None:
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
    parser = Parser(
        prog="protege",
        description="SWE-Protégé: train a small model into a SWE agent that knows when to ask an expert.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error (accepted anywhere)"
    )
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    _register_optional_groups()
    for add in COMMAND_GROUPS:
        add(sub)
    return parser


def describe_error(err: BaseException) -> tuple[str, int]:
    """The one-line message and exit code the CLI gives for an error a command raised."""
    from pydantic import ValidationError

    if isinstance(err, CLIError | ConfigError):
        return str(err), BAD_INPUT
    if isinstance(err, ValidationError):
        from protege.config import format_validation_error

        what = "config" if err.title.endswith("Config") else err.title
        return format_validation_error(err, what=what), BAD_INPUT
    if isinstance(err, UnicodeDecodeError):
        where = f"byte 0x{err.object[err.start : err.start + 1].hex()} at offset {err.start}"
        name = _file_being_read(err) or "input"
        return f"{name}: not {err.encoding} text ({where}); a binary file where text was expected?", BAD_INPUT
    if isinstance(err, json.JSONDecodeError):
        name = _file_being_read(err) or "input"
        return f"{name}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}", BAD_INPUT
    if type(err).__module__.startswith("yaml"):
        from protege.config import yaml_error_text

        return f"not valid YAML: {yaml_error_text(err)}", BAD_INPUT  # type: ignore[arg-type]
    if isinstance(err, OSError):
        text = f"{err.filename}: {err.strerror}" if err.filename else str(err) or type(err).__name__
        return text, BAD_INPUT if isinstance(err, _PATH_ERRORS) else FAILED
    if type(err).__module__.startswith("protege.") and str(err):
        # The phases' own error types: their messages are written for the user.
        return str(err), BAD_INPUT if isinstance(err, ValueError) else FAILED
    return (
        f"{type(err).__name__}: {str(err).strip() or '(no message)'} (rerun with --debug for the traceback)",
        INTERNAL,
    )


def _file_being_read(err: BaseException) -> str:
    """The file a decode or parse error came from: the innermost frame of its traceback holding an open
    text file or an existing file's Path (the error itself carries only the text)."""
    import io
    from pathlib import Path

    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if isinstance(value, io.TextIOWrapper) and isinstance(value.name, str):
                return value.name
            if isinstance(value, Path) and value.is_file():
                return str(value)
    return ""


def _print_error(text: str) -> None:
    # Several independent errors (e.g. two bad config fields) give one line each; indented lines are
    # detail of the error above them (a task set's bad rows, a service's log tail).
    for line in text.splitlines() or [text]:
        print(line if line[:1].isspace() else f"error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code (EXIT_CODES). Errors are printed, not raised, unless
    `--debug` is given anywhere on the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head
    if debug:
        argv.remove("--debug")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error already printed on one line
        return stop.code if isinstance(stop.code, int) else BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:  # noqa: BLE001 - the CLI's top: every error becomes one line and a code
        if debug:
            raise
        text, code = describe_error(err)
        _print_error(text)
        return code


if __name__ == "__main__":
    sys.exit(main())
