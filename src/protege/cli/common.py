"""What every command group shares: the parser class, argument types, the profile/config arguments, and
the phases' I/O edges (tracker, store). Command groups live one per module beside this one."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

BAD_INPUT, FAILED, INTERNAL, INTERRUPTED = 2, 3, 4, 130


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


def profile_args(parser: argparse.ArgumentParser) -> None:
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


def io_args(parser: argparse.ArgumentParser) -> None:
    """`--no-track` / `--no-upload`: the phase commands' switches for the two I/O edges of `tracker_and_store`."""
    parser.add_argument("--no-track", dest="track", action="store_false", help="do not log to MLflow")
    parser.add_argument("--no-upload", dest="upload", action="store_false", help="do not upload to the store")


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


def print_error(text: str) -> None:
    # Several independent errors (e.g. two bad config fields) give one line each; indented lines are
    # detail of the error above them (a task set's bad rows, a service's log tail).
    for line in text.splitlines() or [text]:
        print(line if line[:1].isspace() else f"error: {line}", file=sys.stderr)
